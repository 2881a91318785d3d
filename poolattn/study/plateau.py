"""The rule every run of a study trains to (`study.py --plateau`): until the held-out loss stops improving
(`training.plateau.PlateauRule`), with a cap; the report gives the steps each run took and why it stopped."""

from dataclasses import dataclass


@dataclass
class PlateauSettings:
    """How every row's runs are trained after tuning: to the plateau of the held-out loss, with a cap; the model
    exported is the checkpoint with the lowest held-out loss (`exported="best"`) or the run's last step ("last")."""

    patience: int = 3
    min_improvement: float = 0.01
    eval_steps: int = 20
    max_steps: int = 300
    eval_fraction: float = 0.01
    eval_batch_size: int = 16
    exported: str = "best"

    EXPORTED = ("best", "last")

    def __post_init__(self):
        if self.exported not in self.EXPORTED:
            raise ValueError(f"plateau export {self.exported!r}: give one of {', '.join(self.EXPORTED)}.")

    def check(self) -> None:
        """Refuse, when a study is planned (before any tuning or training), settings its runs would refuse or that
        make the rule inert: study.py's flags by name. (A recorded plan is read back without this check.)"""
        from ..training.plateau import evaluations_within

        counts = {
            "--plateau-patience": self.patience,
            "--plateau-eval-steps": self.eval_steps,
            "--plateau-max-steps": self.max_steps,
            "--held-out-batch-size": self.eval_batch_size,
        }
        if bad := [f"{flag} {value}" for flag, value in counts.items() if value < 1]:
            raise ValueError(f"{', '.join(bad)}: give whole numbers >= 1.")
        if not 0 <= self.min_improvement < 1 or not 0 < self.eval_fraction < 1:
            raise ValueError(
                f"--plateau-min-improvement {self.min_improvement} / --held-out-fraction {self.eval_fraction}: give "
                "a fraction in [0, 1) (0.01 = 1%) and one in (0, 1) (the training rows held out)."
            )
        count = evaluations_within(self.max_steps, self.eval_steps)
        if count < self.patience + 1:
            raise ValueError(
                f"--plateau-patience {self.patience} needs {self.patience + 1} held-out evaluations to stop a run, "
                f"but one every --plateau-eval-steps {self.eval_steps} within --plateau-max-steps {self.max_steps} "
                f"makes {count}, so the rule could never act; lower --plateau-eval-steps or raise --plateau-max-steps."
            )

    def job_fields(self) -> dict:
        """The `jobs.TrainingJob` fields of a run trained to the plateau."""
        return {
            "plateau_patience": self.patience,
            "plateau_min_improvement": self.min_improvement,
            "save_steps": self.eval_steps,
            "max_steps": self.max_steps,
            "eval_fraction": self.eval_fraction,
            "per_device_eval_batch_size": self.eval_batch_size,
            "load_best_model_at_end": True if self.exported == "best" else None,
        }

    def describe_export(self) -> str:
        return (
            "the model exported is the run's checkpoint with the lowest held-out loss"
            if self.exported == "best"
            else "the model exported is the run's last step"
        )
