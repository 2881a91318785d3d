"""`evaluate.py compare`: models side by side per task and category, Wilcoxon by category and the paired tests within
each task against a baseline, as `comparison.md`, CSVs and a figure."""

import csv
from dataclasses import dataclass, field
from pathlib import Path

from .. import plots
from ..files import folder_lock, write_text
from .compared_runs import load_compared_runs
from .pairing import paired_tests
from .replicates import group_replicates
from .requests import EvaluationError
from .results import category_rank, mean


@dataclass
class Comparison:
    """The written comparison: the report's text and the files beside it."""

    report: str
    files: list[Path]
    left_out: list[str] = field(default_factory=list)  # scores some model lacks, so means average fewer tasks


@dataclass
class ComparedModels:
    """The models of one comparison, each with its seeds grouped, and what the tables need of them."""

    groups: list  # replicates.SeedReplicates, one per model
    baseline: str
    notes: list[str]  # how the runs were grouped

    def __post_init__(self):
        self.names = [group.label for group in self.groups]
        self.by_name = dict(zip(self.names, self.groups))
        self.scores = {group.label: group.scores for group in self.groups}
        self.categories = {task: category for group in self.groups for task, category in group.categories.items()}
        self.tasks = sorted(self.categories, key=lambda t: (category_rank(self.categories[t]), t))
        self.means = {group.label: group.category_means() for group in self.groups}
        self.spreads = {group.label: group.category_spread() for group in self.groups}
        self.used_categories = sorted({self.categories[t] for t in self.tasks}, key=category_rank)
        self.replicated = any(len(group.runs) > 1 for group in self.groups)

    def task_spread(self, name: str, task: str) -> float | None:
        return self.by_name[name].spread(task) if task in self.scores[name] else None

    def left_out(self) -> list[str]:
        """What some model lacks: tasks left out of its runs, and tasks it has no score for."""
        found = [f"{group.label}: {task} ({why})" for group in self.groups for task, why in group.left_out.items()]
        return found + [f"{n}: no score for {t}" for n in self.names for t in self.tasks if t not in self.scores[n]]


COMPARISON_FILES = (
    "comparison.md",
    "per_task.csv",
    "per_category.csv",
    "summary.md",
    "per_category.png",
    "paired_tests.csv",
    "per_seed.csv",
)
PAIRED_COLUMNS = (
    "model",
    "baseline",
    "task",
    "subset/split",
    "category",
    "units",
    "model seeds",
    "baseline seeds",
    "model score",
    "baseline score",
    "difference",
    "95% low",
    "95% high",
    "p",
    "p (Holm, category)",
)


def compare_results(result_folders: list, *, output, baseline: str | None = None) -> Comparison:
    """Tables, Wilcoxon tests per category (Holm-corrected) and paired tests within tasks against `baseline`, a figure
    and a summary, in `output`.

    `result_folders` are model or revision folders of an evaluation's results (`results.read_runs`). Runs of one model
    trained with several seeds are grouped (`results.group_replicates`): tables give the mean over seeds with the
    sample standard deviation, Wilcoxon pairs the seed means by task, the paired tests resample seeds as well.
    """
    from ..stats import wilcoxon_by_category

    loaded, budget = load_compared_runs(result_folders)
    groups, grouping_notes = group_replicates(loaded)
    names = [group.label for group in groups]
    if baseline is not None and baseline not in names:
        raise EvaluationError(f"--baseline {baseline!r} is not one of {names}.")
    models = ComparedModels(groups, baseline or names[0], grouping_notes)
    tests = {
        name: wilcoxon_by_category(models.scores[name], models.scores[models.baseline], models.categories)
        for name in models.names
        if name != models.baseline
    }
    report = [*_preamble(models, budget), *_score_tables(models)]
    paired_rows = []
    for name, category_tests in tests.items():
        lines, rows = _tests_against_baseline(models, name, category_tests)
        report += lines
        paired_rows += rows
    files = [Path(output) / name for name in COMPARISON_FILES]
    significant = {name: {test.category for test in found if test.significant()} for name, found in tests.items()}
    with folder_lock(output, what="comparison"):  # two at once would leave one's tables beside the other's figure
        write_text(files[0], "\n".join(report))
        write_csv(files[5], list(PAIRED_COLUMNS), paired_rows)
        _write_score_tables(models, files)
        write_text(files[3], summary_block(models.names, models.means, models.used_categories, tests, models.baseline))
        plots.category_bars(files[4], models.names, models.means, models.used_categories, significant)
    return Comparison("\n".join(report), files, models.left_out())


