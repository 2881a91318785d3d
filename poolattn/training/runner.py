"""One training run as a library function: arguments, model, `ContrastiveTrainer`, resume, export, and publishing.

>>> from poolattn.training import parse_arguments
>>> model_args, data_args, training_args = parse_arguments(["--variant", "3", "--max_steps", "5"])
>>> model_args.variants, training_args.max_steps, training_args.temperature
([3], 5, 0.05)

`main(argv)` runs what `python train.py ...` (and the `poolattn-train` command) runs and returns the exported model
folders; `run(model_args, data_args, training_args)` is the same from parsed arguments. Each variant is written to
`<output_dir>/model` (per variant `<output_dir>/v<N>/model` with `--variant all`) by `manifest.export_model`, with its
`TrainingManifest`. Errors are exceptions (`TripletDataError`, `HubPushError`, `ValueError`); `poolattn.cli` turns
them into exit codes.
"""

import dataclasses
import gc
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, PreTrainedConfig, set_seed

from ..backbones import DEFAULT_BACKBONE, resolve_backbone
from ..configuration_poolattn import BASELINE_DESIGNS, DESIGNS, PAPER_VARIANTS, PoolAttnConfig, variant_tag
from ..files import folder_lock, write_json
from ..hub.repository import HubPushError, check_push_possible, publish
from ..manifest import (
    MANIFEST_FILE,
    ContrastiveBatch,
    DataRecord,
    StopRecord,
    TrainableParameters,
    TrainingManifest,
    TrainingSettings,
    export_model,
    library_versions,
    recipe_arguments,
)
from ..modeling_poolattn import PoolAttnEmbeddingModel
from ..prompts import QUERY_PROMPT_FORMAT
from .batching import stream_triplets
from .data import (
    SAMPLE_TRIPLETS,
    SHARED_DATA,
    UNSET_DATA,
    TripletCollator,
    TripletDataError,
    Triplets,
    load_triplets,
    require_shared_data,
    set_source_instructions,
    set_source_weights,
)
from .job import TrainingJob
from .losses import world_size
from .plateau import PlateauRule, PlateauStopping
from .trainer_arguments import ContrastiveTrainingArguments, last_complete_checkpoint

logger = logging.getLogger(__name__)


class TrainingSetupError(ValueError):
    """A run that cannot start as asked (data vs batch, output folder, resume, evaluation data), found before any
    training; the message names the flag and what to do."""


LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
BATCH_SAMPLING = ("one_source_per_batch", "mixed")
SYMMETRIC_INSTRUCTION = "Retrieve semantically similar text."  # the STS instruction of the evaluation
SMALL_RECIPE_INSTRUCTIONS = {
    "snli_triplets": SYMMETRIC_INSTRUCTION,
    "quora_duplicates": SYMMETRIC_INSTRUCTION,
    "msrp_paraphrases": SYMMETRIC_INSTRUCTION,
    "wikiqa_triplets": "Given a question, retrieve Wikipedia sentences that answer the question",
    "trecqa_triplets": "Given a question, retrieve sentences that answer the question",
    "msmarco_nq_samples": "Given a web search query, retrieve relevant passages that answer the query",
}
PRESETS = {
    # Tang & Yang 2024, Section 4.1 and the paper's code: Mistral-7B-v0.1, LoRA r16 on every projection, lr 1e-5,
    # 1000 steps, warmup 100, batch 2048, bf16, 512 tokens. GradCache chunks make the batch real on any GPU count.
    "paper": {
        "backbone": "mistralai/Mistral-7B-v0.1",
        "train_data": "yixuantt/ir_data",
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.1,
        "lora_target_modules": LORA_TARGETS,
        "learning_rate": 1e-5,
        "max_steps": 1000,
        "warmup_steps": 100,
        "lr_scheduler_type": "linear",
        "contrastive_batch_size": 2048,
        "gradcache_chunk_size": 32,
        "bf16": True,
        "model_dtype": "bfloat16",
        "query_max_length": 512,
        "document_max_length": 512,
        "activation_checkpointing": True,
        "temperature": 0.05,
        "save_steps": 100,
    },
    # The small real recipe for a 2-core CPU (~8-12 min per run on SmolLM2-135M): the six sources of the shared
    # training folder (SNLI, Quora, MSRP, WikiQA, TrecQA, MS MARCO/NQ), one source per batch, each source's query
    # instruction in the e5 form the evaluation uses. Learning rate from a sweep of variant 5 at these settings
    # (README "Results": 1e-4, 3e-4, 1e-3 at 60 steps, scored on the five STS tasks).
    "small": {
        "backbone": DEFAULT_BACKBONE,
        "train_data": str(SHARED_DATA / "train") if SHARED_DATA else f"{UNSET_DATA}/train",
        "source_instructions": SMALL_RECIPE_INSTRUCTIONS,
        "per_device_train_batch_size": 16,
        "max_steps": 60,
        "warmup_steps": 6,
        "lr_scheduler_type": "linear",
        "learning_rate": 1e-4,
        "query_max_length": 128,
        "document_max_length": 128,
        "negatives_per_query": 1,
        "batch_sampling": "one_source_per_batch",
        "temperature": 0.05,
        "save_steps": 30,
        "logging_steps": 5,
    },
}


