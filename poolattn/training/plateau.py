"""Training to a plateau: one stated stopping rule on the held-out loss, the same for every run of a study.

The rule: evaluate the held-out rows every `eval_steps`; stop when the held-out contrastive loss has not improved on
its best so far by more than `min_improvement` (a fraction of that best) for `patience` evaluations in a row, or at
the cap (`max_steps`), whichever comes first.

>>> history = [{"step": 10, "eval_loss": 2.0}, {"step": 20, "eval_loss": 1.5}, {"step": 30, "eval_loss": 1.49},
...            {"step": 40, "eval_loss": 1.495}]
>>> plateau_step(history, patience=2, min_improvement=0.01)
40
>>> plateau_step(history[:3], patience=2, min_improvement=0.01) is None
True

The rule reads only the evaluations in the Trainer's `log_history`, which a checkpoint keeps, so a resumed run stops
where the uninterrupted one did, and a checkpoint written at the plateau counts as finished.
"""

from dataclasses import dataclass

from transformers import TrainerCallback


def plateau_step(
    log_history: list[dict], *, patience: int, min_improvement: float, metric: str = "eval_loss"
) -> int | None:
    """The step of the evaluation at which the rule stops training (the first one), or None if it has not."""
    best, waited = None, 0
    for entry in log_history:
        if metric not in entry:
            continue
        value = entry[metric]
        if best is None or value < best - min_improvement * abs(best):
            best, waited = value, 0
        else:
            waited += 1
            if waited >= patience:
                return entry["step"]
        best = min(best, value)
    return None


def evaluations_within(max_steps: int, every: int) -> int:
    """How many held-out evaluations a run of `max_steps` steps makes, one every `every` steps and one at its last
    step (the Trainer evaluates there too). A rule of patience N stops a run at the earliest at evaluation N + 1.

    >>> evaluations_within(30, 10), evaluations_within(25, 10), evaluations_within(4, 50)
    (3, 3, 1)
    """
    return max_steps // every + (max_steps % every > 0)


@dataclass(frozen=True)
class PlateauRule:
    """`--plateau_patience` evaluations without a relative improvement of the held-out loss by more than
    `--plateau_min_improvement`."""

    patience: int
    min_improvement: float

    def describe(self, every: int | None = None, cap: int | None = None) -> str:
        """
        >>> PlateauRule(3, 0.01).describe(every=20, cap=600)  # doctest: +NORMALIZE_WHITESPACE
        'stop when the held-out loss has not improved on its best by more than 1% for 3 evaluations in a row (one
         every 20 steps), or at 600 steps'
        """
        text = (
            f"stop when the held-out loss has not improved on its best by more than {self.min_improvement:.0%} "
            f"for {self.patience} evaluations in a row"
        )
        if every:
            text += f" (one every {every} steps)"
        return text + (f", or at {cap} steps" if cap else "")

    def step(self, log_history: list[dict]) -> int | None:
        return plateau_step(log_history, patience=self.patience, min_improvement=self.min_improvement)


class PlateauStopping(TrainerCallback):
    """Stops the Trainer once `rule` says the held-out loss has reached its plateau (after that evaluation's
    checkpoint is written, as evaluations run at save steps)."""

    def __init__(self, rule: PlateauRule):
        self.rule = rule

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.rule.step(state.log_history) is not None:
            control.should_training_stop = True
            control.should_save = True
