"""What is checked and planned before any training: batches the data can fill, held-out rows, the output folders and
the runs one command makes (one per design)."""

import logging
import math
import random
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from transformers.trainer_utils import IntervalStrategy

from ..configuration_poolattn import DESIGNS, TRAINABLE_POOLINGS, PoolAttnConfig, variant_tag
from ..files import unwritable_folder
from .arguments import DataArguments, ModelArguments, TrainingSetupError
from .data import Triplets, load_triplets, set_source_instructions
from .plateau import evaluations_within
from .sources import TripletDataError, data_stem
from .trainer_arguments import TrainingRunArguments, checkpoint_problem

logger = logging.getLogger(__name__)


def batch_sampling(data_args: DataArguments, triplets: Triplets) -> str:
    """How batches are drawn: `--batch_sampling`, or "mixed" for data of one source (any batch is of one source)."""
    return data_args.batch_sampling if len(triplets.sources) > 1 else "mixed"


def _batch_flags(training_args: TrainingRunArguments) -> str:
    """The flags that set the batch, as the user gave them."""
    if training_args.contrastive_batch_size is not None:
        return f"--contrastive_batch_size {training_args.contrastive_batch_size}"
    return (
        f"--per_device_train_batch_size {training_args.per_device_train_batch_size} x "
        f"{training_args.world_size} process(es)"
    )


def check_designs_build(model_args, backbone_path: str) -> None:
    """Every design asked for (`--variant`, with `--config_overrides`) builds on the backbone's config, before data
    or weights load: a layer spec the backbone is too shallow for, or a backbone the designs cannot use, is refused."""
    from transformers import AutoConfig

    text_config = AutoConfig.from_pretrained(backbone_path).get_text_config()
    for variant in model_args.variants:
        try:
            PoolAttnConfig.from_variant(variant, text_config, **model_args.overrides)
        except (ValueError, TypeError) as error:
            raise TrainingSetupError(
                f"--variant {variant} on --backbone {model_args.backbone} ({text_config.model_type}): {error}"
            ) from None


def has_pooling_head(variant, overrides: dict | None = None) -> bool:
    """Whether a design (with its `--config_overrides`) has a trainable pooling head, and so a head rate."""
    return (overrides or {}).get("pooling", DESIGNS[variant]["pooling"]) in TRAINABLE_POOLINGS


