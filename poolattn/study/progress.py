"""A study's progress: "step k of N" with the elapsed time and an ETA over its stages, from the first step of a
resumed study on (the wall times its records give), and what ran now, what resumed, what was done already."""

import logging
import time
from pathlib import Path

from .compare import collect, scoring_seconds
from .plan import StudyPlan, StudyRow
from .tuning import read_tuning

logger = logging.getLogger("poolattn.study.runner")  # the study's log, as before the progress had a module


class StudyProgress:
    """ "step k of N" with the elapsed time and an ETA for the study's stages (tuning counts one step per row), and an
    honest summary: what ran now, what continued from a checkpoint, what was done already.

    A step is a stage's work with its scoring (a control's, a run's); its cost is the wall time since the step
    before it ended, so what runs between steps is counted too; the ETA is each stage's mean cost over the steps that
    ran whole (a step resumed from a checkpoint cost only its rest), here or, for a study resumed, as its records give
    them (`recorded`: `recorded_costs`), times the steps of that stage left, and waits for a stage's first such step
    rather than guess it."""

    def __init__(
        self,
        plan: StudyPlan,
        stages=("tuning", "control", "training"),
        recorded: dict | None = None,
        done: dict | None = None,
    ):
        runs = len(plan.rows) * len(plan.seeds)
        controls = len(plan.rows) * sum(plan.has_control(seed) for seed in plan.seeds)
        self.left = {"tuning": len(plan.rows) if plan.tuning else 0, "control": controls}
        self.left["training"] = runs
        self.left["full STS"] = 1 if plan.full_sts else 0  # the best row and its control on the full STS tasks
        stages = (*stages, "full STS") if "training" in stages else stages  # after the runs (not with tuning alone)
        self.left = {stage: count if stage in stages else 0 for stage, count in self.left.items()}
        self.total = sum(self.left.values())
        # the steps the folder holds done already (`runner.steps_done`): never in the ETA, stepped past as they come
        self.done_before = {stage: min((done or {}).get(stage, 0), count) for stage, count in self.left.items()}
        self.left = {stage: count - self.done_before[stage] for stage, count in self.left.items()}
        self.done, self.started, self.last_end = 0, time.time(), time.time()
        self.costs: dict[str, list[float]] = {stage: list((recorded or {}).get(stage, [])) for stage in self.left}
        self.counts = {"ran now": 0, "resumed": 0, "done already": 0}

    def step(self, stage: str, row: StudyRow | None, seed: int | None, work, *, state):
        """Run `work()`; `state` is what was found before it ran: "done already", "resumed" or "ran now" (or a
        function of `work`'s result that says so, where only the result tells, as for tuning). A step of no one row
        and seed (the full STS scoring) has None for both."""
        self.done += 1
        begun = time.time()
        result = work()
        now = time.time()
        state = state(result) if callable(state) else state
        self.counts[state] += 1
        if state == "done already" and self.done_before[stage] > 0:
            self.done_before[stage] -= 1  # left out of `left` from the start
        else:
            self.left[stage] -= 1
        if state == "ran now":
            self.costs[stage].append(now - self.last_end)
        self.last_end = now
        logger.info(
            "study: step %d of %d: %s%s: %s in %.0f s; elapsed %.0f s%s",
            self.done,
            self.total,
            stage,
            f", {row.label}, seed {seed}" if row is not None else "",
            state,
            now - begun,
            now - self.started,
            self.eta(),
        )
        return result

    def eta(self) -> str:
        left = {stage: count for stage, count in self.left.items() if count > 0}
        if not left:
            return ""
        unmeasured = [stage for stage in left if not self.costs[stage]]
        if unmeasured and unmeasured != ["full STS"]:  # the last step, measured by none before it
            return f", ETA once a {unmeasured[0]} step has run"
        measured = {stage: count for stage, count in left.items() if self.costs[stage]}
        seconds = sum(count * sum(self.costs[stage]) / len(self.costs[stage]) for stage, count in measured.items())
        return f", ETA {seconds / 60:.0f} min" + (" and the full STS scoring" if unmeasured else "")

    def summary(self) -> str:
        return (
            f"{self.done} steps in {time.time() - self.started:.0f} s: {self.counts['ran now']} ran now, "
            f"{self.counts['resumed']} resumed from a checkpoint, {self.counts['done already']} done already "
            "(scoring: finished tasks are not scored again)"
        )


def recorded_costs(plan: StudyPlan, output) -> dict[str, list[float]]:
    """The wall time of each step the study's records hold, by stage: a row's tuning (its proxy points' training),
    a control's scoring, a run's training and scoring (the STS without instructions too, for a row of the instruction
    check), as the report's wall-time section counts them (loading and export not counted: a little low)."""
    try:
        return _recorded_costs(plan, Path(output))
    except (ValueError, OSError) as error:  # a damaged record: the study scores or trains it again; no ETA from it
        logger.warning("study: no ETA from the records (%s); one comes once a step of each stage has run", error)
        return {}


def _recorded_costs(plan: StudyPlan, output: Path) -> dict[str, list[float]]:
    costs: dict[str, list[float]] = {"tuning": [], "control": [], "training": []}
    if plan.tuning:
        costs["tuning"] = [
            sum(point.train_runtime_s or 0.0 for point in row.points)
            for row in read_tuning(output).values()
            if row.choice is not None
        ]

    for item in collect(plan, output):
        costs["control"] += [seconds for _, seconds in scoring_seconds(item.controls)]
        scored, plain = dict(scoring_seconds(item.replicates)), dict(scoring_seconds(item.without_instructions))
        costs["training"] += [
            (model.manifest.train_runtime_s or 0.0) + scored[model.manifest.seed] + plain.get(model.manifest.seed, 0.0)
            for model in item.models
            if model.manifest.seed in scored
        ]
    return costs
