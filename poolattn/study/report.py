"""The study's report: `report/study.md` (main table, the paper's comparisons, prompts, recipe, wall time, figures),
its CSVs and figures, and the section a model card carries."""

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .. import plots
from ..evaluation.comparison import write_csv
from ..evaluation.pairing import seeds_paired, task_parts
from ..evaluation.results import category_rank, mean
from ..files import write_text
from .compare import RowResults, collect, compare_rows, on_shared_seeds
from .full_sts import full_sts_section
from .plan import CONTROL_SUFFIX, StudyError, StudyPlan, comparisons
from .recipe_report import recipe_sections, wall_time_section
from .tuning import read_tuning

logger = logging.getLogger(__name__)


TEST_COLUMNS = (
    "a",
    "b",
    "question",
    "category",
    "tasks",
    "a score",
    "b score",
    "difference",
    "95% low",
    "95% high",
    "bootstrap p",
    "bootstrap p (Holm)",
    "marker",
    "wilcoxon p",
    "a seeds",
    "b seeds",
)


TEST_METHOD = (
    "Each cell: the difference of category means (row a − row b), its 95% interval, and the marker of the "
    "category-level **paired bootstrap** (`paired.pooled_bootstrap`: the difference of category means recomputed "
    "in every resample from each task's predictions with its own metric; the units of every task in the category — "
    "pairs, queries, examples, texts (clustering sets half-sampled) — resampled, the same sample for both rows, and "
    "each row's seeds drawn with replacement, one draw for both where their seeds match; 1000 resamples; 95% "
    "percentile interval; two-sided p; Holm over the categories of each comparison; on the seeds both rows have, so "
    "a row with more seeds than the other is compared on the other's, `a seeds`/`b seeds` in `study_tests.csv`): ▲ "
    "row a significantly better, ▼ row b significantly better (p_Holm < 0.05), none: no significant difference. Why "
    "this test: the paper's Wilcoxon signed-rank over datasets cannot reach p < 0.05 with 5 or fewer datasets per "
    "category; its p is in `study_tests.csv` (column `wilcoxon p`)."
)


def seed_note(tests: list) -> str:
    """What the intervals hold of the training noise, for each count of seeds the tests rest on (the fewer of the two
    rows'; a test against an untrained control rests on its trained row's seeds, the control being one run)."""
    by_count: dict[int, int] = {}
    for test in tests:
        sides = [test.seeds_a] + ([] if test.b.endswith(CONTROL_SUFFIX) else [test.seeds_b])
        by_count[min(sides)] = by_count.get(min(sides), 0) + 1
    notes = []
    for seeds, count in sorted(by_count.items()):
        said = _seed_words(seeds)
        if said and len(by_count) > 1:
            said = f"Comparisons on {seeds} seed{'s' if seeds > 1 else ''} of a row ({count} of {len(tests)}): {said}"
        notes += [said] if said else []
    return " ".join(notes)


def _seed_words(seeds: int) -> str:
    if seeds == 1:
        return (
            "With one seed of a row, its interval holds the test-set noise only, not the training (seed) noise: a "
            "marker then says that these trained models differ on this sample, not yet that the designs do."
        )
    if seeds > 1:
        share = ((seeds - 1) / seeds) ** 0.5
        return (
            f"With {seeds} seeds the bootstrap sees about {share:.2f} of the seed spread (a bootstrap over n seeds "
            "sees (n-1)/n of their variance): read a marker that rests on the seeds with care."
        )
    return ""


@dataclass
class StudyReport:
    """The written report, and every score it had to leave out: a task some seed of a row, or a whole row, lacks
    (its means then average fewer tasks than the other rows'), or a task a test could not use."""

    path: Path
    left_out: list[str] = field(default_factory=list)


