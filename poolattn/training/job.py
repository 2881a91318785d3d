"""A training run as a typed, immutable job: what the study and the ablations hand to `training.run_job`.

A job holds the user's own train.py flags as given (`flags`: a preset, data, sizes; what follows `--` on the study's
command line) and, as typed fields, everything a caller sets per run: the design, the seed, the folder, the name,
config overrides, the rates, the steps, the plateau rule and which checkpoint is exported. The runs of a study are
`dataclasses.replace` of one base job; nothing outside `training` builds train.py's command line, and the flags a
caller may not also give in `flags` are those the job sets itself (`TrainingJob.owned_flags`), in one place.

>>> base = TrainingJob(flags=("--preset", "small"), variant=5)
>>> run = dataclasses.replace(base, seed=43, output_dir="study/runs/v5/seed-43", learning_rate=3e-4)
>>> run.seed, run.flags, base.seed
(43, ('--preset', 'small'), 42)
>>> sorted(run.owned_flags() - TrainingJob.ALWAYS_OWNED)
['learning_rate', 'output_dir']
>>> TrainingJob(flags=("--preset", "small", "--learning_rate", "1e-3"), learning_rate=3e-4)
Traceback (most recent call last):
...
poolattn.training.job.JobError: the training flags --learning_rate are set by the job itself ...
"""

import dataclasses
import json
from dataclasses import dataclass


def flag_names(flags) -> set[str]:
    """The train.py fields a command line's flags name (`--learning-rate=1e-4` -> `learning_rate`).

    >>> sorted(flag_names(["--preset", "small", "--learning-rate=1e-4", "7"]))
    ['learning_rate', 'preset']
    """
    return {flag.split("=")[0].lstrip("-").replace("-", "_") for flag in flags if str(flag).startswith("--")}


def without_flags(flags, names: set[str]) -> tuple[str, ...]:
    """`flags` without those naming one of `names` (train.py fields), each with its value where it has one.

    >>> without_flags(["--seed", "1", "--max-steps", "5", "--save_steps=9", "--use_cpu"], {"max_steps", "save_steps"})
    ('--seed', '1', '--use_cpu')
    """
    kept, skipping = [], False
    for flag in map(str, flags):
        if flag.startswith("--"):
            skipping = flag_names([flag]) <= names
            if skipping:
                skipping = "=" not in flag  # its value follows it, unless given as --name=value
                continue
        elif skipping:
            skipping = False
            continue
        kept.append(flag)
    return tuple(kept)


class JobError(ValueError):
    """A job whose flags set what the job's own fields set; the message names the flags."""


@dataclass(frozen=True)
class TrainingJob:
    """One training run: one design, one seed, one output folder."""

    flags: tuple[str, ...] = ()  # the user's own train.py flags, as given
    variant: int | str = 5
    seed: int = 42
    output_dir: str | None = None
    model_name: str | None = None
    config_overrides: tuple = ()  # PoolAttnConfig fields (an arm's) as sorted (name, value) pairs; a dict is taken
    learning_rate: float | None = None  # None: the flags' (or train.py's default)
    head_learning_rate: float | None = None
    max_steps: int | None = None
    lr_schedule_steps: int | None = None  # the schedule of a longer run, of which this one trains the first steps
    save_steps: int | None = None  # checkpoints, and held-out evaluations when rows are held out
    eval_fraction: float | None = None
    per_device_eval_batch_size: int | None = None
    plateau_patience: int | None = None
    plateau_min_improvement: float | None = None
    load_best_model_at_end: bool | None = None  # True: export the checkpoint with the lowest held-out loss
    resume: bool = True  # continue from the last complete checkpoint; a finished run is kept

    # train.py flags a job always sets itself (one run into its own folder, never published from here)
    ALWAYS_OWNED = frozenset(
        {"variant", "seed", "seeds", "resume_from_checkpoint", "push_to_hub", "hub_dry_run", "overwrite_output_dir"}
    )

    def __post_init__(self):
        if isinstance(self.config_overrides, dict):
            object.__setattr__(self, "config_overrides", tuple(sorted(self.config_overrides.items())))
        object.__setattr__(self, "flags", tuple(self.flags))
        if clash := self.clashing_flags():
            raise JobError(
                f"the training flags {', '.join('--' + name for name in clash)} are set by the job itself "
                "(design, seed, folders, names, rates, steps, held-out rows); leave them out of the "
                "flags and set the job's fields (the study's own options) instead."
            )

    def owned_flags(self) -> set[str]:
        """train.py flags this job sets itself: the design, the seed, and every field it gives a value (with held-out
        rows, also where they come from and when they are scored)."""
        owned = set(self.ALWAYS_OWNED)
        for item in dataclasses.fields(self):
            if item.name not in ("flags", "resume", "variant", "seed") and getattr(self, item.name) not in (None, ()):
                owned.add(item.name)
        if self.eval_fraction is not None:
            owned |= {"eval_data", "eval_steps", "eval_strategy"}
        if self.load_best_model_at_end is not None:
            owned |= {"metric_for_best_model", "greater_is_better"}
        return owned

    def clashing_flags(self) -> list[str]:
        """The flags in `flags` that this job sets itself, sorted."""
        return sorted(flag_names(self.flags) & self.owned_flags())

    def argv(self) -> list[str]:
        """train.py's command line for this job (read by `training` only)."""
        argv = [*self.flags, "--variant", str(self.variant), "--seed", str(self.seed)]
        for name in (
            "output_dir",
            "model_name",
            "learning_rate",
            "head_learning_rate",
            "max_steps",
            "lr_schedule_steps",
            "save_steps",
            "eval_fraction",
            "per_device_eval_batch_size",
            "plateau_patience",
            "plateau_min_improvement",
        ):
            value = getattr(self, name)
            if value is not None:
                argv += [f"--{name}", f"{value:g}" if isinstance(value, float) else str(value)]
        if self.load_best_model_at_end is not None:
            argv += ["--load_best_model_at_end", str(self.load_best_model_at_end).lower()]
            argv += ["--metric_for_best_model", "eval_loss"] if self.load_best_model_at_end else []
        if self.config_overrides:
            argv += ["--config_overrides", json.dumps(dict(self.config_overrides))]
        if self.resume:
            argv += ["--resume_from_checkpoint", "true"]
        return argv
