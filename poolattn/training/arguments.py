"""train.py's flags as three typed argument groups (model, data, training run), parsed and checked once, with no side
effects: nothing is read, written or reached over the network while parsing.

>>> from poolattn.training import parse_arguments
>>> model_args, data_args, training_args = parse_arguments(["--variant", "3", "--max_steps", "5"])
>>> model_args.variants, training_args.max_steps, training_args.temperature
([3], 5, 0.05)"""

import argparse
import dataclasses
import json
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from ..backbones import DEFAULT_BACKBONE
from ..configuration_poolattn import BASELINE_DESIGNS, DESIGNS, PoolAttnConfig, variant_tag
from .arguments_file import check_value_types, read_arguments_file
from .data import SAMPLE_TRIPLETS
from .presets import BATCH_SAMPLING, DESIGN_GROUPS, LORA_TARGETS, PRESETS
from .trainer_arguments import TrainingRunArguments


class TrainingSetupError(ValueError):
    """A run that cannot start as asked (data vs batch, output folder, resume, evaluation data), found before any
    training; the message names the flag and what to do."""


@dataclass
class ModelArguments:
    variant: str = field(
        default="5",
        metadata={
            "help": "paper variant 1-5, several comma-separated (e.g. 1,5), 'all' for the five; baseline designs "
            "mean-causal, mean-bidirectional ('baselines' for both), e.g. all,baselines"
        },
    )
    backbone: str = field(
        default=DEFAULT_BACKBONE, metadata={"help": "decoder LLM: local folder, Hub id or 'smollm2-135m'"}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": 'JSON of PoolAttnConfig fields, e.g. \'{"layers": "last:8", "num_latents": 16}\''},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout"})
    lora_target_modules: str = field(default=LORA_TARGETS, metadata={"help": "comma-separated module names"})
    full_finetune: bool = field(default=False, metadata={"help": "train every backbone weight instead of LoRA"})
    model_dtype: str = field(default="float32", metadata={"help": "backbone weights: float32, bfloat16 or float16"})
    attn_implementation: str | None = field(default=None, metadata={"help": "eager, sdpa, flash_attention_2, ..."})
    model_name: str | None = field(
        default=None,
        metadata={"help": "ORG/NAME the model is reported under (mteb); default poolattn/<backbone>-v<N>"},
    )
    matryoshka_dims: str | None = field(
        default=None,
        metadata={
            "help": "comma-separated smaller embedding sizes to train too (Matryoshka loss: the mean of the full "
            "size's and each prefix's loss), e.g. 64,128,288; then encode(truncate_dim=N) / truncate_dim=N use them"
        },
    )

    def __post_init__(self):
        _ = self.variants  # checks the names
        if self.model_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"--model_dtype {self.model_dtype!r}: allowed values are float32, bfloat16, float16.")
        if self.lora_r < 1 or not 0 <= self.lora_dropout < 1:
            raise ValueError(
                f"--lora_r must be >= 1 and --lora_dropout in [0, 1); got {self.lora_r}, {self.lora_dropout}."
            )
        if self.model_name is not None and self.model_name.count("/") != 1:
            raise ValueError(
                f"--model_name {self.model_name!r} must read ORG/NAME (mteb's rule), e.g. poolattn/my-model."
            )
        self.overrides = _json_object("--config_overrides", self.config_overrides, '\'{"layers": "last:8"}\'')
        _check_config_fields(self.overrides)
        if self.matryoshka_dims is not None:
            parts = [part.strip() for part in str(self.matryoshka_dims).split(",")]
            if not all(part.isdigit() for part in parts) or "matryoshka_dims" in self.overrides:
                raise ValueError(
                    f"--matryoshka_dims {self.matryoshka_dims!r}: give comma-separated sizes, e.g. "
                    "64,128,288 (and not also in --config_overrides)."
                )
            self.overrides["matryoshka_dims"] = [int(part) for part in parts]  # checked against the backbone's size

    @property
    def variants(self) -> list[int | str]:
        """The designs to train: paper variants in order, then baseline designs (`DESIGNS` order)."""
        given = [part.strip() for part in str(self.variant).split(",")]
        expanded = [name for part in given for name in DESIGN_GROUPS.get(part, [part])]
        chosen = [int(name) if name.isdigit() else name for name in expanded]
        if any(name not in DESIGNS for name in chosen) or len(set(chosen)) != len(chosen):
            raise ValueError(
                f"--variant {self.variant!r} is not supported. Allowed values: 1, 2, 3, 4, 5 (the paper's variants), "
                f"{', '.join(BASELINE_DESIGNS)} (baseline designs), several of them comma-separated, each once "
                "(e.g. 1,5,mean-causal), all (the five variants) or baselines (both baselines)."
            )
        return sorted(chosen, key=list(DESIGNS).index)

    def model_name_for(self, variant: int | str) -> str | None:
        """`--model_name`, suffixed `-v<N>` (or `-<baseline>`) when several designs are trained; None for the
        default name."""
        if self.model_name is None or len(self.variants) == 1:
            return self.model_name
        return f"{self.model_name}-{variant_tag(variant)}"


