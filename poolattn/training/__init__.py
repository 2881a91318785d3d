"""Training: a typed job in (`job`), an exported model folder out (`runner`).

`job` (TrainingJob, the one record the CLI, the study and the ablations build), `arguments` / `presets` (train.py's
flags and recipes), `preflight` (checks before training), `runner` (runs, export), `checkpoints` (resume), `data` /
`batching` (triplets, one source per batch, streaming), `losses` / `trainer` / `trainer_arguments` (the contrastive
Trainer, GradCache, DDP negatives), `plateau` (the stopping rule), `mining` (hard negatives)."""

from ..lazy import lazy_exports

# Imported on first use (PEP 562): the parsers and the record types stay light, the stack behind a name loads when
# it is asked for.
_LAZY = {
    "TrainingJob": "job",
    "JobError": "job",
    "main": "runner",
    "run": "runner",
    "run_job": "runner",
    "export_control": "runner",
    "train_variant": "runner",
    "parse_arguments": "arguments",
    "argument_parser": "arguments",
    "build_model": "runner",
    "load_checkpoint": "checkpoints",
    "ModelArguments": "arguments",
    "TrainingSetupError": "arguments",
    "PRESETS": "presets",
    "OWN_GROUPS": "arguments",
    "SMALL_RECIPE_INSTRUCTIONS": "presets",
    "CHECKPOINT_RECORD": "checkpoints",
}
__all__ = sorted(_LAZY)


__getattr__ = lazy_exports(__name__, _LAZY)