# --variant names that stand for several designs
DESIGN_GROUPS = {"all": [str(number) for number in PAPER_VARIANTS], "baselines": list(BASELINE_DESIGNS)}


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
    max_train_samples: int | None = field(default=None, metadata={"help": "use only the first N examples"})
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
        if self.shuffle_buffer_size < 1:
            raise ValueError(f"--shuffle_buffer_size {self.shuffle_buffer_size}: give rows per source, >= 1.")
        if not 0 <= self.eval_fraction < 1 or (self.eval_fraction and self.eval_data):
            raise ValueError(
                f"--eval_fraction {self.eval_fraction}: give a fraction in [0, 1) of the training rows "
                "to hold out, or --eval_data, not both."
            )
        if self.negatives_per_query < 0:
            raise ValueError(
                f"--negatives_per_query {self.negatives_per_query}: give 0 (in-batch negatives only) or more."
            )


@dataclass
class TrainingRunArguments(ContrastiveTrainingArguments):
    """The trainer's arguments plus the run's: its output folder, the export check and publishing."""

    output_dir: str | None = field(default=None, metadata={"help": "default outputs/<backbone>-v<variant>"})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "train again into an output_dir that holds a model or checkpoints of an earlier run (replaced)"
        },
    )
    seeds: int = field(
        default=1,
        metadata={
            "help": "train every variant once per seed: --seed, --seed+1, ... (replicates; <output_dir>/seed-<S>/ "
            "each)"
        },
    )
    export_check_texts: int = field(default=8, metadata={"help": "texts for the merged-vs-adapter export check"})
    hub_dry_run: str | None = field(
        default=None, metadata={"help": "write the Hub repository folders (card, ST files) here without uploading"}
    )
    plateau_patience: int | None = field(
        default=None,
        metadata={
            "help": "train to a plateau: stop when the held-out loss has not improved on its best by more than "
            "--plateau_min_improvement for N evaluations in a row (every --eval_steps, default --save_steps); "
            "--max_steps is the cap. Needs --eval_data or --eval_fraction"
        },
    )
    plateau_min_improvement: float = field(
        default=0.01,
        metadata={
            "help": "the relative improvement of the held-out loss that counts with --plateau_patience (0.01 = 1%%)"
        },
    )
    # Defaults for the embedded run (SmolLM2-135M, bundled triplets, 2 CPU cores).
    per_device_train_batch_size: int = field(
        default=8,
        metadata={
            "help": "queries per process per loss call (each with its positive and hard negatives); see also "
            "--contrastive_batch_size"
        },
    )
    learning_rate: float = field(
        default=2e-4,
        metadata={
            "help": "peak learning rate of the backbone's LoRA adapter (and of the head without --head_learning_rate)"
        },
    )
    max_steps: int = field(
        default=30,
        metadata={"help": "optimizer steps to train (the cap with --plateau_patience); -1: --num_train_epochs epochs"},
    )
    warmup_steps: int = field(default=3, metadata={"help": "steps of linear warmup"})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "linear, cosine, constant_with_warmup, ..."})
    logging_steps: int = field(default=1, metadata={"help": "log the loss every N steps"})
    save_steps: int = field(
        default=10,
        metadata={"help": "write a checkpoint every N steps (and evaluate held-out rows then, when there are any)"},
    )
    save_total_limit: int | None = field(default=2, metadata={"help": "keep at most N checkpoints"})
    report_to: None | str | list[str] = "none"  # same annotation order as TrainingArguments (HfArgumentParser)
    remove_unused_columns: bool = False
    dataloader_drop_last: bool = True
    ddp_find_unused_parameters: bool | None = False
    seed: int = field(default=42, metadata={"help": "random seed: the head's initialisation and the data order"})

    def __post_init__(self):
        self.output_dir_was_given = self.output_dir is not None  # TrainingArguments fills in "trainer_output"
        # poolattn publishes the exported model itself (card, sentence-transformers files) after training; the
        # Trainer's own push would upload raw checkpoints, so it is switched off and the request kept here.
        self.publish_to_hub, self.push_to_hub = self.push_to_hub, False
        if (self.publish_to_hub or self.hub_dry_run) and not self.hub_model_id:
            raise ValueError(
                "--push_to_hub / --hub_dry_run need --hub_model_id ORG/NAME (each variant goes to ORG/NAME-v<N>)."
            )
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(
                f"--max_steps {self.max_steps}: give the optimizer steps to train (>= 1), or -1 to train "
                "--num_train_epochs epochs."
            )
        if self.seeds < 1:
            raise ValueError(f"--seeds {self.seeds}: give how many seeds to train each variant with, >= 1.")
        if self.plateau_patience is not None and (
            self.plateau_patience < 1 or not 0 <= self.plateau_min_improvement < 1
        ):
            raise ValueError(
                f"--plateau_patience {self.plateau_patience} / --plateau_min_improvement "
                f"{self.plateau_min_improvement}: give evaluations >= 1 and a fraction in [0, 1)."
            )
        if self.seeds > 1 and (self.publish_to_hub or self.hub_dry_run):
            raise ValueError(
                f"--seeds {self.seeds} with --push_to_hub/--hub_dry_run: a Hub repository holds one "
                "model; train the seeds, then publish the one you choose with publish.py."
            )
        if self.publish_to_hub:
            try:
                check_push_possible(self.hub_token)  # before training, not after
            except HubPushError as error:
                raise ValueError(f"--push_to_hub: {error}") from None
        super().__post_init__()


