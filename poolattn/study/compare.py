"""A study's scored rows and the comparisons between them: each row's seeds as replicates, and per category the
pooled paired bootstrap (Holm over the categories of one comparison) beside the paper's Wilcoxon."""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..evaluation.pairing import seeds_paired, task_parts
from ..evaluation.replicates import SeedReplicates
from ..evaluation.requests import evaluation_revision
from ..evaluation.results import (
    NOT_TASK_FILES,
    ModelResults,
    TrainingOrigin,
    category_rank,
    read_results,
    results_folder,
)
from ..manifest import MANIFEST_FILE
from ..model_folder import ExportedModel
from .plan import CONTROL_SUFFIX, StudyPlan, StudyRow, run_folder

ALPHA = 0.05


@dataclass
class RowResults:
    """One row's trained seeds and their results (seeds not yet trained or scored are left out)."""

    row: StudyRow
    models: list[ExportedModel]
    replicates: SeedReplicates | None
    without_instructions: SeedReplicates | None = None
    controls: SeedReplicates | None = None  # the same seeds untrained (step 0), with `--controls`
    control_models: list[ExportedModel] = field(default_factory=list)

    def control(self) -> "RowResults":
        """The untrained controls as a row of their own (kind "control"), for the table, the figure and the test
        of how far training moved the row."""
        row = StudyRow(
            self.row.key + CONTROL_SUFFIX,
            f"{self.row.label} · step 0",
            "control",
            self.row.variant,
            self.row.overrides,
            self.row.model_name + CONTROL_SUFFIX,
        )
        return RowResults(row, self.control_models, self.controls)

    @property
    def seeds(self) -> list[int]:
        return [model.manifest.seed for model in self.models]


@dataclass
class CategoryComparison:
    """Row a against row b on one category: the pooled paired bootstrap of the category mean, and the paper's
    Wilcoxon over datasets."""

    a: str
    b: str
    question: str
    category: str
    tasks: int
    score_a: float
    score_b: float
    difference: float
    low: float
    high: float
    p_value: float
    p_holm: float | None = None
    wilcoxon_p: float | None = None
    seeds_a: int = 1
    seeds_b: int = 1

    @property
    def marker(self) -> str:
        """▲ a significantly better, ▼ b significantly better (bootstrap, Holm), else no marker."""
        if self.p_holm is None or self.p_holm >= ALPHA:
            return ""
        return "▲" if self.difference > 0 else "▼"

    def cell(self) -> str:
        """The report's table cell: difference, 95% interval, marker."""
        return f"{self.difference:+.4f} [{self.low:+.4f}, {self.high:+.4f}] {self.marker}".strip()


def scoring_seconds(replicates: SeedReplicates | None) -> list[tuple[int | None, float]]:
    """(seed, wall time of its scoring: its tasks' mteb evaluation times) of each scored run, in run order."""
    runs = replicates.runs if replicates else []
    return [
        (run.origin.seed if run.origin else None, sum(result.evaluation_time or 0.0 for result in run.task_results))
        for run in runs
    ]


def collect(plan: StudyPlan, output) -> list[RowResults]:
    """Every row's exported seeds and their results under `output` (exact weights: the revision is the fingerprint)."""
    output = Path(output)
    collected = []
    for row in plan.rows:
        models, controls = (
            [
                ExportedModel.read(run_folder(output, row, seed) / name)
                for seed in plan.seeds
                if (run_folder(output, row, seed) / name / MANIFEST_FILE).is_file()
            ]
            for name in ("model", "step0")
        )
        collected.append(
            RowResults(
                row,
                models,
                _replicates(row, models, output, plan, True),
                _replicates(row, models, output, plan, False),
                # one control for every seed (`--controls first`): it stands for no seed of its own, as above
                _replicates(row, controls, output, plan, True, shared=plan.control_seeds == "first"),
                controls,
            )
        )
    return collected