def _check_config_fields(overrides: dict) -> None:
    """--config_overrides names `PoolAttnConfig` fields only (a typo would reach the backbone's loader)."""
    import difflib

    fields = PoolAttnConfig.own_fields()
    for key in overrides:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
            raise ValueError(
                f"--config_overrides: {key!r} is not a PoolAttnConfig field"
                + (f"; did you mean {close[0]!r}?" if close else ".")
                + f" Fields: {', '.join(fields)}."
            )


def _json_object(flag: str, value, example: str) -> dict:
    """A flag's JSON object (a dict as is, from an arguments file); {} when not given."""
    if value is None or isinstance(value, dict):
        return dict(value or {})
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{flag} {value!r} is not valid JSON ({error.msg} at character {error.pos}); give an "
            f"object, e.g. {example}."
        ) from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{flag} must be a JSON object, e.g. {example}; got {value!r}.")
    return parsed


@dataclass
class DataArguments:
    train_data: str = field(
        default=str(SAMPLE_TRIPLETS), metadata={"help": "JSONL/CSV/parquet file, folder, or Hub dataset id"}
    )
    data_split: str = field(default="train", metadata={"help": "split of a Hub dataset"})
    query_instruction: str | None = field(
        default=None, metadata={"help": "global query instruction (Instruct: ...\\nQuery: )"}
    )
    source_instructions: str | None = field(
        default=None,
        metadata={
            "help": "JSON object of query instructions per source (file stem or source name), e.g. "
            '\'{"snli_triplets": "Retrieve semantically similar text."}\'; a row\'s own `instruction` wins, '
            "--query_instruction is "
            "the fallback"
        },
    )
    source_weights: str | None = field(
        default=None,
        metadata={
            "help": "JSON object of relative sampling weights per source (file stem or source name), one for every "
            'source (0 leaves one out), e.g. \'{"snli_triplets": 2, "quora_duplicates": 1, ...}\'; default: '
            "shares by size. With one source per batch, in memory"
        },
    )
    query_max_length: int = field(default=512, metadata={"help": "tokens per query, instruction included"})
    document_max_length: int = field(default=512, metadata={"help": "tokens per positive or negative"})
    skip_invalid_rows: bool = field(
        default=False, metadata={"help": "skip (and count) rows with missing/empty fields"}
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={
            "help": "use only the first N examples as read: each file in turn, a file's rows with the most hard "
            "negatives first"
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "read the training files (or Hub dataset) lazily (data larger than memory; needs --max_steps): "
            "one source per batch through a shuffle buffer"
        },
    )
    shuffle_buffer_size: int = field(
        default=10_000,
        metadata={
            "help": "rows per source held for shuffling with --streaming (the whole source: the in-memory order)"
        },
    )
    eval_data: str | None = field(
        default=None,
        metadata={
            "help": "held-out triplets (file, folder or Hub id) scored during training: contrastive loss and in-batch "
            "recall@1 (eval_loss, eval_recall_at_1)"
        },
    )
    eval_fraction: float = field(
        default=0.0,
        metadata={"help": "hold out this fraction of the training rows (seeded) as the evaluation data instead"},
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "stop after N evaluations without improvement of --metric_for_best_model (needs evaluation)"
        },
    )
    negatives_per_query: int = field(
        default=1,
        metadata={
            "help": "hard negatives per query, from each row's `negative` (a string or a list) in sources that have "
            "them; 0: in-batch negatives only"
        },
    )
    batch_sampling: str = field(
        default="one_source_per_batch",
        metadata={
            "help": "one_source_per_batch: every loss call's batch from one file (source) of the data, in-batch "
            "negatives of one kind; mixed: rows of every source shuffled together"
        },
    )

    def __post_init__(self):
        for flag, value in (("--train_data", self.train_data), ("--eval_data", self.eval_data)):
            if value is not None and not str(value).strip():
                raise ValueError(
                    f"{flag} {value!r}: empty (an unset shell variable?); give a file, a folder of files or a Hugging "
                    "Face Hub dataset id."
                )
        self.instructions_per_source = _json_object(
            "--source_instructions",
            self.source_instructions,
            '\'{"snli_triplets": "Retrieve semantically similar text."}\'',
        )
        self.weights_per_source = _json_object("--source_weights", self.source_weights, "'{\"snli_triplets\": 2}'")
        if self.weights_per_source and (self.streaming or self.batch_sampling == "mixed"):
            raise ValueError(
                "--source_weights sets each source's share of batches: it needs --batch_sampling "
                "one_source_per_batch and data in memory (not --streaming)."
            )
        if self.batch_sampling not in BATCH_SAMPLING:
            raise ValueError(
                f"--batch_sampling {self.batch_sampling!r}: allowed values are {', '.join(BATCH_SAMPLING)}."
            )
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(
                f"--max_train_samples {self.max_train_samples}: give how many examples to use, >= 1 "
                "(leave it out to use every example)."
            )
        if self.streaming and (self.max_train_samples or self.eval_fraction or self.batch_sampling == "mixed"):
            raise ValueError(
                "--streaming reads each source in turn: it takes neither --max_train_samples, "
                "--eval_fraction (give --eval_data) nor --batch_sampling mixed."
            )
        for flag, tokens in (
            ("--query_max_length", self.query_max_length),
            ("--document_max_length", self.document_max_length),
        ):
            if tokens < 1:
                raise ValueError(
                    f"{flag} {tokens}: give the tokens per text, >= 1 (special tokens and the query's instruction "
                    "count too; the tokenizer's are checked against it before training)."
                )
        if self.shuffle_buffer_size < 1:
            raise ValueError(f"--shuffle_buffer_size {self.shuffle_buffer_size}: give rows per source, >= 1.")
        if not 0 <= self.eval_fraction < 1 or (self.eval_fraction and self.eval_data):
            raise ValueError(
                f"--eval_fraction {self.eval_fraction}: give a fraction in [0, 1) of the training rows "
                "to hold out, or --eval_data, not both."
            )
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError(
                f"--early_stopping_patience {self.early_stopping_patience}: give the evaluations without improvement "
                "before stopping, >= 1 (leave it out to train to --max_steps)."
            )
        if self.negatives_per_query < 0:
            raise ValueError(
                f"--negatives_per_query {self.negatives_per_query}: give 0 (in-batch negatives only) or more."
            )