def write_report(output) -> StudyReport:
    """`report/study.md` (+ CSVs and the figure) from what has been trained and scored so far."""
    output = Path(output)
    plan = StudyPlan.read(output)
    trained_rows = collect(plan, output)
    collected = [
        entry
        for item in trained_rows
        for entry in (item, item.control())
        if entry.row.kind != "control" or entry.replicates is not None
    ]
    scored = [item for item in collected if item.replicates is not None]
    if not scored:
        raise StudyError(f"{output}: nothing of this study has been scored yet; run it first.")
    categories = sorted(
        {category for item in scored for category in item.replicates.categories.values()}, key=category_rank
    )
    report_folder = output / "report"
    report_folder.mkdir(parents=True, exist_ok=True)
    tests, untested = _row_tests(plan, collected)
    left_out = [*_scores_left_out(scored, plan.tasks), *untested]
    lines = [
        *_header(plan, trained_rows, scored, categories),
        *_left_out_section(left_out),
        *_main_table(scored, categories),
        *_comparison_section(tests, categories),
        *_changes(output, tests),
        *_instruction_section(plan, trained_rows),
        *full_sts_section(plan, output),
        *recipe_sections(plan, output, trained_rows, report_folder),
        *wall_time_section(trained_rows, read_tuning(output) if plan.tuning else {}),
        *_figures(plan, scored, categories, report_folder),
    ]
    write_text(report_folder / "study.md", "\n".join(lines))
    _write_tables(report_folder, scored, categories, tests)
    logger.info("study report (first seed %d): %s", min(plan.seeds), report_folder / "study.md")
    return StudyReport(report_folder / "study.md", left_out)


def _scores_left_out(scored: list[RowResults], planned: list[str] | None) -> list[str]:
    """Tasks the study names that no row has a score for, tasks some seeds of a row lack, and tasks another row has
    but a row lacks for every seed."""
    every = set().union(*(item.replicates.tasks for item in scored))
    anywhere = set().union(*(run.scores for item in scored for run in item.replicates.runs))
    found = [f"every row: no score for {task}" for task in planned or [] if task not in anywhere]
    for item in scored:
        lacking = item.replicates.left_out
        found += [f"{item.row.label}: {task} ({why})" for task, why in lacking.items()]
        missing = sorted(every - set(item.replicates.tasks) - set(lacking))
        found += [f"{item.row.label}: no score for {task}" for task in missing]
    return found


def _left_out_section(left_out: list[str]) -> list[str]:
    if not left_out:
        return []
    return [
        "## Left out",
        "",
        "These scores are missing, so the means or tests named average fewer tasks than the rest of the report: "
        + "; ".join(left_out)
        + ". Score them (the same study.py command scores only what is missing) before reading those rows.",
        "",
    ]


def _changes(output: Path, tests: list) -> list[str]:
    """The "what changed" section, where the study folder holds an earlier study's tests (`--previous-tests`)."""
    from .changes import EARLIER_TESTS_FILE, changes_section, read_earlier_tests

    path = output / EARLIER_TESTS_FILE
    return changes_section(read_earlier_tests(path), tests, EARLIER_TESTS_FILE) if path.is_file() else []


def _row_tests(plan: StudyPlan, collected: list[RowResults]) -> tuple[list, list[str]]:
    """The category tests of every comparison whose two rows are both scored, and the tasks a test left out (why)."""
    by_key = {item.row.key: item for item in collected}
    tests, untested = [], []
    for key_a, key_b, question in comparisons(plan):
        a, b = by_key.get(key_a), by_key.get(key_b)
        if a is not None and b is not None and a.replicates is not None and b.replicates is not None:
            found, skipped = compare_rows(a, b, question)
            tests += found
            untested += [f"{key_a} vs {key_b}: {task} left out of the test ({why})" for task, why in skipped.items()]
    return tests, untested


def _header(plan: StudyPlan, trained_rows: list[RowResults], scored: list[RowResults], categories) -> list[str]:
    """The title, the recipe in one paragraph, the tasks per category and what is not scored yet."""
    missing = []
    for item in trained_rows:  # the seeds scored: a run trained but not yet scored is not in the table either
        if lacking := sorted(set(plan.seeds) - set(item.replicates.seeds if item.replicates else [])):
            missing.append(f"{item.row.label} (seed{'s' if len(lacking) > 1 else ''} {', '.join(map(str, lacking))})")
    task_counts = {
        category: sorted(
            {task for item in scored for task, kind in item.replicates.categories.items() if kind == category}
        )
        for category in categories
    }
    scoring = (
        f"Every task scored on at most {plan.budget} units (`--budget {plan.budget}`, the same seeded sample for "
        "every row): comparable between rows, not with published MTEB numbers."
        if plan.budget
        else "Full tasks (no budget)."
    )
    return [
        "# The study: pooling and attention designs, per category",
        "",
        f"Backbone `{plan.backbone}`; training flags `{' '.join(plan.train_argv) or '(train.py defaults)'}`; seeds "
        f"{', '.join(map(str, plan.seeds))} (seed s gives every row the same data order). " + scoring,
        "",
        "Tasks per category: "
        + "; ".join(f"{category} ({len(names)}): {', '.join(names)}" for category, names in task_counts.items())
        + ".",
        "",
        *(
            [f"Not yet trained or scored: {'; '.join(missing)}. Rows average the seeds they have.", ""]
            if missing
            else []
        ),
    ]


