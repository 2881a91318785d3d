"""The section a published model card carries when the model is one of a study's runs: the study's table (its row in
bold) and the comparisons its row is part of, read from the written report."""

import math
from pathlib import Path

from ..model_folder import ExportedModel
from .compare import collect
from .plan import StudyError, StudyPlan


def card_section(output, model) -> str:
    """Markdown for the card of `model` (an `ExportedModel` or its folder), one of the study's runs: the study's
    table (this row in bold) and the comparisons this row is part of, from the written report (`write_report`).
    Raises `StudyError` when the model is not one of the study's runs or the report is missing."""
    import csv

    from ..stats import markdown_table

    output = Path(output)
    model = model if isinstance(model, ExportedModel) else ExportedModel.read(model)
    plan = StudyPlan.read(output)
    collected = collect(plan, output)
    row = _row_of(collected, output, model)
    report = output / "report"
    if not (report / "study_table.csv").is_file():
        raise StudyError(f"{output}: the study has no report yet; write it with `study.py --report {output}`.")
    with (report / "study_table.csv").open() as handle:
        table = list(csv.DictReader(handle))
    _check_report_current(output, collected, table)
    with (report / "study_tests.csv").open() as handle:
        tests = [test for test in csv.DictReader(handle) if row.key in (test["a"], test["b"])]
    categories = list(dict.fromkeys(entry["category"] for entry in table))
    labels = list(dict.fromkeys(entry["label"] for entry in table))

    def cell(label: str, category: str) -> str | None:
        entry = next((e for e in table if e["label"] == label and e["category"] == category and e["mean"]), None)
        if entry is None:
            return None
        spread = f" ± {float(entry['seed sd']):.4f}" if entry["seed sd"] else ""
        return f"{float(entry['mean']):.4f}{spread}"

    def seeds(label: str) -> str:
        return str(max((int(e["seeds"]) for e in table if e["label"] == label and e["mean"]), default=0))

    rows = [
        [f"**{label}**" if label == row.label else label, seeds(label), *[cell(label, c) for c in categories]]
        for label in labels
    ]
    budget = (
        f"every task on at most {plan.budget} units (the same sample for every row), so not comparable with "
        "published MTEB numbers"
        if plan.budget
        else "full tasks"
    )
    lines = [
        f"This model is the row **{row.label}** (seed {model.manifest.seed}) of a poolattn study of "
        f"{len(plan.rows)} designs on `{plan.backbone}`, {_recipe(plan)}, seeds "
        f"{', '.join(map(str, plan.seeds))} planned, scored on {budget}. The rows and seeds scored when its report "
        "was written; mean main score per category, ± sample sd over seeds:",
        "",
        markdown_table(["design", "seeds", *categories], rows),
        "",
    ]
    return "\n".join(lines + _card_tests(tests))


def _recipe(plan: StudyPlan) -> str:
    """How the study's rows were trained, in words for the card."""
    flags = f"flags `{' '.join(plan.train_argv) or 'train.py defaults'}`"
    if plan.tuning:
        flags += ", each row with its own rates tuned on held-out training rows"
    if plan.plateau:
        flags += ", trained to a plateau of its held-out loss"
    return f"every row trained with the same {flags}"


def _row_of(collected: list, output: Path, model: ExportedModel):
    """The study row one of whose runs has these weights; a `StudyError` when none has."""
    for item in collected:
        if any(run.fingerprint == model.fingerprint for run in item.models):
            return item.row
    raise StudyError(
        f"{model.folder} is not one of the runs of the study in {output} (no run there has these "
        "weights); publish it without --study, or give the study it was trained in."
    )


def _check_report_current(output: Path, collected: list, table: list[dict]) -> None:
    """Raise `StudyError` unless `report/study_table.csv` holds the category means and seed counts of the results
    on disk now (`collected`): a report written before seeds were scored, or before results changed, is stale."""
    now = {
        (entry.row.key, category): (value, len(entry.replicates.runs))
        for item in collected
        for entry in (item, item.control())
        if entry.replicates is not None
        for category, value in entry.replicates.category_means().items()
    }
    written = {(e["row"], e["category"]): (float(e["mean"]), int(e["seeds"])) for e in table if e["mean"]}
    stale = sorted(
        key
        for key in now.keys() | written.keys()
        if key not in now
        or key not in written
        or now[key][1] != written[key][1]
        or not math.isclose(now[key][0], written[key][0], rel_tol=1e-9, abs_tol=1e-12)
    )
    if stale:
        rows = ", ".join(dict.fromkeys(key for key, _ in stale))
        raise StudyError(
            f"{output}: the report is older than the results ({rows}: means or seeds differ from what is scored "
            f"now); write it again with `study.py --report {output}`, then publish."
        )


def _card_tests(tests: list[dict]) -> list[str]:
    """The card's table of the comparisons a row is part of (rows of `study_tests.csv`)."""
    from ..stats import markdown_table

    lines = []
    if tests:
        lines += [
            "Comparisons with this row: difference of category means (a − b), 95% interval and Holm-corrected "
            "p of the category-level paired bootstrap (units of every task and seeds resampled); ▲/▼: a/b "
            "significantly better.",
            "",
            markdown_table(
                ["a vs b", "category", "difference", "95% interval", "p (Holm)", ""],
                [
                    [
                        f"{t['a']} vs {t['b']}",
                        t["category"],
                        float(t["difference"]),
                        f"[{float(t['95% low']):+.4f}, {float(t['95% high']):+.4f}]",
                        float(t["bootstrap p (Holm)"]),
                        t["marker"],
                    ]
                    for t in tests
                ],
            ),
            "",
        ]
    return lines