def warn_head_rate_unused(model_args: ModelArguments, training_args: TrainingRunArguments) -> None:
    """`--head_learning_rate` with designs that have no pooling head (EOS-last, mean pooling): said once, before
    training; their runs record no head rate (`checkpoints.training_manifest`), as none of their weights had it."""
    if training_args.head_learning_rate is None:
        return
    headless = [variant for variant in model_args.variants if not has_pooling_head(variant, model_args.overrides)]
    if headless:
        logger.warning(
            "--head_learning_rate %g does not apply to %s: no pooling head (EOS-last or mean pooling); %s trains "
            "at --learning_rate alone and records no head rate",
            training_args.head_learning_rate,
            ", ".join(f"--variant {variant}" for variant in headless),
            "each" if len(headless) > 1 else "it",
        )


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
            _weight_text(source),
        )
    if triplets.examples < loss_batch:
        raise TripletDataError(
            f"{triplets.source}: {triplets.examples} rows make no full batch of {loss_batch} "
            f"({_batch_flags(training_args)}), so no step would run; lower the batch size or add data."
        )
    if batch_sampling(data_args, triplets) == "one_source_per_batch":
        weighted_small = _weighted_without_a_batch(triplets, loss_batch)
        capped = data_args.max_train_samples  # it keeps the first rows as read: whole files, then none
        cause = f" after --max_train_samples {capped} (the first rows as read; raise it)" if capped else ""
        if weighted_small:
            raise TripletDataError(
                f"--source_weights gives weight to {', '.join(weighted_small)}, with fewer rows "
                f"than one batch of {loss_batch}{cause}; give them weight 0 or lower the batch size."
            )
        small = [source.name for source in triplets.sources if source.examples < loss_batch and source.weight != 0]
        if len(small) == len(triplets.sources):
            raise TripletDataError(
                f"{triplets.source}: no source holds a full batch of {loss_batch} rows "
                f"({_batch_flags(training_args)}; one source per batch); lower the batch size or use "
                "--batch_sampling mixed."
            )
        if small:
            logger.warning(
                "sources with fewer rows than one batch of %d%s give no batch: %s", loss_batch, cause, ", ".join(small)
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


def check_prompt_lengths(
    backbone_path: str, model_args, data_args: DataArguments, triplets: Triplets, held_out: list[dict] | None
) -> None:
    """Refuse, before training, a query instruction whose prompt leaves no token of --query_max_length for the query
    (the collator would fail mid-run), naming where the instruction comes from and the token counts; likewise a
    --document_max_length the tokenizer's special tokens fill. Every distinct instruction the rows use is checked."""
    from transformers import AutoTokenizer

    from ..modeling_poolattn import special_token_frame
    from ..prompts import instruction_prompt

    tokenizer = AutoTokenizer.from_pretrained(backbone_path)
    prefix, suffix = special_token_frame(tokenizer)
    eos_id = tokenizer.eos_token_id
    add_eos = model_args.overrides.get("add_eos", True)  # PoolAttnConfig's default; no design sets it
    frame = len(prefix) + len(suffix) + int(add_eos and eos_id is not None and suffix[-1:] != [eos_id])
    if data_args.document_max_length <= frame:
        raise TrainingSetupError(
            f"--document_max_length {data_args.document_max_length} leaves no room for text after the tokenizer's "
            f"{frame} special tokens; give more than {frame}."
        )
    used = _instructions_used(data_args, triplets, held_out)
    prompts = [instruction_prompt(instruction) for instruction in used]
    counts = [frame + len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]] if used else []
    too_long = [(origin, count) for origin, count in zip(used.values(), counts) if count >= data_args.query_max_length]
    if too_long:
        (origin, count), longest = too_long[0], max(count for _, count in too_long)
        more = f" ({len(too_long) - 1} more instruction(s) too long, up to {longest} tokens)" if too_long[1:] else ""
        raise TrainingSetupError(
            f"--query_max_length {data_args.query_max_length} leaves no room for the query after the prompt of "
            f"{origin}: {count} tokens with the special tokens{more}; raise --query_max_length above {longest} or "
            "shorten the instruction."
        )


def _instructions_used(data_args: DataArguments, triplets: Triplets, held_out: list[dict] | None) -> dict[str, str]:
    """Each distinct query instruction of the run's rows -> where it first comes from, as the collator picks it: the
    row's own `instruction`, its source's (--source_instructions), else --query_instruction. Streamed rows are read
    later: then every source's instruction and --query_instruction count."""
    used: dict[str, str] = {}
    sources = triplets.sources
    for row in [*triplets.rows, *(held_out or [])]:
        source = sources[row["source"]] if isinstance(row.get("source"), int) else None
        if row.get("instruction"):
            where = source.name if source else f"--eval_data {data_args.eval_data}"
            used.setdefault(row["instruction"], f"the `instruction` of a row of {where} (query {row['query']!r:.60})")
        elif source is not None and source.instruction:
            used.setdefault(source.instruction, f"--source_instructions' instruction for {source.name}")
        elif data_args.query_instruction:
            used.setdefault(data_args.query_instruction, "--query_instruction")
    if triplets.stream is not None:
        for source in (source for source in sources if source.instruction):
            used.setdefault(source.instruction, f"--source_instructions' instruction for {source.name}")
        if data_args.query_instruction:
            used.setdefault(data_args.query_instruction, "--query_instruction")
    return used


def _weight_text(source) -> str:
    if source.weight is None:
        return ""
    shared = f" (shared by the parts of {source.weight_key})" if source.weight_key != source.name else ""
    return f", sampling weight {source.weight:g}{shared}"


def _weighted_without_a_batch(triplets: Triplets, loss_batch: int) -> list[str]:
    """The --source_weights keys with a weight above 0 whose sources hold no full batch: a source named by itself,
    or a file whose parts (sharing the stem's weight) are all smaller than one batch. A part of a file that has a
    full batch elsewhere is left out, as without weights."""
    rows_by_key: dict[str, int] = {}
    for source in (source for source in triplets.sources if source.weight):
        rows_by_key[source.weight_key] = max(rows_by_key.get(source.weight_key, 0), source.examples)
    return [key for key, largest in rows_by_key.items() if largest < loss_batch]