def _cell(item: RowResults, category: str) -> str | None:
    means, spreads = item.replicates.category_means(), item.replicates.category_spread()
    if category not in means:
        return None
    spread = spreads.get(category)
    return f"{means[category]:.4f}" + (f" ± {spread:.4f}" if spread is not None else "")


def _main_table(scored: list[RowResults], categories) -> list[str]:
    from ..stats import markdown_table

    rows = []
    every_task = set().union(*(item.replicates.tasks for item in scored))
    for item in scored:
        means = item.replicates.category_means()
        # a row that lacks a task another row has (a category, or one task of one) has no average comparable with
        # the others' (its left-out tasks are named above the table)
        average = mean([means[c] for c in categories]) if set(item.replicates.tasks) >= every_task else None
        rows.append([item.row.label, len(item.replicates.runs), *[_cell(item, c) for c in categories], average])
    return [
        "## Main table (mean main score per category, ± sample sd over seeds)",
        "",
        markdown_table(["design", "seeds", *categories, "average"], rows),
        "",
    ]


def _comparison_section(tests: list, categories) -> list[str]:
    from ..stats import markdown_table

    method = f"{TEST_METHOD} {seed_note(tests)}".strip()
    lines = ["## The paper's comparisons, the baselines and the ablations", "", method, ""]
    if not tests:
        return [*lines, "No comparison has both rows scored yet.", ""]
    rows = []
    for key_a, key_b, question in dict.fromkeys((test.a, test.b, test.question) for test in tests):
        cells = {test.category: test for test in tests if (test.a, test.b) == (key_a, key_b)}
        rows.append([f"{key_a} vs {key_b}", question, *[cells[c].cell() if c in cells else None for c in categories]])
    return [*lines, markdown_table(["a vs b", "question", *categories], rows), ""]


def _figures(plan: StudyPlan, scored: list[RowResults], categories, report_folder: Path) -> list[str]:
    lines = ["## Figures", ""]
    for name, (title, group) in figure_groups(scored, plan.ablation_base).items():
        bars = [
            plots.Bars(
                item.row.label, item.row.kind, item.replicates.category_means(), item.replicates.category_spread()
            )
            for item in group
        ]
        plots.study_bars(report_folder / name, bars, categories, title)
        lines += [f"![{title}]({name})", ""]
    return [
        *lines,
        "Bars: mean main score per category; whiskers: ± sample sd over seeds"
        + ("; open bars: the row untrained (step 0)." if plan.controls else "."),
        "",
    ]


def _write_tables(report_folder: Path, scored: list[RowResults], categories, tests: list) -> None:
    """`study_table.csv` (row x category), `study_tests.csv` (every category test), `per_task.csv` (seed x task)."""
    table = []
    for item in scored:
        means, spreads = item.replicates.category_means(), item.replicates.category_spread()
        table += [
            [
                item.row.key,
                item.row.label,
                item.row.kind,
                category,
                means.get(category),
                spreads.get(category),
                len(item.replicates.runs),
                sum(kind == category for kind in item.replicates.categories.values()),
            ]
            for category in categories
        ]
    write_csv(
        report_folder / "study_table.csv",
        ["row", "label", "kind", "category", "mean", "seed sd", "seeds", "tasks"],
        table,
    )
    test_rows = [
        [t.a, t.b, t.question, t.category, t.tasks, t.score_a, t.score_b, t.difference, t.low, t.high]
        + [t.p_value, t.p_holm, t.marker, t.wilcoxon_p, t.seeds_a, t.seeds_b]
        for t in tests
    ]
    write_csv(report_folder / "study_tests.csv", list(TEST_COLUMNS), test_rows)
    per_task = [
        [item.row.key, seed, task, item.replicates.categories[task], run.scores[task]]
        for item in scored
        for seed, run in zip(item.replicates.seeds, item.replicates.runs)
        for task in item.replicates.tasks
    ]
    write_csv(report_folder / "per_task.csv", ["row", "seed", "task", "category", "score"], per_task)