def _preamble(models: ComparedModels, budget: int | None) -> list[str]:
    """The title, the budget, the seeds per model and a note for every score a model lacks."""
    lines = ["# Comparison", ""]
    if budget:
        lines += [
            f"Budget run: every task scored on at most {budget} units (`--budget {budget}`); comparable between "
            "these models, not with published MTEB numbers.",
            "",
        ]
    if models.replicated:
        seeds = "; ".join(f"{g.label}: {len(g.runs)} ({', '.join(map(str, g.seeds))})" for g in models.groups)
        lines += [
            f"Seeds (training replicates) per model: {seeds}. A score is the mean over a model's seeds, "
            "± the sample standard deviation over its seeds (the seed spread).",
            "",
        ]
    notes = [f"Note: {note}" for note in models.notes]
    notes += [f"Note: {g.label}: {task} left out ({why})." for g in models.groups for task, why in g.left_out.items()]
    for name in models.names:
        if missing := [t for t in models.tasks if t not in models.scores[name]]:
            notes.append(
                f"Note: {name} has no score for {', '.join(missing)}: its category means average fewer tasks than "
                "the others'."
            )
    return lines + notes + ([""] if notes else [])


def _with_spread(value, spread):
    return value if spread is None or value is None else f"{value:.4f} ± {spread:.4f}"


def _category_rows(models: ComparedModels) -> list[list]:
    """Per category: its task count and each model's mean; then the average over all tasks."""
    rows = [
        [category, sum(models.categories[t] == category for t in models.tasks)]
        + [models.means[name].get(category) for name in models.names]
        for category in models.used_categories
    ]
    return rows + [
        ["Average (all tasks)", len(models.tasks), *[mean(models.scores[n].values()) for n in models.names]]
    ]


def _score_tables(models: ComparedModels) -> list[str]:
    from ..stats import markdown_table

    per_task = [
        [task, models.categories[task]]
        + [_with_spread(models.scores[name].get(task), models.task_spread(name, task)) for name in models.names]
        for task in models.tasks
    ]
    per_category = [
        [category, count]
        + [_with_spread(value, models.spreads[name].get(category)) for name, value in zip(models.names, values)]
        for category, count, *values in _category_rows(models)
    ]
    return [
        "## Per task (main score)",
        "",
        markdown_table(["task", "category", *models.names], per_task),
        "",
        "## Per category (mean main score)",
        "",
        markdown_table(["category", "tasks", *models.names], per_category),
        "",
    ]


def _tests_against_baseline(models: ComparedModels, name: str, category_tests) -> tuple[list[str], list[list]]:
    """One model against the baseline: the Wilcoxon table by category, then the paired tests within each task."""
    from ..stats import category_test_table

    baseline = models.baseline
    lines = [
        f"## {name} vs {baseline}: Wilcoxon signed-rank by category, Holm-corrected",
        "",
        *(["Over the seed means of each task.", ""] if models.replicated else []),
        category_test_table(category_tests, name, baseline),
        "",
    ]
    within, skipped = paired_tests(models.by_name[name], models.by_name[baseline])
    lines += paired_section(name, baseline, within, skipped, models.categories)
    rows = [
        [name, baseline, test.task, test.part, models.categories[test.task], test.units, test.seeds_a, test.seeds_b]
        + [test.score_a, test.score_b, test.difference, test.low, test.high, test.p_value, test.p_holm]
        for test in within
    ]
    return lines, rows


def _write_score_tables(models: ComparedModels, files: list[Path]) -> None:
    """per_task.csv, per_category.csv (with each model's seed sd) and per_seed.csv (every run's scores)."""
    names = models.names
    task_rows = [
        [task, models.categories[task]]
        + [models.scores[name].get(task) for name in names]
        + [models.task_spread(name, task) for name in names]
        for task in models.tasks
    ]
    write_csv(files[1], ["task", "category", *names, *[f"{name} seed sd" for name in names]], task_rows)
    category_rows = _category_rows(models)
    spreads = [[models.spreads[name].get(row[0]) for name in names] for row in category_rows[:-1]] + [
        [None for _ in names]
    ]
    write_csv(
        files[2],
        ["category", "tasks", *names, *[f"{name} seed sd" for name in names]],
        [[*row, *spread] for row, spread in zip(category_rows, spreads)],
    )
    per_seed = [
        [group.label, seed, run.revision, task, models.categories[task], run.scores[task]]
        for group in models.groups
        for seed, run in zip(group.seeds, group.runs)
        for task in group.tasks
    ]
    write_csv(files[6], ["model", "seed", "revision", "task", "category", "score"], per_seed)