def held_out_rows(
    triplets: Triplets, data_args: DataArguments, training_args: TrainingRunArguments
) -> tuple[Triplets, list[dict] | None]:
    """(the training rows, the evaluation rows): `--eval_data`, or `--eval_fraction` of the training rows, taken out
    of a copy of `triplets` (the given object is left as it is), checked against the evaluation settings before
    training. Evaluation runs every `--save_steps` unless `--eval_strategy` says otherwise (`trainer_arguments`)."""
    rows = None
    if data_args.eval_data:
        rows = _evaluation_file_rows(data_args)
    elif data_args.eval_fraction:
        order = list(range(len(triplets.rows)))
        random.Random(training_args.seed).shuffle(order)
        chosen = set(order[: max(1, round(data_args.eval_fraction * len(order)))])
        rows = [row for index, row in enumerate(triplets.rows) if index in chosen]
        training_rows = [row for index, row in enumerate(triplets.rows) if index not in chosen]
        sources = [
            replace(source, examples=sum(row["source"] == index for row in training_rows))
            for index, source in enumerate(triplets.sources)
        ]
        triplets = replace(triplets, rows=training_rows, sources=sources)
    _check_evaluation(rows, data_args, training_args)
    return triplets, rows


def _evaluation_file_rows(data_args: DataArguments) -> list[dict]:
    """The rows of `--eval_data`, each carrying its query instruction itself."""
    evaluation = load_triplets(
        data_args.eval_data,
        split=data_args.data_split,
        skip_invalid=data_args.skip_invalid_rows,
        negatives_per_query=data_args.negatives_per_query,
    )
    # the training sources' instructions, where the evaluation files have the same names; then each row carries
    # its instruction itself, as its source index means nothing to the training collator
    names = {name for item in evaluation.sources for name in (item.name, data_stem(item.file))}
    set_source_instructions(evaluation, {k: v for k, v in data_args.instructions_per_source.items() if k in names})
    return [
        {**row, "instruction": row["instruction"] or evaluation.sources[row["source"]].instruction, "source": None}
        for row in evaluation.rows
    ]


def _check_evaluation(rows: list[dict] | None, data_args: DataArguments, training_args: TrainingRunArguments) -> None:
    asked = training_args.eval_strategy != IntervalStrategy.NO or training_args.load_best_model_at_end
    if rows is None and (asked or data_args.early_stopping_patience or training_args.plateau_patience):
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
    if data_args.early_stopping_patience and not training_args.load_best_model_at_end:
        raise TrainingSetupError(
            "--early_stopping_patience needs --load_best_model_at_end true (and --metric_for_best_model, "
            "default eval_loss), so that the best checkpoint is the one exported."
        )
    if rows is not None:
        _check_stopping_rules(data_args, training_args)


def _check_stopping_rules(data_args: DataArguments, training_args: TrainingRunArguments) -> None:
    """A plateau or early-stopping rule of patience N stops a run at its N + 1-th evaluation at the earliest: with
    fewer evaluations within --max_steps it could never act, and the run would train to the cap as if not asked."""
    every, cap = training_args.eval_steps or training_args.save_steps, training_args.max_steps
    if cap < 1 or not every or training_args.eval_strategy not in (IntervalStrategy.NO, IntervalStrategy.STEPS):
        return  # epochs: counted from the data later
    every = math.ceil(every * cap) if every < 1 else int(every)  # a fraction of the steps, as transformers reads it
    count = evaluations_within(cap, every)
    for flag, patience in (
        ("--plateau_patience", training_args.plateau_patience),
        ("--early_stopping_patience", data_args.early_stopping_patience),
    ):
        if patience and count < patience + 1:
            raise TrainingSetupError(
                f"{flag} {patience} needs {patience + 1} held-out evaluations to stop a run, but one every {every} "
                f"steps (--eval_steps, default --save_steps) within --max_steps {cap} makes {count}, so the rule "
                f"could never act; lower --eval_steps (or --save_steps), raise --max_steps or lower {flag}."
            )


def check_output_writable(base_output) -> None:
    """Refuse an output folder that is a file or cannot be written, before anything is written."""
    if problem := unwritable_folder(base_output):
        raise TrainingSetupError(f"--output_dir {problem}")