def parse_arguments(
    argv: list[str],
    *,
    description: str | None = None,
) -> tuple[ModelArguments, DataArguments, TrainingRunArguments]:
    """Command line (or one JSON file) -> (model, data, training) arguments; `--preset` only changes defaults."""

    parser = argument_parser(description)
    if len(argv) == 1 and argv[0].endswith(".json"):
        values = read_arguments_file(argv[0])
        preset = values.pop("preset", None)
        if preset is not None:
            _check_preset(preset, f'{argv[0]}: "preset"')
        objects = ("config_overrides", "source_instructions", "source_weights")  # `_json_object` takes a dict too
        check_value_types(values, (ModelArguments, DataArguments, TrainingRunArguments), argv[0], objects=objects)
        return parser.parse_dict({"output_dir": None, **PRESETS.get(preset, {}), **values})
    # the parser itself finds --preset, in any form it accepts (--preset X, --preset=X); then its defaults apply
    preset = parser.parse_known_args(argv)[0].preset
    if preset is not None:
        parser.set_defaults(**PRESETS[preset])
    model_args, data_args, training_args, _ = parser.parse_args_into_dataclasses(args=argv)
    return model_args, data_args, training_args


def _check_preset(name, given: str) -> None:
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"{given} {name!r} is not a preset. Allowed values: {', '.join(sorted(PRESETS))}.")


