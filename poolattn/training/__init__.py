"""Training: a typed job in (`job`), an exported model folder out (`runner`).

`job` (TrainingJob, the one record the CLI, the study and the ablations build), `runner` (flags, runs, checkpoints,
export), `data` / `batching` (triplets, one source per batch, streaming), `losses` / `trainer` /
`trainer_arguments` (the contrastive Trainer, GradCache, DDP negatives), `plateau` (the stopping rule), `mining`
(hard negatives)."""

import importlib

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
    "parse_arguments": "runner",
    "argument_parser": "runner",
    "build_model": "runner",
    "load_checkpoint": "runner",
    "ModelArguments": "runner",
    "TrainingSetupError": "runner",
    "PRESETS": "runner",
    "OWN_GROUPS": "runner",
    "SMALL_RECIPE_INSTRUCTIONS": "runner",
    "CHECKPOINT_RECORD": "runner",
    "finish_collectives": "runner",
    "shut_down_process_group": "runner",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