def _replicates(
    row: StudyRow, models: list[ExportedModel], output: Path, plan: StudyPlan, instructions: bool, *, shared=False
):
    """The row's scored seeds on the study's tasks (`planned_tasks`), each with the seed of its own run folder. Models
    of the same weights (the one untrained control a row without parameters of its own has for every seed) share one
    results folder: they are one run, not one per seed, standing for no seed of its own (origin seed None, so that
    tests compare it with every seed of the other row, unpaired); so does a control scored for the first seed alone
    (`shared`, `--controls first`), set against every seed of its row, not against seed 42 alone."""
    by_folder: dict[Path, list[ExportedModel]] = {}
    for model in models:
        revision = evaluation_revision(model.fingerprint, budget=plan.budget, instructions=instructions)
        by_folder.setdefault(results_folder(output / "results", model.mteb_name, revision), []).append(model)
    runs: list[ModelResults] = []
    for folder, same_weights in by_folder.items():
        if folder.is_dir() and any(path.name not in NOT_TASK_FILES for path in folder.glob("*.json")):
            manifest = same_weights[0].manifest
            seed = manifest.seed if len(same_weights) == 1 and not shared else None
            origin = TrainingOrigin(seed, manifest.recipe_fingerprint())
            results = planned_tasks(plan, read_results(folder))
            if results.task_results:
                runs.append(dataclasses.replace(results, origin=origin))
    if not runs:
        return None
    return SeedReplicates(row.label, sorted(runs, key=lambda run: (run.origin and run.origin.seed) or 0))


def planned_tasks(plan: StudyPlan, results: ModelResults) -> ModelResults:
    """`results` on the tasks the study selects now (`--tasks`, or `--categories`): a study resumed with fewer tasks
    keeps the others' results in its folder, which would otherwise enter the means of the rows scored before."""
    if plan.tasks:
        keep = set(plan.tasks)
    elif plan.categories:
        keep = {task for task, category in results.categories.items() if category in plan.categories}
    else:
        return results
    return dataclasses.replace(results, task_results=[item for item in results.task_results if item.task_name in keep])


def on_shared_seeds(a: SeedReplicates, b: SeedReplicates) -> tuple[SeedReplicates, SeedReplicates]:
    """Both rows on the seeds they share (seed s gives both the same data order and, for a row and its control, the
    same start), so that a row further along than the other (more seeds trained, its controls scored first) is not
    averaged over seeds the other lacks; as they are when they share none."""
    shared = set(a.seeds) & set(b.seeds) - {None}
    if not shared:
        return a, b
    return tuple(
        SeedReplicates(group.label, [run for run in group.runs if run.origin and run.origin.seed in shared])
        for group in (a, b)
    )


def compare_rows(a: RowResults, b: RowResults, question: str) -> tuple[list[CategoryComparison], dict[str, str]]:
    """Per category both rows scored, on the seeds both have (`on_shared_seeds`): the pooled paired bootstrap (Holm
    over this comparison's categories) and the Wilcoxon signed-rank over the category's datasets; and the tasks both
    scored that the tests had to leave out, with the reason (no predictions, data that cannot be loaded, ...)."""
    from ..evaluation import paired
    from ..stats import wilcoxon_by_category

    replicates_a, replicates_b = on_shared_seeds(a.replicates, b.replicates)
    found, skipped = task_parts(replicates_a, replicates_b)
    wilcoxon = {
        test.category: test
        for test in wilcoxon_by_category(replicates_a.scores, replicates_b.scores, replicates_a.categories)
    }
    tests = []
    for category in sorted({item.category for item in found}, key=category_rank):
        members = [item for item in found if item.category == category]
        parts = [part for item in members for part in item.parts.values()]
        weights = [1 / len(item.parts) for item in members for _ in item.parts]
        pooled = paired.pooled_bootstrap(
            parts, weights=weights, paired_seeds=seeds_paired(replicates_a, replicates_b), task=category
        )
        test = wilcoxon.get(category)
        tests.append(
            CategoryComparison(
                a.row.key,
                b.row.key,
                question,
                category,
                len(members),
                pooled.score_a,
                pooled.score_b,
                pooled.difference,
                pooled.low,
                pooled.high,
                pooled.p_value,
                wilcoxon_p=test.p_value if test else None,
                seeds_a=pooled.seeds_a,
                seeds_b=pooled.seeds_b,
            )
        )
    from ..stats import holm_adjust

    for test, adjusted in zip(tests, holm_adjust([test.p_value for test in tests])):
        test.p_holm = adjusted
    return tests, skipped
