"""The contrastive trainer's arguments and the run-level helpers that need no Trainer: importing this module loads
transformers' `TrainingArguments` only (not the Trainer, datasets or the evaluation stack), so `train.py --help` and
argument parsing stay light. `ContrastiveTrainer` is in `poolattn.training.trainer`."""

import copy
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import TrainingArguments

from ..launch import launched_processes
from ..model_folder import CHECKPOINT_RECORD

logger = logging.getLogger(__name__)


def last_complete_checkpoint(folder) -> str | None:
    """The newest `checkpoint-<step>` folder of `folder` that holds a readable `trainer_state.json` (the Trainer
    writes it last, in place) and a readable record of its recipe (`poolattn_checkpoint.json`, written after it): a
    checkpoint killed while being written, or whose state or record is missing, empty or truncated, is passed over
    with a warning naming it; or None."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    checkpoints = [
        path for path in Path(folder).glob(f"{PREFIX_CHECKPOINT_DIR}-*") if path.name.split("-")[-1].isdigit()
    ]
    complete = [
        path
        for path in checkpoints
        if _readable_state(path / "trainer_state.json") and _readable_state(path / CHECKPOINT_RECORD)
    ]
    newest = max(complete, key=lambda path: int(path.name.split("-")[-1])) if complete else None
    for path in sorted(set(checkpoints) - set(complete)):
        if newest is None or int(path.name.split("-")[-1]) > int(newest.name.split("-")[-1]):
            why = _why_incomplete(path)
            logger.warning(
                "%s is incomplete (%s: killed while being written?); passed over, resuming from %s",
                path,
                why,
                newest or "step 0",
            )
    return str(newest) if newest else None


def checkpoint_problem(folder) -> str | None:
    """Why `folder` is no complete checkpoint to resume from (what `last_complete_checkpoint` passes over), or None;
    one without its recipe record is not (nothing could check its recipe: `check_resume_recipe`)."""
    folder = Path(folder)
    if not folder.is_dir():
        return "a file, not a checkpoint folder" if folder.exists() else "no such folder"
    for name in ("trainer_state.json", CHECKPOINT_RECORD):
        if not _readable_state(folder / name):
            return f"{'a damaged' if (folder / name).exists() else 'no'} {name}: not a complete checkpoint"
    return None


def _why_incomplete(checkpoint: Path) -> str:
    for name in ("trainer_state.json", CHECKPOINT_RECORD):
        if not (checkpoint / name).exists():
            return f"no {name}"
        if not _readable_state(checkpoint / name):
            return f"a damaged {name}"
    return "unreadable"


RESUME_TRUE, RESUME_FALSE = ("true", "latest", "yes", "y", "t", "1"), ("false", "no", "n", "f", "0", "none", "")


def resume_setting(value) -> str | None:
    """--resume_from_checkpoint as a run reads it: "true" (each run from its last complete checkpoint), None (no
    resume: false, no, 0, as transformers reads a boolean flag) or a checkpoint folder (checked by `run`).

    >>> resume_setting("False"), resume_setting("latest"), resume_setting("out/checkpoint-2")
    (None, 'true', 'out/checkpoint-2')
    """
    if value is None or isinstance(value, bool):
        return "true" if value else None
    text = str(value).strip()
    if text.lower() in RESUME_FALSE:
        return None
    return "true" if text.lower() in RESUME_TRUE else text


def _readable_state(path: Path) -> bool:
    import json

    try:
        return isinstance(json.loads(path.read_text()), dict)
    except (OSError, ValueError):
        return False


class TrainingDivergedError(FloatingPointError):
    """A non-finite loss or gradient: the run stopped before that step's update; the message says what to try."""


