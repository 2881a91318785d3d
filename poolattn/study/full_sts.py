"""The study's best row on its STS tasks in full (`--full-sts`): once every run is scored, the trained row with the
highest STS mean on the study's budget sample is scored on the whole of each of the study's STS tasks (no budget),
every seed of it and its untrained control, so that the study's headline number is one a reader can set beside
published STS scores, and the control beside it says how much of it training added.

The row is chosen on a sample of the same tasks, so its full-task mean is the score of the row the sample preferred,
not an unbiased estimate of its lead over the others (the report says so); its difference from its own control is
not chosen on anything. The scores are kept under the models' plain revision (no `-budget<N>`), apart from the
study's own."""

import logging
from pathlib import Path

from ..model_folder import weights_record
from .compare import RowResults, collect, compare_rows
from .plan import StudyError, StudyPlan
from .records import score_problems

logger = logging.getLogger(__name__)

CATEGORY = "STS"


def check_full_sts(plan: StudyPlan) -> None:
    """`--full-sts` asks for scores the study does not have already: refused without a budget (its scores are the
    full tasks' already) or without an STS task, before anything runs."""
    if not plan.full_sts:
        return
    if not plan.budget:
        raise StudyError(
            "--full-sts scores the best row on the full STS tasks, and this study scores every task in full already "
            "(--budget 0): leave --full-sts out, or give the study a --budget."
        )
    if not plan.sts_tasks():
        raise StudyError(
            "--full-sts scores the best row on the study's STS tasks, and its selection has none "
            f"({plan.tasks or plan.categories or plan.benchmark}): add STS tasks, or leave --full-sts out."
        )


def best_row(trained: list[RowResults], sts_tasks: list[str], seeds: int) -> RowResults | None:
    """The trained row (a design, a baseline or an arm; never a control) with the highest STS mean over its seeds on
    the study's sample, among the rows scored on every one of `sts_tasks` with all their `seeds` (a mean over fewer
    tasks or seeds is not comparable); None when no row is. Ties go to the first row of the plan."""
    candidates = [
        item
        for item in trained
        if item.row.kind != "control"
        and item.replicates is not None
        and len(item.replicates.runs) == seeds
        and set(sts_tasks) <= set(item.replicates.tasks)
    ]
    return max(candidates, key=lambda item: item.replicates.category_means()[CATEGORY], default=None)


def best_row_folders(plan: StudyPlan, output) -> list[Path]:
    """The model folders the full scoring scores: every seed of the best row and its untrained controls, but those
    copied without their weights (`study.py --copy-records`) whose full scores are not there already (they cannot be
    scored; named in a warning); [] and a warning when no row has every seed scored on every STS task."""
    best = best_row(collect(plan, output), plan.sts_tasks(), len(plan.seeds))
    if best is None:
        logger.warning("study: no row has every seed scored on every STS task of the study; nothing to score in full")
        return []
    logger.info(
        "study: %s has the best STS mean on the sample (%.4f, %d seeds): scoring it%s on the full STS tasks (%s)",
        best.row.label,
        best.replicates.category_means()[CATEGORY],
        len(best.replicates.runs),
        " and its untrained control" if best.control_models else "",
        ", ".join(plan.sts_tasks()),
    )
    full = plan.full_sts_plan()
    folders = [model.folder for model in (*best.models, *best.control_models)]
    weightless = [
        folder
        for folder in folders
        if weights_record(folder) is not None
        and score_problems(full, folder, output, selection=full.selection(), instructions=True)
    ]
    if weightless:
        logger.warning(
            "study: not scored on the full STS tasks, copied without their weights (--copy-records): %s; put their "
            "weights back (from the study folder the records came from) to score them",
            ", ".join(map(str, weightless)),
        )
    return [folder for folder in folders if folder not in weightless]


def full_sts_section(plan: StudyPlan, output) -> list[str]:
    """The report's section: the best row (as chosen now) on the full STS tasks beside its control, per task and on
    the mean, with the paired bootstrap of trained vs untrained on these tasks."""
    if not plan.full_sts:
        return []
    lines = ["## The best row on the full STS tasks (no budget)", ""]
    full = plan.full_sts_plan()
    best = best_row(collect(plan, output), plan.sts_tasks(), len(plan.seeds))  # the row chosen now, not an earlier one
    rows = [item for item in collect(full, output) if best and item.row.key == best.row.key and item.replicates]
    if best is None:
        return [*lines, "Not scored yet: it runs once every row of the study is trained and scored.", ""]
    if not rows:
        return [
            *lines,
            f"{best.row.label} has the best STS mean on the sample so far; not scored on the full tasks yet: it is "
            "once every row is trained and scored (models copied without their weights, `--copy-records`, cannot "
            "be: put their weights back and run the study again).",
            "",
        ]
    tasks = full.tasks
    lines += [
        f"Chosen as the trained row with the highest STS mean on the study's sample (`--budget {plan.budget}`) of "
        f"these same tasks, then scored on every pair of {', '.join(tasks)}: its mean here is the score of the row "
        "the sample preferred, not an unbiased estimate of its lead over the other rows"
        + (
            "; its difference from its own untrained control (step 0) is chosen on nothing."
            if plan.controls
            else " (the study scored no untrained controls: `--controls` sets the row beside its step 0)."
        ),
        "",
    ]
    from ..stats import markdown_table

    table, tests = [], []
    for item in rows:
        for entry in (item, item.control()):
            if entry.replicates is not None:
                table.append(_table_row(entry, tasks))
        if item.control().replicates is not None:
            found, _ = compare_rows(item, item.control(), "trained vs untrained, full STS tasks")
            tests += [test for test in found if test.category == CATEGORY]
    lines += [markdown_table(["row", "seeds", *tasks, "STS mean"], table), ""]
    for test in tests:
        lines += [f"Trained minus untrained, {test.a}, paired bootstrap over pairs and seeds: {test.cell()}.", ""]
    return lines


def _table_row(item: RowResults, tasks: list[str]) -> list:
    """A row's cells: each task's mean over seeds (± sample sd), and the STS mean (blank where a task is missing)."""
    replicates = item.replicates

    def cell(task: str) -> str | None:
        if task not in replicates.tasks:
            return None
        spread = replicates.spread(task)
        return f"{replicates.scores[task]:.4f}" + (f" ± {spread:.4f}" if spread is not None else "")

    mean = replicates.category_means().get(CATEGORY) if set(tasks) <= set(replicates.tasks) else None
    return [item.row.label, len(replicates.runs), *map(cell, tasks), None if mean is None else f"{mean:.4f}"]
