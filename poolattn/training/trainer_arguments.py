"""The contrastive trainer's arguments and the run-level helpers that need no Trainer: importing this module loads
transformers' `TrainingArguments` only (not the Trainer, datasets or the evaluation stack), so `train.py --help` and
argument parsing stay light. `ContrastiveTrainer` is in `poolattn.training.trainer`."""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainingArguments

from ..launch import launched_processes

logger = logging.getLogger(__name__)


def last_complete_checkpoint(folder) -> str | None:
    """The newest `checkpoint-<step>` folder of `folder` that holds a readable `trainer_state.json` (the Trainer
    writes it last, in place: a checkpoint killed while being written, or whose state file is empty or truncated,
    is passed over with a warning naming it), or None."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    checkpoints = [
        path for path in Path(folder).glob(f"{PREFIX_CHECKPOINT_DIR}-*") if path.name.split("-")[-1].isdigit()
    ]
    complete = [path for path in checkpoints if _readable_state(path / "trainer_state.json")]
    newest = max(complete, key=lambda path: int(path.name.split("-")[-1])) if complete else None
    for path in sorted(set(checkpoints) - set(complete)):
        if newest is None or int(path.name.split("-")[-1]) > int(newest.name.split("-")[-1]):
            why = "a damaged trainer_state.json" if (path / "trainer_state.json").exists() else "no trainer_state.json"
            logger.warning(
                "%s is incomplete (%s: killed while being written?); passed over, resuming from %s",
                path,
                why,
                newest or "step 0",
            )
    return str(newest) if newest else None


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

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"--temperature {self.temperature} must be > 0 (0.05 is the paper's scale 20).")
        if self.head_learning_rate is not None and not self.head_learning_rate > 0:
            raise ValueError(
                f"--head_learning_rate {self.head_learning_rate} must be > 0 (leave it out to train the "
                "head at --learning_rate)."
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
        super().__post_init__()