def parse_arguments(
    argv: list[str],
    *,
    description: str | None = None,
) -> tuple[ModelArguments, DataArguments, TrainingRunArguments]:
    """Command line (or one JSON file) -> (model, data, training) arguments; `--preset` only changes defaults."""

    parser = argument_parser(description)
    if len(argv) == 1 and argv[0].endswith(".json"):
        try:
            values = json.loads(Path(argv[0]).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{argv[0]}: not a readable JSON arguments file ({error}).") from None
        if not isinstance(values, dict):
            raise ValueError(f"{argv[0]}: an arguments file holds one JSON object of flag names and values.")
        preset = PRESETS.get(values.pop("preset", None), {})
        return parser.parse_dict({"output_dir": None, **preset, **values})
    preset_name = argv[argv.index("--preset") + 1] if "--preset" in argv[:-1] else None
    if preset_name in PRESETS:
        parser.set_defaults(**PRESETS[preset_name])
    model_args, data_args, training_args, _ = parser.parse_args_into_dataclasses(args=argv)
    return model_args, data_args, training_args


def argument_parser(description: str | None = None):
    """train.py's parser: poolattn's flags in groups first (`OWN_GROUPS`), then transformers' TrainingArguments."""
    import argparse

    usage = "%(prog)s [--variant N] [--train_data DATA] [--output_dir DIR] [FLAG ...] | ARGS.json"
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, TrainingRunArguments),
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=usage,
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="named recipe; explicit flags win")
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


def build_model(model_args: ModelArguments, backbone_path: str, variant: int | str):
    """The PoolAttnEmbeddingModel with a fresh head, wrapped with LoRA unless --full_finetune."""
    model = PoolAttnEmbeddingModel.from_backbone(
        backbone_path,
        variant=variant,
        dtype=getattr(torch, model_args.model_dtype),
        **({"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}),
        **model_args.overrides,
    )
    tokenizer = model.get_tokenizer()
    if model_args.full_finetune:
        return model, tokenizer
    from peft import LoraConfig, get_peft_model

    targets = [name.strip() for name in model_args.lora_target_modules.split(",") if name.strip()]
    linear = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.model.named_modules()
            if isinstance(module, torch.nn.Linear)
        }
    )
    if not targets or set(targets) - set(linear):
        unknown = ", ".join(sorted(set(targets) - set(linear))) or "no module named"
        raise TrainingSetupError(
            f"--lora_target_modules {model_args.lora_target_modules!r}: {unknown} is not a "
            f"linear layer of this backbone. Its linear layers: {', '.join(linear)}."
        )
    lora = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=targets,
        modules_to_save=["pooler"] if model.pooler is not None else None,
    )
    import warnings

    with warnings.catch_warnings():  # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` itself
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated", category=FutureWarning)
        return get_peft_model(model, lora), tokenizer