@dataclass
class ContrastiveTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the contrastive settings `ContrastiveTrainer` reads (validated here, once)."""

    temperature: float = field(default=0.05, metadata={"help": "InfoNCE temperature (paper: scale 20 = 0.05)"})
    gradcache_chunk_size: int = field(default=0, metadata={"help": "GradCache chunk size in texts (0 = off)"})
    gather_across_devices: bool = field(default=True, metadata={"help": "use every rank's documents as negatives"})
    contrastive_batch_size: int | None = field(
        default=None, metadata={"help": "queries per loss call across devices; sets per_device_train_batch_size"}
    )
    head_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "learning rate of what starts from scratch (the pooling head and its layer weights), apart from "
            "--learning_rate for the backbone's adapter; default: --learning_rate for both"
        },
    )
    lr_schedule_steps: int | None = field(
        default=None,
        metadata={
            "help": "plan the learning-rate schedule (warmup and decay) over N steps while the run stops at "
            "--max_steps (N >= max_steps): the first steps of an N-step run, as a tuning proxy should train them; "
            "default: the run's own length"
        },
    )

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"--temperature {self.temperature} must be > 0 (0.05 is the paper's scale 20).")
        if not self.learning_rate >= 0:  # 0: the weights stay as they are (a loss measured, nothing trained)
            raise ValueError(f"--learning_rate {self.learning_rate} must be >= 0 (e.g. 1e-4).")
        if not 0 <= self.label_smoothing_factor < 1:  # the contrastive loss's (`info_nce_loss`)
            raise ValueError(f"--label_smoothing_factor {self.label_smoothing_factor} must be in [0, 1) (0: off).")
        for flag, size in (
            ("--per_device_train_batch_size", self.per_device_train_batch_size),
            ("--per_device_eval_batch_size", self.per_device_eval_batch_size),
        ):
            if size < 1:
                raise ValueError(f"{flag} {size} must be >= 1 (queries per device).")
        if self.head_learning_rate is not None and not self.head_learning_rate > 0:
            raise ValueError(
                f"--head_learning_rate {self.head_learning_rate} must be > 0 (leave it out to train the "
                "head at --learning_rate)."
            )
        if self.lr_schedule_steps is not None and not (
            self.lr_schedule_steps >= 1 and (self.max_steps <= 0 or self.lr_schedule_steps >= self.max_steps)
        ):
            raise ValueError(
                f"--lr_schedule_steps {self.lr_schedule_steps} must be >= 1 and >= --max_steps {self.max_steps} (the "
                "schedule of a longer run, of which this run trains the first steps); leave it out for the run's own."
            )
        if self.gradcache_chunk_size < 0:
            raise ValueError(
                f"--gradcache_chunk_size {self.gradcache_chunk_size} must be >= 0 (0 disables GradCache)."
            )
        if launched_processes() > 1 and not self.use_cpu and not torch.cuda.is_available():
            # torchrun / accelerate on a machine without CUDA: the Trainer joins the processes only on its CPU path
            # (gloo); without it every process would train a model of its own and all would write the export
            logger.info(
                "no CUDA device: %s processes train one model together on CPU (use_cpu, gloo)", launched_processes()
            )
            self.use_cpu = True
            self.ddp_backend = self.ddp_backend or "gloo"
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # pinned memory needs an accelerator (torch warns on every loader)
        if self.contrastive_batch_size is not None:
            world = launched_processes()
            if self.contrastive_batch_size < 1 or self.contrastive_batch_size % world:
                raise ValueError(
                    f"--contrastive_batch_size {self.contrastive_batch_size} must be a positive multiple "
                    f"of the {world} processes."
                )
            self.per_device_train_batch_size = self.contrastive_batch_size // world
        if self.load_best_model_at_end and self.eval_strategy == "no" and self.save_strategy in ("steps", "epoch"):
            # the best checkpoint needs an evaluation at every checkpoint: the schedule held-out rows get by default
            self.eval_strategy = str(getattr(self.save_strategy, "value", self.save_strategy))
            self.eval_steps = self.eval_steps or self.save_steps
        super().__post_init__()


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
        if self.output_dir is not None and not str(self.output_dir).strip():
            raise ValueError(
                "--output_dir is empty: give a folder (it is created if missing), or leave the flag out for "
                "outputs/<backbone>-v<variant>; an empty name would write into the current folder."
            )
        self.resume_from_checkpoint = resume_setting(self.resume_from_checkpoint)
        if self.overwrite_output_dir and self.resume_from_checkpoint:
            raise ValueError(
                f"--overwrite_output_dir true replaces what --output_dir holds, and --resume_from_checkpoint "
                f"{self.resume_from_checkpoint} resumes from it: give one of them (overwrite: train anew; resume: go "
                "on from the last checkpoint, a finished run kept)."
            )
        if (self.push_to_hub or self.hub_dry_run) and not self.hub_model_id:
            raise ValueError(
                "--push_to_hub / --hub_dry_run need --hub_model_id ORG/NAME (each variant goes to ORG/NAME-v<N>)."
            )
        if self.push_to_hub or self.hub_dry_run:  # now, not after every variant has trained
            from ..hub.repository import repository_id

            try:
                repository_id(self.hub_model_id, variant=None)
            except ValueError as error:  # each variant's own id is checked once the variants are known (`run`)
                said = str(error) if str(error).startswith("--hub_model_id") else f"--hub_model_id: {error}"
                raise ValueError(f"{said} (each variant goes to ORG/NAME-v<N>)") from None
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
        if self.seeds > 1 and (self.push_to_hub or self.hub_dry_run):
            raise ValueError(
                f"--seeds {self.seeds} with --push_to_hub/--hub_dry_run: a Hub repository holds one "
                "model; train the seeds, then publish the one you choose with publish.py."
            )
        super().__post_init__()


def trainer_arguments(
    training_args: TrainingRunArguments, *, streaming: bool = False, evaluating: bool = False
) -> TrainingRunArguments:
    """The Trainer's copy of the run's arguments; the parsed arguments are left as given.

    poolattn publishes the exported model itself (card, sentence-transformers files) after training, so the Trainer's
    own push, which would upload raw checkpoints, is off in the copy. With a streamed dataset, accelerate would
    otherwise "dispatch" an iterable dataset's collated batches, slicing every tensor to the queries' count (and so
    dropping hard negatives); sharded, each process reads the stream and takes its own rows. With held-out rows
    (`evaluating`) and no `--eval_strategy`, they are scored every `--eval_steps` (default `--save_steps`).
    """
    from transformers.trainer_utils import IntervalStrategy

    trainer_copy = copy.copy(training_args)  # a shallow copy: no __post_init__ runs again
    trainer_copy.push_to_hub = False
    # a resumed run goes on with its callbacks' state (early stopping's count of evaluations without improvement)
    trainer_copy.restore_callback_states_from_checkpoint = True
    if streaming:
        trainer_copy.accelerator_config = replace(training_args.accelerator_config, dispatch_batches=False)
    if evaluating and training_args.eval_strategy == IntervalStrategy.NO:
        trainer_copy.eval_strategy = IntervalStrategy.STEPS
        trainer_copy.eval_steps = training_args.eval_steps or training_args.save_steps
    return trainer_copy