SEED_RESAMPLING = (
    "With seed replicates, each resample also draws every model's seeds with replacement (one draw for both when "
    "their seeds match one to one, as the same seed gives the same data order), so the interval holds the training "
    "noise between seeds too (a bootstrap over n seeds sees (n-1)/n of their variance: with 2 seeds that part of the "
    "interval is about 0.71 of its width). "
)


def paired_section(name: str, baseline: str, tests: list, skipped: dict[str, str], categories: dict) -> list[str]:
    """Markdown: the paired bootstrap test of every task, then per category how many tasks differ after Holm."""
    from .paired import RESAMPLES

    lines = [
        f"### {name} vs {baseline}: paired bootstrap within each task",
        "",
        "Each task's own units (queries, pairs, examples, texts) resampled together for both models "
        f"({RESAMPLES} resamples, seed 0): the difference of main scores, its 95% percentile interval, and a "
        "two-sided p from the bootstrap distribution shifted to the null; Holm-corrected over the tasks of each "
        "category. "
        + (SEED_RESAMPLING if any(test.seeds_a > 1 or test.seeds_b > 1 for test in tests) else "")
        + "Why not Wilcoxon here: over 5 or fewer datasets it cannot reach p < 0.05, and over units a rank or "
        "sign test applies neither to Spearman, average precision or V-measure nor, with hundreds of units, to "
        "the question of how large a difference is.",
        "",
    ]
    if tests:
        lines += [
            _task_tests_table(name, baseline, tests, categories),
            "",
            _category_counts_table(name, baseline, tests, categories),
            "",
        ]
    if skipped:
        lines += ["Not tested: " + "; ".join(f"{task} ({why})" for task, why in skipped.items()) + ".", ""]
    return lines


def _task_tests_table(name: str, baseline: str, tests: list, categories: dict) -> str:
    from ..stats import markdown_table

    rows = [
        [
            f"{test.task} ({test.part})" if test.part else test.task,
            categories[test.task],
            test.units,
            test.score_a,
            test.score_b,
            test.difference,
            f"[{test.low:.4f}, {test.high:.4f}]",
            test.p_value,
            test.p_holm,
            (name if test.difference > 0 else baseline) if test.significant() else "no significant difference",
        ]
        for test in sorted(tests, key=lambda t: (category_rank(categories[t.task]), t.task))
    ]
    header = ["task", "category", "units", name, baseline, "difference", "95% interval", "p", "p (Holm)", "better"]
    return markdown_table(header, rows)


def _category_counts_table(name: str, baseline: str, tests: list, categories: dict) -> str:
    from ..stats import markdown_table

    rows = []
    for category in sorted({categories[test.task] for test in tests}, key=category_rank):
        members = [test for test in tests if categories[test.task] == category]
        rows.append(
            [
                category,
                f"{len(members)} ({len({test.task for test in members})})",
                f"{sum(test.difference > 0 for test in members)}/{len(members)}",
                sum(test.significant() and test.difference > 0 for test in members),
                sum(test.significant() and test.difference < 0 for test in members),
            ]
        )
    header = [
        "category",
        "tests (tasks): one per subset/split",
        f"{name} higher",
        f"{name} significantly better",
        f"{baseline} significantly better",
    ]
    return markdown_table(header, rows)


def summary_block(names, category_means, categories, tests, baseline) -> str:
    """Compact Markdown for model cards: per-category means, with a marker where a model differs significantly."""
    from ..stats import markdown_table

    rows = []
    for name in names:
        significant = {t.category for t in tests.get(name, []) if t.significant()}
        rows.append(
            [
                name,
                *[
                    f"{category_means[name][c]:.4f}{'*' if c in significant else ''}"
                    if c in category_means[name]
                    else None
                    for c in categories
                ],
            ]
        )
    note = (
        f"\n\n\\* significantly different from {baseline} (Wilcoxon signed-rank by dataset, Holm-corrected, p < 0.05)."
    )
    return markdown_table(["model", *categories], rows) + note + "\n"


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """A CSV file of `header` and `rows` (the comparison's and the study's tables)."""
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())