def training_manifest(
    variant: int | str,
    base,
    trainer,
    result,
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingRunArguments,
    triplets: Triplets,
    *,
    batch: ContrastiveBatch,
    parameters: TrainableParameters,
    seconds: float,
) -> TrainingManifest:
    """What ran, for `training_manifest.json` (and the model card)."""
    arguments = run_arguments(model_args, data_args, training_args)
    return TrainingManifest(
        variant=variant,
        backbone=model_args.backbone,
        model_name=model_args.model_name_for(variant),
        seed=training_args.seed,
        data=DataRecord(
            source=triplets.source,
            files=triplets.files,
            examples=triplets.examples,
            skipped_rows=triplets.skipped,
            hard_negatives=triplets.has_negatives,
            query_instruction=data_args.query_instruction,
            query_prompt_format=QUERY_PROMPT_FORMAT,
            sources=[asdict(source) for source in triplets.sources],
            batch_sampling=batch_sampling(data_args, triplets),
            negatives_per_query=triplets.negatives_per_query,
            streaming=triplets.stream is not None,
        ),
        settings=TrainingSettings.from_arguments(arguments),
        contrastive_batch=batch,
        trainable_parameters=parameters,
        global_steps=result.global_step,
        stop=stop_record(trainer, training_args),
        train_runtime_s=round(seconds, 1),
        loss_history=[(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry],
        eval_history=[
            (entry["step"], entry["eval_loss"], entry.get("eval_recall_at_1"))
            for entry in trainer.state.log_history
            if "eval_loss" in entry
        ],
        libraries=library_versions(),
        poolattn_config=base.config.to_diff_dict(),
        hyperparameters=arguments,
    )


CHECKPOINT_RECORD = "poolattn_checkpoint.json"


def run_arguments(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingRunArguments) -> dict:
    """Every argument of a run, flat and JSON-safe (`TrainingManifest.hyperparameters`)."""
    arguments = {**asdict(model_args), **asdict(data_args), **training_args.to_sanitized_dict()}
    return json.loads(json.dumps(arguments, default=str))


def resume_recipe(
    variant, model_args: ModelArguments, data_args: DataArguments, training_args: TrainingRunArguments
) -> dict:
    """What a checkpoint must have been trained with for a run to resume from it: the recipe, the design, the seeds
    and the data's fingerprint (the files' content, `data.fingerprint_files`)."""
    from .data import fingerprint_files

    arguments = run_arguments(model_args, data_args, training_args)
    return {
        **recipe_arguments(arguments),
        "variant": variant,
        "seed": training_args.seed,
        "data_seed": training_args.data_seed,
        "data_fingerprint": fingerprint_files(data_args.train_data),
    }


def check_resume_recipe(checkpoint, recipe: dict) -> None:
    """Refuse to resume from a checkpoint written by another recipe (learning rates, data, seed, design...), naming
    each difference; a checkpoint without a recorded recipe (older poolattn) is resumed with a warning."""
    record_file = Path(checkpoint) / CHECKPOINT_RECORD
    try:
        recorded = json.loads(record_file.read_text()).get("recipe")
    except (OSError, json.JSONDecodeError, AttributeError):
        recorded = None
    if recorded is None:
        logger.warning(
            "%s records no recipe (written by an older poolattn, or damaged): resuming without checking "
            "that it was trained with these settings",
            checkpoint,
        )
        return
    differences = [
        f"{key}: {recorded.get(key)!r} there, {recipe.get(key)!r} now"
        for key in sorted(set(recorded) | set(recipe))
        if recorded.get(key) != recipe.get(key)
    ]
    if differences:
        raise TrainingSetupError(
            f"{checkpoint} was trained with other settings than this run ({'; '.join(differences)}), so resuming "
            "would train the rest of the run on the old ones. Resume with the same flags, or train again with "
            "--overwrite_output_dir true (or another --output_dir)."
        )


class CheckpointRecord:
    """A Trainer callback that writes `poolattn_checkpoint.json` into every checkpoint: the backbone (as given and as
    resolved), the model's `PoolAttnConfig`, which the adapter files alone do not hold (`load_checkpoint`), and the
    recipe a resumed run is checked against (`check_resume_recipe`)."""

    def __init__(self, backbone: str, backbone_path: str, config, recipe: dict | None = None):
        self.record = {
            "backbone": backbone,
            "backbone_path": str(backbone_path),
            "poolattn_config": config.to_diff_dict(),
            "recipe": recipe,
        }

    def __getattr__(self, name):  # every other TrainerCallback event: nothing to do
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_save(self, args, state, control, **kwargs):
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            write_json(folder / CHECKPOINT_RECORD, self.record)


def load_checkpoint(checkpoint, *, merge: bool = True) -> PoolAttnEmbeddingModel:
    """A training checkpoint as a model: the backbone it was trained on (resolved again where the recorded path is
    gone, e.g. on another machine), the recorded `PoolAttnConfig`, then peft's adapter and the trained head
    (`PeftModel.from_pretrained`); merged (`merge=True`) it is a plain `PoolAttnEmbeddingModel` like an export,
    otherwise a `PeftModel` to train further.

        model = poolattn.load_checkpoint("outputs/smollm2-135m-v5/checkpoint-30")
    """
    from peft import PeftModel

    checkpoint = Path(checkpoint)
    record_file = checkpoint / CHECKPOINT_RECORD
    if not record_file.is_file():
        raise TrainingSetupError(
            f"{checkpoint}: no {CHECKPOINT_RECORD} here; give a checkpoint-<step> folder "
            "written by poolattn's train.py (older checkpoints lack it: use the export)."
        )
    record = json.loads(record_file.read_text())
    recorded = Path(record["backbone_path"])
    backbone = str(recorded) if recorded.is_dir() else resolve_backbone(record["backbone"])
    own_fields = set(PoolAttnConfig.__dataclass_fields__) - set(PreTrainedConfig.__dataclass_fields__)
    own_fields -= {"text_config", "variant"}  # the variant is set back after the merge
    fields = {key: value for key, value in record["poolattn_config"].items() if key in own_fields}
    model = PoolAttnEmbeddingModel.from_backbone(backbone, variant=None, **fields)
    peft_model = PeftModel.from_pretrained(model, str(checkpoint))
    if not merge:
        return peft_model
    merged = peft_model.merge_and_unload()
    merged.config.variant = record["poolattn_config"].get("variant")
    return merged.eval()


def restore_finished_run(trainer, checkpoint: str | None):
    """When `checkpoint` (the one to resume from) reached max_steps, load it and return its TrainOutput, else None.

    The Trainer's loop checks for the end only after a step, so resuming a finished run would train one step more
    (and export a different model than the uninterrupted run, e.g. after a crash during the export).
    """
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import TrainOutput

    if not checkpoint or not (Path(checkpoint) / "trainer_state.json").is_file() or trainer.args.max_steps <= 0:
        return None  # nothing to restore here: the Trainer resumes (or explains why it cannot)
    state_file = Path(checkpoint) / "trainer_state.json"
    state = TrainerState.load_from_json(str(state_file))
    rule = plateau_rule(trainer.args)
    at_plateau = rule is not None and rule.step(state.log_history) is not None
    if state.global_step < trainer.args.max_steps and not at_plateau:
        return None
    trainer._load_from_checkpoint(checkpoint)  # the weights (adapter + head, or the full model) of that step
    trainer.state = state
    logger.info(
        "%s already %s: exporting it without training",
        checkpoint,
        "reached the plateau" if at_plateau else f"reached max_steps={trainer.args.max_steps}",
    )
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    return TrainOutput(state.global_step, sum(losses) / len(losses) if losses else float("nan"), {})


def plateau_rule(training_args) -> PlateauRule | None:
    """The run's plateau rule (`--plateau_patience`), or None."""
    patience = getattr(training_args, "plateau_patience", None)
    return PlateauRule(patience, training_args.plateau_min_improvement) if patience else None


def stop_record(trainer, training_args) -> StopRecord:
    """Why and where training ended: the plateau rule, the Trainer's early stopping, or the cap."""
    state, rule = trainer.state, plateau_rule(training_args)
    evaluations = [(entry["step"], entry["eval_loss"]) for entry in state.log_history if "eval_loss" in entry]
    best = min(evaluations, key=lambda item: item[1]) if evaluations else (None, None)
    plateau_at = rule.step(state.log_history) if rule else None
    reason = (
        "plateau"
        if plateau_at is not None
        else "max_steps"
        if state.global_step >= training_args.max_steps > 0
        else "early_stopping"
        if getattr(training_args, "load_best_model_at_end", False)
        else "end_of_data"
    )
    every = training_args.eval_steps if evaluations else None
    return StopRecord(
        reason=reason,
        step=state.global_step,
        cap=training_args.max_steps,
        rule=rule.describe(every=every, cap=training_args.max_steps) if rule else None,
        best_step=best[0],
        best_eval_loss=best[1],
    )


def train_variant(
    variant: int | str,
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingRunArguments,
    triplets: Triplets,
    backbone_path: str,
    held_out: list[dict] | None = None,
) -> Path:
    """One variant: model, trainer, training (or resume), export. Returns the exported folder. `held_out` rows are
    scored during training (`ContrastiveTrainer.evaluation_loop`)."""
    import datasets

    from .trainer import ContrastiveTrainer  # transformers' Trainer, when a run trains

    set_seed(training_args.seed)
    model, tokenizer = build_model(model_args, backbone_path, variant)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    collator = TripletCollator(
        tokenizer,
        query_max_length=data_args.query_max_length,
        document_max_length=data_args.document_max_length,
        add_eos=base.config.add_eos,
        query_instruction=data_args.query_instruction,
        source_instructions=[item.instruction for item in triplets.sources],
    )
    one_source = batch_sampling(data_args, triplets) == "one_source_per_batch" and triplets.stream is None
    if triplets.stream is not None:
        triplets.stream.seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
        # accelerate would otherwise "dispatch" an iterable dataset's collated batches, slicing every tensor to the
        # queries' count (and so dropping hard negatives); sharded, each process reads the stream and takes its rows
        training_args.accelerator_config.dispatch_batches = False
    train_dataset = triplets.stream if triplets.stream is not None else datasets.Dataset.from_list(triplets.rows)
    recipe = resume_recipe(variant, model_args, data_args, training_args)
    if training_args.resume_from_checkpoint:
        check_resume_recipe(training_args.resume_from_checkpoint, recipe)
    callbacks = [CheckpointRecord(model_args.backbone, backbone_path, base.config, recipe)]
    if training_args.plateau_patience:
        callbacks.append(PlateauStopping(plateau_rule(training_args)))
    if data_args.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=data_args.early_stopping_patience))
    trainer = ContrastiveTrainer(
        model=model,
        args=training_args,
        data_collator=collator,
        processing_class=tokenizer,
        train_dataset=train_dataset,
        eval_dataset=datasets.Dataset.from_list(held_out) if held_out else None,
        source_of_rows=triplets.source_of_rows() if one_source else None,
        source_weights={index: item.weight for index, item in enumerate(triplets.sources)}
        if data_args.weights_per_source
        else None,
        callbacks=callbacks,
    )
    batch = ContrastiveBatch.of_run(
        per_device_batch=training_args.per_device_train_batch_size,
        world_size=world_size(),
        negatives_per_query=triplets.negatives_per_query,
        gather=training_args.gather_across_devices,
        gradcache_chunk_size=training_args.gradcache_chunk_size,
        gradient_accumulation_steps=training_args.gradient_accumulation_steps,
    )
    parameters = TrainableParameters.of(model)
    if trainer.is_world_process_zero():
        logger.info("variant %s: contrastive batch per loss call = %s", variant, batch.describe())
        logger.info("variant %s: trainable parameters: %s", variant, parameters.describe())
    resume = training_args.resume_from_checkpoint  # a checkpoint folder or None (`run` resolves "true")
    started = time.time()
    result = restore_finished_run(trainer, resume) or trainer.train(resume_from_checkpoint=resume)
    manifest = training_manifest(
        variant,
        base,
        trainer,
        result,
        model_args,
        data_args,
        training_args,
        triplets,
        batch=batch,
        parameters=parameters,
        seconds=time.time() - started,
    )
    if not trainer.is_world_process_zero():
        return Path(training_args.output_dir) / "model"
    check_texts = [row["query"] for row in triplets.rows[: training_args.export_check_texts]]
    destination = export_model(
        model, tokenizer, Path(training_args.output_dir) / "model", check_texts=check_texts, manifest=manifest
    )
    logger.info("variant %s: model written to %s", variant, destination)
    return destination