def check_output_dir(base_output, runs: list["PlannedRun"], *, resume: bool, overwrite: bool) -> None:
    """Refuse, before training, an output folder that is a file, is not writable, or holds an earlier run's model or
    checkpoints (unless resuming, or `overwrite`: then the earlier checkpoints are removed and the model replaced); a
    run laid out otherwise (`model/` where this job writes `seed-<S>/`) is refused when resuming too."""
    base_output = Path(base_output)
    check_output_writable(base_output)
    earlier = _earlier_runs(base_output, runs, resume=resume)
    if earlier and not overwrite:
        (folder, paths), ours = earlier[0], earlier[0][0] in {run.output_dir for run in runs}
        names = ", ".join(path.name for path in paths[:3])
        unlike = "" if ours else f", laid out unlike this job's runs (e.g. {runs[0].output_dir}), so not resumable"
        keep = "--resume_from_checkpoint true to keep finished runs and continue the others, or " if ours else "or "
        raise TrainingSetupError(
            f"{folder} holds an earlier run ({names}){unlike}; give another --output_dir, {keep}"
            "--overwrite_output_dir to train again (its checkpoints and model are removed first)."
        )
    # the earlier model goes too: a run killed before its own export must not resume into the earlier model
    for path in (path for _, paths in earlier for path in paths):
        shutil.rmtree(path)
        logger.info("removed %s (--overwrite_output_dir)", path)


def _earlier_runs(base: Path, runs: list["PlannedRun"], *, resume: bool) -> list[tuple[Path, list[Path]]]:
    """The folders `planned_runs` can lay out below `base` (this job's, then `base`, `v5/`, `seed-42/`, `v5/seed-42/`)
    holding a model, checkpoints or a model an interrupted export retired (an earlier run's too), with those: this
    job's unless resuming, and any laid out otherwise (those laid out as its runs, `v2/` beside `v5/`, are left)."""

    def layout(folder: Path) -> tuple[bool, ...]:  # (), (False,) for v5/, (True,) for seed-42/, (False, True)
        return tuple(part.startswith("seed-") for part in folder.relative_to(base).parts)

    planned = {run.output_dir for run in runs}
    designs = [base / variant_tag(design) for design in DESIGNS if (base / variant_tag(design)).is_dir()]
    seeds = [path for folder in (base, *designs) for path in sorted(folder.glob("seed-*")) if path.is_dir()]
    found = []
    for folder in dict.fromkeys([*(run.output_dir for run in runs), base, *designs, *seeds]):
        saves = [folder / "model", *sorted(folder.glob("checkpoint-*")), *sorted(folder.glob(".model.old-*"))]
        paths = [path for path in saves if path.exists()]
        if paths and ((folder in planned and not resume) or layout(folder) != layout(runs[0].output_dir)):
            found.append((folder, paths))
    return found


def check_output_outside_data(data_args: DataArguments, training_args: TrainingRunArguments) -> None:
    """Refuse an --output_dir inside (or equal to) a local --train_data or --eval_data folder (with no --output_dir:
    outputs/, the default's folder): the run's files would be read as data the next time the folder is read."""
    given = training_args.output_dir_was_given
    output = Path(training_args.output_dir if given else "outputs")
    for flag, data in (("--train_data", data_args.train_data), ("--eval_data", data_args.eval_data)):
        if data and Path(data).is_dir() and output.resolve().is_relative_to(Path(data).resolve()):
            raise TrainingSetupError(
                f"{f'--output_dir {output}' if given else 'the default --output_dir (in outputs/)'} is inside {flag} "
                f"{data}: the run's checkpoints and model would be read as its data the next time it is read; give an "
                f"--output_dir outside {data}."
            )


def check_resume(resume: str | None, runs: list["PlannedRun"]) -> None:
    """Refuse, before any work, a --resume_from_checkpoint folder that is no complete checkpoint, or one checkpoint
    folder for a job of several runs (`resume` as `resume_setting` reads it)."""
    if resume in (None, "true"):
        return
    if len(runs) > 1:
        raise TrainingSetupError(
            f"--resume_from_checkpoint {resume} names one checkpoint, but this job has {len(runs)} "
            "runs (variants x seeds); give `true` to resume each from its own last checkpoint."
        )
    if problem := checkpoint_problem(resume):
        raise TrainingSetupError(
            f"--resume_from_checkpoint {resume}: {problem}. Give true (each run from the last complete checkpoint "
            "in its --output_dir), false (train from step 0) or a checkpoint folder (<output_dir>/checkpoint-<step>)."
        )


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

    >>> from poolattn.training import parse_arguments
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