class _PresetAction(argparse.Action):
    """`--preset NAME`: a known name, given once (a second --preset would leave one of the two recipes unused)."""

    def __call__(self, parser, namespace, values, option_string=None):
        _check_preset(values, "--preset")
        if getattr(namespace, self.dest, None) is not None:
            raise ValueError(
                f"--preset is given twice ({getattr(namespace, self.dest)!r}, then {values!r}); give one preset and "
                "set what differs from it with its own flags."
            )
        setattr(namespace, self.dest, values)


def argument_parser(description: str | None = None):
    """train.py's parser: poolattn's flags in groups first (`OWN_GROUPS`), then transformers' TrainingArguments."""
    usage = "%(prog)s [--variant N] [--train_data DATA] [--output_dir DIR] [FLAG ...] | ARGS.json"
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, TrainingRunArguments),
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=usage,
        # no abbreviations: `--push_to` or `--learning_r` would pass by the checks of flags a job or a study sets
        allow_abbrev=False,
    )
    parser.add_argument(
        "--preset",
        action=_PresetAction,
        default=None,
        help=f"named recipe: {', '.join(sorted(PRESETS))}; explicit flags win",
    )
    _own_flags_first(parser)
    return parser


OWN_GROUPS = (
    "model (poolattn)",
    "data (poolattn)",
    "contrastive training and the run (poolattn; the main Trainer flags too)",
)


def _own_flags_first(parser) -> None:
    """`--help` lists poolattn's flags in groups (model, data, contrastive training and the run) before the hundred-odd
    flags transformers' `TrainingArguments` adds, under their own heading."""
    from transformers import TrainingArguments

    trainer_fields = {item.name for item in dataclasses.fields(TrainingArguments)}
    own = {item.name for item in dataclasses.fields(TrainingRunArguments)} - trainer_fields
    own |= {"per_device_train_batch_size", "learning_rate", "max_steps", "seed", "output_dir"}  # the ones to tune
    groups = {"model": ModelArguments, "data": DataArguments}
    sections = {title: parser.add_argument_group(f"{title} (poolattn)") for title in groups}
    contrastive = parser.add_argument_group(OWN_GROUPS[2])
    trainer = parser.add_argument_group("every other flag of transformers' TrainingArguments")
    names = {title: {item.name for item in dataclasses.fields(kind)} for title, kind in groups.items()}
    for action in list(parser._actions):
        if not action.option_strings or action.dest == "help":
            continue
        target = next((sections[title] for title in groups if action.dest in names[title]), None)
        target = target or (contrastive if action.dest in own or action.dest == "preset" else trainer)
        if "--no_gather_across_devices" in action.option_strings:  # HfArgumentParser repeats the field's help
            action.help = "turn cross-device negatives off: each process scores its queries against its own documents"
        for group in parser._action_groups:
            if action in group._group_actions:
                group._group_actions.remove(action)
        target._group_actions.append(action)