def export_untrained(
    variant: int | str, model_args: ModelArguments, training_args: TrainingRunArguments, destination
) -> Path:
    """The control of a run: the model a run of `variant` with this seed starts from (the raw backbone and the head
    as `train_variant` initialises it: same seed, same config), exported like a trained model with a manifest of 0
    steps, so evaluation scores it as it scores the trained one. Written once; an existing export is kept."""
    destination = Path(destination)
    if (destination / MANIFEST_FILE).is_file():
        return destination
    backbone_path = resolve_backbone(model_args.backbone)
    set_seed(training_args.seed)
    model = PoolAttnEmbeddingModel.from_backbone(
        backbone_path,
        variant=variant,
        dtype=getattr(torch, model_args.model_dtype),
        **({"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}),
        **model_args.overrides,
    )
    arguments = json.loads(json.dumps({**asdict(model_args), **training_args.to_sanitized_dict()}, default=str))
    manifest = TrainingManifest(
        variant=variant,
        backbone=model_args.backbone,
        model_name=model_args.model_name_for(variant),
        seed=training_args.seed,
        global_steps=0,
        stop=StopRecord(reason="untrained", step=0),
        trainable_parameters=TrainableParameters.of(model),
        libraries=library_versions(),
        poolattn_config=model.config.to_diff_dict(),
        hyperparameters=arguments,
    )
    written = export_model(
        model, model.get_tokenizer(), destination, check_texts=["an untrained control"], manifest=manifest
    )
    logger.info("variant %s, seed %d: untrained control written to %s", variant, training_args.seed, written)
    return written


def batch_sampling(data_args: DataArguments, triplets: Triplets) -> str:
    """How batches are drawn: `--batch_sampling`, or "mixed" for data of one source (any batch is of one source)."""
    return data_args.batch_sampling if len(triplets.sources) > 1 else "mixed"


def check_batches(triplets: Triplets, data_args: DataArguments, training_args: TrainingRunArguments) -> None:
    """Refuse, before training, data that cannot give the batches asked for; log each source's share."""
    loss_batch = training_args.per_device_train_batch_size * training_args.world_size
    for source in triplets.sources:
        logger.info(
            "source %s: %d examples, %d hard negative(s) per query%s%s",
            source.name,
            source.examples,
            source.negatives_per_query,
            f", {source.skipped} invalid rows skipped" if source.skipped else "",
            f", sampling weight {source.weight:g}" if source.weight is not None else "",
        )
    if triplets.examples < loss_batch:
        raise TripletDataError(
            f"{triplets.source}: {triplets.examples} rows make no full batch of {loss_batch} "
            f"(--per_device_train_batch_size {training_args.per_device_train_batch_size} x "
            f"{training_args.world_size} process(es)), so no step would run; lower the batch size "
            "or add data."
        )
    if batch_sampling(data_args, triplets) == "one_source_per_batch":
        weighted_small = [source.name for source in triplets.sources if source.weight and source.examples < loss_batch]
        if weighted_small:
            raise TripletDataError(
                f"--source_weights gives weight to {', '.join(weighted_small)}, with fewer rows "
                f"than one batch of {loss_batch}; give them weight 0 or lower the batch size."
            )
        small = [source.name for source in triplets.sources if source.examples < loss_batch and source.weight != 0]
        if len(small) == len(triplets.sources):
            raise TripletDataError(
                f"{triplets.source}: no source holds a full batch of {loss_batch} rows (one source "
                "per batch); lower --per_device_train_batch_size or use --batch_sampling mixed."
            )
        if small:
            logger.warning(
                "sources with fewer rows than one batch of %d give no batch: %s", loss_batch, ", ".join(small)
            )
    elif (
        training_args.world_size > 1
        and training_args.gather_across_devices
        and len({source.negatives_per_query for source in triplets.sources}) > 1
    ):
        raise TrainingSetupError(
            "--batch_sampling mixed across processes needs the same number of hard negatives in every "
            "source (each process gathers the others' documents); use one_source_per_batch or "
            "--negatives_per_query 0."
        )


def held_out_rows(
    triplets: Triplets,
    data_args: DataArguments,
    training_args: TrainingRunArguments,
) -> list[dict] | None:
    """The evaluation rows (`--eval_data`, or `--eval_fraction` of the training rows, taken out of training), checked
    against the evaluation settings before training; evaluation runs every `--save_steps` unless
    `--eval_strategy` says otherwise."""
    from transformers.trainer_utils import IntervalStrategy

    rows = None
    if data_args.eval_data:
        evaluation = load_triplets(
            data_args.eval_data,
            split=data_args.data_split,
            skip_invalid=data_args.skip_invalid_rows,
            negatives_per_query=data_args.negatives_per_query,
        )
        # the training sources' instructions, where the evaluation files have the same names; then each row carries
        # its instruction itself, as its source index means nothing to the training collator
        set_source_instructions(
            evaluation,
            {
                key: value
                for key, value in data_args.instructions_per_source.items()
                if any(key in (item.name, Path(item.file).stem) for item in evaluation.sources)
            },
        )
        rows = [
            {**row, "instruction": row["instruction"] or evaluation.sources[row["source"]].instruction, "source": None}
            for row in evaluation.rows
        ]
    elif data_args.eval_fraction:
        import random

        order = list(range(len(triplets.rows)))
        random.Random(training_args.seed).shuffle(order)
        count = max(1, round(data_args.eval_fraction * len(order)))
        chosen = set(order[:count])
        rows = [row for index, row in enumerate(triplets.rows) if index in chosen]
        triplets.rows = [row for index, row in enumerate(triplets.rows) if index not in chosen]
        for index, source in enumerate(triplets.sources):
            source.examples = sum(row["source"] == index for row in triplets.rows)
    evaluating = training_args.eval_strategy != IntervalStrategy.NO
    if rows is None and (
        evaluating
        or training_args.load_best_model_at_end
        or data_args.early_stopping_patience
        or training_args.plateau_patience
    ):
        raise TrainingSetupError(
            "--eval_strategy, --load_best_model_at_end, --early_stopping_patience and --plateau_patience need "
            "evaluation data: give --eval_data FILE or --eval_fraction 0.05."
        )
    eval_batch = training_args.per_device_eval_batch_size * training_args.world_size
    if rows is not None and len(rows) < eval_batch:
        raise TrainingSetupError(
            f"{len(rows)} held-out rows make no evaluation batch of {eval_batch} (incomplete batches are "
            "dropped, as in training); hold out more rows or lower --per_device_eval_batch_size."
        )
    if rows is not None and not evaluating:
        training_args.eval_strategy = IntervalStrategy.STEPS
        training_args.eval_steps = training_args.save_steps
    if data_args.early_stopping_patience and not training_args.load_best_model_at_end:
        raise TrainingSetupError(
            "--early_stopping_patience needs --load_best_model_at_end true (and --metric_for_best_model, "
            "default eval_loss), so that the best checkpoint is the one exported."
        )
    return rows


def check_output_writable(base_output) -> None:
    """Refuse an output folder that is a file or cannot be written, before anything is written."""
    import os

    base_output = Path(base_output)
    if base_output.exists() and not base_output.is_dir():
        raise TrainingSetupError(f"--output_dir {base_output} is a file; give a folder (it is created if missing).")
    existing = next(parent for parent in (base_output, *base_output.parents) if parent.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TrainingSetupError(
            f"--output_dir {base_output}: {existing} is not writable; give a folder you can write to."
        )


def check_output_dir(base_output, runs: list["PlannedRun"], *, resume: bool, overwrite: bool) -> None:
    """Refuse, before training, an output folder that is a file, is not writable, or holds an earlier run's model or
    checkpoints (unless resuming, or `overwrite`: then the earlier checkpoints are removed and the model replaced)."""
    import shutil

    base_output = Path(base_output)
    check_output_writable(base_output)
    for planned in runs:
        earlier = [path for path in (planned.model, *planned.output_dir.glob("checkpoint-*")) if path.exists()]
        if not earlier or resume:
            continue
        if not overwrite:
            raise TrainingSetupError(
                f"{planned.output_dir} holds an earlier run ({', '.join(path.name for path in earlier[:3])}); give "
                "another --output_dir, --resume_from_checkpoint true to keep finished runs and continue the others, "
                "or --overwrite_output_dir to train again (its checkpoints and model are removed first)."
            )
        # the earlier model goes too: a run killed before its own export must not resume into the earlier model
        for path in [*planned.output_dir.glob("checkpoint-*"), planned.model]:
            if path.exists():
                shutil.rmtree(path)
                logger.info("removed %s (--overwrite_output_dir)", path)


@dataclass(frozen=True)
class PlannedRun:
    """One training run of a job: a variant trained with a seed, into its own output folder."""

    variant: int | str
    seed: int
    output_dir: Path

    @property
    def model(self) -> Path:
        return self.output_dir / "model"


def planned_runs(model_args: ModelArguments, training_args: TrainingRunArguments, base_output) -> list[PlannedRun]:
    """Every (variant, seed) of a job, in training order. One variant and one seed write to `base_output` itself;
    several variants to `v<N>/`, several seeds (--seed, --seed+1, ...) to `seed-<S>/` below that.

    >>> model_args, _, training_args = parse_arguments(["--variant", "1,5", "--seeds", "2", "--seed", "7"])
    >>> [(run.variant, run.seed, run.output_dir.as_posix()) for run in planned_runs(model_args, training_args, "out")]
    [(1, 7, 'out/v1/seed-7'), (1, 8, 'out/v1/seed-8'), (5, 7, 'out/v5/seed-7'), (5, 8, 'out/v5/seed-8')]
    """
    seeds = [training_args.seed + offset for offset in range(training_args.seeds)]
    runs = []
    for variant in model_args.variants:
        folder = Path(base_output) / variant_tag(variant) if len(model_args.variants) > 1 else Path(base_output)
        runs += [PlannedRun(variant, seed, folder / f"seed-{seed}" if len(seeds) > 1 else folder) for seed in seeds]
    return runs


def default_run_tag(variant_spec: str) -> str:
    """The default output folder's suffix for a `--variant` value.

    >>> default_run_tag("5"), default_run_tag("all"), default_run_tag("1,5,mean-causal")
    ('v5', 'vall', 'v1-v5-mean-causal')
    """
    parts = [part.strip() for part in str(variant_spec).split(",")]
    return "-".join(f"v{part}" if part.isdigit() or part == "all" else part for part in parts)


def run(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingRunArguments) -> list[Path]:
    """Train, export and (with --push_to_hub / --hub_dry_run) publish every requested variant and seed; the exported
    folders, in `planned_runs` order.

    `--resume_from_checkpoint true` resumes the whole job: finished runs (an exported model) are kept, interrupted
    ones continue from their last complete checkpoint, the others start at step 0.
    """
    # data, validated before anything is written
    require_shared_data(data_args.train_data, "--train_data")
    if data_args.streaming:
        if training_args.max_steps < 1:
            raise TrainingSetupError("--streaming needs --max_steps (the data is not counted in epochs).")
        triplets = stream_triplets(
            data_args.train_data,
            batch_size=training_args.per_device_train_batch_size * training_args.world_size,
            seed=training_args.seed,
            buffer_size=data_args.shuffle_buffer_size,
            negatives_per_query=data_args.negatives_per_query,
            skip_invalid=data_args.skip_invalid_rows,
            split=data_args.data_split,
        )
    else:
        triplets = load_triplets(
            data_args.train_data,
            split=data_args.data_split,
            skip_invalid=data_args.skip_invalid_rows,
            negatives_per_query=data_args.negatives_per_query,
        )
    set_source_instructions(triplets, data_args.instructions_per_source)
    if data_args.weights_per_source:
        set_source_weights(triplets, data_args.weights_per_source)
    if data_args.max_train_samples:
        triplets.keep_first(data_args.max_train_samples)
    held_out = held_out_rows(triplets, data_args, training_args)
    check_batches(triplets, data_args, training_args)
    base_output = (
        training_args.output_dir
        if training_args.output_dir_was_given
        else f"outputs/{Path(model_args.backbone).name}-{default_run_tag(model_args.variant)}"
    )
    runs = planned_runs(model_args, training_args, base_output)
    resume = training_args.resume_from_checkpoint
    resume_latest = isinstance(resume, str) and resume.lower() in ("true", "latest")
    if resume and not resume_latest and len(runs) > 1:
        raise TrainingSetupError(
            f"--resume_from_checkpoint {resume} names one checkpoint, but this job has {len(runs)} "
            "runs (variants x seeds); give `true` to resume each from its own last checkpoint."
        )
    check_output_writable(base_output)
    backbone_path = resolve_backbone(model_args.backbone)
    with folder_lock(base_output, what="training run"):  # a second run into this folder is refused, by name
        check_output_dir(base_output, runs, resume=bool(resume), overwrite=training_args.overwrite_output_dir)
        exported = [
            train_planned(
                planned,
                model_args,
                data_args,
                training_args,
                triplets,
                backbone_path,
                held_out=held_out,
                resume_latest=resume_latest,
            )
            for planned in runs
        ]
    finish_collectives()
    # Hub repository folders (card, sentence-transformers files), uploaded with --push_to_hub
    if (training_args.publish_to_hub or training_args.hub_dry_run) and training_args.process_index == 0:
        publish(
            exported,
            hub_model_id=training_args.hub_model_id,
            push=training_args.publish_to_hub,
            output_dir=training_args.hub_dry_run or Path(base_output) / "hub",
            token=training_args.hub_token,
            private=training_args.hub_private_repo,
        )
    return exported


def train_planned(
    planned: PlannedRun,
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingRunArguments,
    triplets: Triplets,
    backbone_path: str,
    *,
    held_out: list[dict] | None,
    resume_latest: bool,
) -> Path:
    """One planned run of a job: kept when finished (resuming), else trained from its last complete checkpoint (or
    step 0) and exported. Returns the exported folder."""
    if resume_latest and (planned.model / MANIFEST_FILE).is_file():
        logger.info(
            "variant %s, seed %d: finished already (%s), not retrained", planned.variant, planned.seed, planned.model
        )
        return planned.model
    training_args.output_dir, training_args.seed = str(planned.output_dir), planned.seed
    if resume_latest:
        training_args.resume_from_checkpoint = last_complete_checkpoint(planned.output_dir)
        logger.info(
            "variant %s, seed %d: %s",
            planned.variant,
            planned.seed,
            f"resuming from {training_args.resume_from_checkpoint}"
            if training_args.resume_from_checkpoint
            else f"no complete checkpoint in {planned.output_dir}, training from step 0",
        )
    return train_variant(
        planned.variant, model_args, data_args, training_args, triplets, backbone_path, held_out=held_out
    )


def run_job(job: TrainingJob) -> Path:
    """One typed job (`jobs.TrainingJob`: one design, one seed, one folder): its arguments parsed and checked once,
    then trained (or resumed, or kept when finished) and exported. Returns the exported folder."""
    return run(*parse_arguments(job.argv()))[0]


def export_control(job: TrainingJob, destination) -> Path:
    """The untrained control of a job (`export_untrained`): the model its run starts from."""
    model_args, _, training_args = parse_arguments(job.argv())
    return export_untrained(model_args.variants[0], model_args, training_args, destination)


def main(argv: list[str]) -> list[Path]:
    """`train.py`'s arguments -> the exported model folders."""
    return run(*parse_arguments(argv))


def finish_collectives() -> None:
    """Under torchrun, a barrier after the last collective of a run (it releases the GIL while it waits).

    gloo's worker threads free each collective's tensors after the collective returns, and freeing them needs the GIL.
    A thread still doing so when the process exits aborts the finished run ("terminate called without an active
    exception") or deadlocks in ~ProcessGroupGloo; after this barrier the threads are idle. Then
    `shut_down_process_group` at exit. Safe to call after every run: an ablation calls `run` once per arm.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def shut_down_process_group() -> None:
    """Destroy the process group once, when the process is done (after `finish_collectives`; no collective waits),
    and after the trainers of its runs are released.

    The gloo group's destructor joins its worker threads, and a worker may still need the GIL to free the tensors of
    the last collectives. The group's own Python object releases the GIL while it is destroyed; a DDP wrapper's
    Reducer does not, so a Reducer that outlives the group's Python object deadlocks the process in
    ~ProcessGroupGloo (seen in 4 of 50 two-rank runs on a loaded 2-core machine). Cyclic garbage (a Trainer and its
    DDP-wrapped model) is therefore collected first, while the group's Python object still holds the group.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gc.collect()
        torch.distributed.destroy_process_group()