def _instruction_section(plan: StudyPlan, collected: list[RowResults]) -> list[str]:
    """Which rows used query instructions in training and evaluation, and STS with and without them at evaluation."""
    from ..stats import markdown_table

    trained_with = [_training_instructions(item) for item in collected if item.models]
    lines = [
        "## Prompts",
        "",
        "Every row is trained and scored with the same instruction policy: in training, "
        + "; ".join(trained_with)
        + ". In evaluation every row gets the e5-style task instruction on queries and on symmetric "
        "tasks (`Instruct: {instruction}\\nQuery: `), documents none (`prompts.TASK_INSTRUCTIONS`). The "
        "instruction is part of every design here, not of one.",
        "",
    ]
    by_key = {item.row.key: item for item in collected}
    rows = [row for key in plan.instruction_check if (row := _instruction_test_row(by_key.get(key)))]
    if rows:
        lines += [
            "STS (mean over its tasks) of the same trained models with the instruction and without it at "
            "evaluation; paired bootstrap over pairs and seeds (the same seed's model in both settings):",
            "",
            markdown_table(
                ["design", "STS tasks", "with instruction", "without", "difference", "95% interval", "p"], rows
            ),
            "",
        ]
    return lines


def _training_instructions(item: RowResults) -> str:
    data = item.models[0].manifest.data
    instructed = [source.get("name") for source in data.sources if source.get("instruction")]
    if data.query_instruction and not instructed:
        return f"{item.row.key}: query instruction on every query ({data.query_instruction!r})"
    otherwise = f", else {data.query_instruction!r}" if data.query_instruction else ""
    return f"{item.row.key}: per-source instructions on {len(instructed)} of {len(data.sources)} sources{otherwise}"


def _instruction_test_row(item: RowResults | None) -> list | None:
    """STS with vs without the instruction at evaluation, for one row scored both ways; None otherwise."""
    from ..evaluation import paired

    if item is None or item.replicates is None or item.without_instructions is None:
        return None
    with_instructions, without = on_shared_seeds(item.replicates, item.without_instructions)
    found, _ = task_parts(with_instructions, without)
    sts = [entry for entry in found if entry.category == "STS"]
    if not sts:
        return None
    parts = [part for entry in sts for part in entry.parts.values()]
    weights = [1 / len(entry.parts) for entry in sts for _ in entry.parts]
    test = paired.pooled_bootstrap(
        parts, weights=weights, paired_seeds=seeds_paired(with_instructions, without), task="STS"
    )
    interval = f"[{test.low:+.4f}, {test.high:+.4f}]"
    return [item.row.label, len(sts), test.score_a, test.score_b, test.difference, interval, test.p_value]


def figure_groups(scored: list[RowResults], base_key: str = "v5") -> dict[str, tuple[str, list]]:
    """The report's figures, file name -> (title, rows): the designs and baselines in `study.png`; with ablation
    arms, their base row (`base_key`) and the arms in `study_ablation.png` (a dozen bars per category are
    unreadable)."""

    def of_arm(item: RowResults) -> bool:
        return item.row.kind == "arm" or item.row.key.startswith("arm-")  # an arm, or an arm's control

    designs = [item for item in scored if not of_arm(item)]
    arm_rows = [item for item in scored if of_arm(item)]
    groups = {"study.png": ("Designs per category (± sd over seeds)", designs)}
    if arm_rows:
        base = [item for item in scored if item.row.key in (base_key, base_key + CONTROL_SUFFIX)]
        groups["study_ablation.png"] = (
            f"{base_key} and its ablation arms per category (± sd over seeds)",
            base + arm_rows,
        )
    return {name: group for name, group in groups.items() if group[1]}
