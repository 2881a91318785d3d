"""The study, run and reported: the paper's five designs, the baseline designs and the ablation arms, each trained
with several seeds on one recipe, scored on STS, Retrieval, Classification and Clustering, and laid out as the paper's
tables (Tang & Yang 2024, Tables 2-3) with the test behind every significance marker.

    python study.py --preset small --seeds 2                        # CPU: SmolLM2-135M on ../shared/data/train
    python study.py --preset small --seeds 3 --ablation layer_count,layer_weights
    python study.py --report study/                                  # the report again, from what has run so far
    torchrun --nproc_per_node 8 study.py --preset paper --seeds 3 --ablation all --benchmark "MTEB(eng, v2)" \\
        --categories STS,Retrieval,Classification,Clustering --data-dir "" --budget 0

Rows: variants 1-5 (`--designs all`), the baselines mean-causal and mean-bidirectional (`baselines`), and, with
`--ablation`, the arms of `ablation.ABLATIONS` over variant 5 (the base arm *is* the variant-5 row: same config, data
order and seed). Every row is trained with the same train.py flags (a `--preset` or any flags after `--`) and the same
seeds S..S+N-1; seed s gives every row the same data order.

Order and resuming: seed by seed (every row's first seed, then every row's second, ...), each run scored as soon as it
is trained, so an interrupted study has a complete one-seed table first. Run the same command again to resume: a
finished run is not retrained (an interrupted one continues from its last complete checkpoint) and finished tasks are
not re-scored. `study.json` in `--output` records the plan; `--report` rewrites the report from it.

Layout of `--output`: `study.json`, `runs/<row>/seed-<S>/` (train.py's output; `model/` the export), `results/`
(`evaluate.py run` results), `report/` (`study.md`, `study_table.csv`, `study_tests.csv`, `per_task.csv`,
`study.png`; with arms, `study_ablation.png`).

Tests (each marker names its test): the category-level paired bootstrap (`paired.pooled_bootstrap`: every task's units
of the category resampled, and each row's seeds, 1000 resamples; Holm over the categories of one comparison), beside
the paper's own Wilcoxon signed-rank over datasets, which cannot reach p < 0.05 with 5 or fewer datasets per category.
"""

import dataclasses
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import plots
from ..configuration_poolattn import DESIGNS, variant_tag
from ..evaluation.results import ModelResults, SeedReplicates, category_rank, mean, read_results, results_folder
from ..evaluation.scoring import (
    EvaluationRun,
    evaluate_models,
    evaluation_revision,
    seeds_paired,
    task_parts,
    write_csv,
)
from ..files import folder_lock, read_json, write_json, write_text
from ..hub.model_card import VARIANT_NAMES
from ..launch import is_main_process, launched_processes
from ..manifest import MANIFEST_FILE, ExportedModel
from ..training.job import TrainingJob, flag_names
from .ablation import ABLATIONS, DEFAULT_BUDGET, DEFAULT_CATEGORIES, arm_model_name, arms
from .tuning import PlateauSettings, RowTuning, TuningGrid, layer_weight_size, read_tuning, tune_row

logger = logging.getLogger(__name__)

PLAN_FILE = "study.json"
BASE_VARIANTS = (3, 5)  # the multi-layer designs an ablation's arms can start from
# The paper's own comparisons (Tang & Yang 2024, Section 5): row a against row b, and what the difference answers.
PAPER_COMPARISONS = (
    ("v2", "v1", "trainable pooling vs EOS-last, causal"),
    ("v4", "v2", "bidirectional vs causal, last-layer trainable pooling"),
    ("v5", "v3", "bidirectional vs causal, multi-layers trainable pooling"),
    ("v3", "v2", "multi-layers vs last-layer trainable pooling, causal"),
    ("v5", "v4", "multi-layers vs last-layer trainable pooling, bidirectional"),
)
BASELINE_COMPARISONS = (
    ("v5", "mean-bidirectional", "the paper's best design vs mean pooling, bidirectional"),
    ("v5", "mean-causal", "the paper's best design vs mean pooling, causal"),
    ("v1", "mean-causal", "EOS-last vs mean pooling, causal"),
)
INSTRUCTION_CHECK = ("v5", "mean-causal")  # one variant and one baseline scored on STS without instructions too
ALPHA = 0.05
# What the study sets per row and seed is what a `jobs.TrainingJob` owns; these probes say which of those flags a
# plan's study sets: always (design, seed, folder, name, an arm's config), and with tuning or the plateau rule.
STRUCTURE_PROBE = {"output_dir": "-", "model_name": "-", "config_overrides": {"-": 0}}
TUNING_PROBE = {"learning_rate": 1.0, "head_learning_rate": 1.0}
PLATEAU_PROBE = PlateauSettings().job_fields()
CONTROL_SUFFIX = "-step0"  # the untrained control of a row: model name and label


class StudyError(ValueError):
    """A study that cannot run or be reported as asked; the message says what to change."""


@dataclass
class StudyRow:
    """One row of the study's table: a design (a paper variant or a baseline) or an ablation arm of variant 5."""

    key: str  # "v5", "mean-causal", "arm-last_4"
    label: str  # how the table names it
    kind: str  # "variant", "baseline" or "arm"
    variant: int | str  # the design trained
    overrides: dict = field(default_factory=dict)  # PoolAttnConfig overrides (arms)
    model_name: str = ""  # the name results are recorded under


@dataclass
class StudyPlan:
    """What a study trains and scores; `study.json` in the output folder."""

    backbone: str
    seeds: list[int]
    rows: list[StudyRow]
    train_argv: list[str]
    tasks: list[str] | None = None
    categories: list[str] | None = None
    benchmark: str | None = None
    data_dir: str | None = None
    budget: int | None = DEFAULT_BUDGET
    batch_size: int = 32
    instruction_check: list[str] = field(default_factory=list)  # row keys also scored on STS without instructions
    tuning: dict | None = None  # a TuningGrid: every row's rates chosen on held-out training rows
    plateau: dict | None = None  # PlateauSettings: every run trained to the plateau of its held-out loss
    controls: bool = False  # every row and seed also scored untrained (step 0)
    ablation_base: str = "v5"  # the row every ablation arm is compared with: the arms' base variant

    @property
    def tuning_grid(self) -> TuningGrid | None:
        return TuningGrid(**self.tuning) if self.tuning else None

    @property
    def plateau_settings(self) -> PlateauSettings | None:
        return PlateauSettings(**self.plateau) if self.plateau else None

    def recipe(self) -> dict:
        """What a study folder's runs were trained with: a resumed study must not mix in other settings."""
        return {"train_argv": self.train_argv, "tuning": self.tuning, "plateau": self.plateau}

    def row(self, key: str) -> StudyRow | None:
        return next((row for row in self.rows if row.key == key), None)

    def write(self, output) -> Path:
        path = Path(output) / PLAN_FILE
        write_json(path, asdict(self))
        return path

    @classmethod
    def read(cls, output) -> "StudyPlan":
        path = Path(output) / PLAN_FILE
        if not path.is_file():
            raise StudyError(f"{output}: no {PLAN_FILE} here; give the --output folder of a study (run it first).")
        values = read_json(
            path, recovery="write it again by running the same study.py command (finished runs and scores are kept)"
        )
        return cls(**{**values, "rows": [StudyRow(**row) for row in values["rows"]]})


def run_folder(output, row: StudyRow, seed: int) -> Path:
    """train.py's output folder of one row and seed; the exported model is its `model/`, the untrained control
    (with `--controls`) its `step0/`."""
    return Path(output) / "runs" / row.key / f"seed-{seed}"


def plan_study(
    *,
    designs: str = "all,baselines",
    ablation: str | None = None,
    ablation_base: int = 5,
    seeds: int = 2,
    seed: int = 42,
    train_argv: list[str] = (),
    tasks=None,
    categories=None,
    benchmark=None,
    data_dir=None,
    budget: int | None = DEFAULT_BUDGET,
    batch_size: int = 32,
    instruction_check: list[str] | None = None,
    tuning: TuningGrid | None = None,
    plateau: PlateauSettings | None = None,
    controls: bool = False,
) -> StudyPlan:
    """The study's rows and settings, checked before anything runs (raises `StudyError` or `ValueError`)."""
    from .. import training  # the training stack (Trainer, peft, datasets), when a run needs it

    given = flag_names(train_argv)
    structure = TrainingJob(**STRUCTURE_PROBE).owned_flags()
    per_row = TrainingJob(
        **STRUCTURE_PROBE, **(TUNING_PROBE if tuning else {}), **(PLATEAU_PROBE if plateau else {})
    ).owned_flags()
    if clash := sorted(given & structure):
        raise StudyError(
            f"the training flags {', '.join('--' + flag for flag in clash)} are set by the study itself "
            "(designs, seeds, folders, names); give --designs, --seeds/--seed and --output to study.py "
            "instead."
        )
    if clash := sorted(given & (per_row - structure)):
        raise StudyError(
            f"the training flags {', '.join('--' + flag for flag in clash)} are set per row by the "
            "study's tuning (rates) and plateau rule (steps, held-out rows, evaluations); set them "
            "with study.py's --tune-* and --plateau-* flags instead."
        )
    if seeds < 1:
        raise StudyError(f"--seeds {seeds}: give how many seeds to train each row with, >= 1 (2 or more for spreads).")
    model_args = training.parse_arguments([*train_argv, "--variant", designs])[0]  # checks flags, preset, designs
    backbone = model_args.backbone
    chosen = model_args.variants
    arm_overrides = {} if not ablation or ablation == "none" else _arms(ablation)
    if ablation_base not in BASE_VARIANTS:
        raise StudyError(
            f"--base-variant {ablation_base}: the arms change the layers a multi-layer head reads; give one of "
            f"{', '.join(map(str, BASE_VARIANTS))}."
        )
    if arm_overrides and ablation_base not in chosen:
        chosen = sorted([*chosen, ablation_base], key=list(DESIGNS).index)
        logger.info("the ablation arms' base is variant %d: added to the designs", ablation_base)
    rows = [
        StudyRow(
            variant_tag(design),
            _design_label(design),
            "variant" if isinstance(design, int) else "baseline",
            design,
            model_name=f"poolattn/{Path(backbone).name}-{variant_tag(design)}",
        )
        for design in chosen
    ]
    rows += [
        StudyRow(
            f"arm-{name}",
            f"v{ablation_base} · {name}",
            "arm",
            ablation_base,
            overrides,
            arm_model_name(backbone, ablation_base, name),
        )
        for name, overrides in arm_overrides.items()
    ]
    if not (tasks or categories or benchmark):
        categories = list(DEFAULT_CATEGORIES)
    check = list(INSTRUCTION_CHECK if instruction_check is None else instruction_check)
    keys = {row.key for row in rows}
    check = [key for key in check if key in keys]
    return StudyPlan(
        backbone=backbone,
        seeds=list(range(seed, seed + seeds)),
        rows=rows,
        train_argv=list(train_argv),
        tasks=tasks,
        categories=categories,
        benchmark=benchmark,
        data_dir=str(data_dir) if data_dir else None,
        budget=budget or None,
        batch_size=batch_size,
        instruction_check=check,
        tuning=asdict(tuning) if tuning else None,
        plateau=asdict(plateau) if plateau else None,
        controls=controls,
        ablation_base=variant_tag(ablation_base),
    )


def _arms(ablation: str) -> dict[str, dict]:
    """The arms (without the base) of one ablation, several comma-separated, or all; `<ablation>:<arm>` takes one
    arm of an ablation (e.g. `layer_weights:weights_off`), in the order given.

    >>> list(_arms("layer_subset,layer_weights:weights_off"))
    ['last_4', 'middle_4', 'weights_off']
    """
    names = list(ABLATIONS) if ablation == "all" else [name.strip() for name in ablation.split(",") if name.strip()]
    chosen = {}
    for name in names:
        group, _, arm = name.partition(":")
        given = {key: overrides for key, overrides in arms(group).items() if key != "base"}
        if arm and arm not in given:
            raise StudyError(f"--ablation {name}: {group} has no arm {arm!r}; its arms: {', '.join(given)}.")
        chosen.update({arm: given[arm]} if arm else given)
    return chosen


def _design_label(design) -> str:
    name = VARIANT_NAMES[design].split(" (")[0]
    return f"{design} {name}" if isinstance(design, int) else f"{design} ({name})"


# ---------------------------------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class StudyRun:
    """What `run_study` did: the report (None on processes other than 0) and the tasks that failed to score."""

    report: Path | None
    failures: list = field(default_factory=list)  # evaluation.TaskFailure


def run_study(plan: StudyPlan, output) -> StudyRun:
    """Tune every row's rates (with a tuning grid), then train and score every row once per seed (seed-major, each run
    scored as soon as it is trained, its untrained control first with `controls`; the rows of the instruction check
    also on the STS tasks without instructions), then write the report."""
    output = Path(output)
    if (output / PLAN_FILE).is_file() and (earlier := StudyPlan.read(output)).recipe() != plan.recipe():
        raise StudyError(
            f"{output} holds a study trained with other flags or another tuning / plateau setting "
            f"({' '.join(earlier.train_argv)}; tuning {earlier.tuning}; plateau {earlier.plateau}); use "
            "another --output, or the same settings to resume it."
        )
    distributed = launched_processes() > 1
    if distributed and (plan.tuning or plan.controls):
        raise StudyError(
            "tuning (--tune) and controls (--controls) run in one process; run them without torchrun "
            "(the study's runs then resume under torchrun with the same command)."
        )
    output.mkdir(parents=True, exist_ok=True)
    with folder_lock(output, what="study"):  # a second study into this folder is refused, by name
        return _run_locked(plan, output, distributed)


def _run_locked(plan: StudyPlan, output: Path, distributed: bool) -> StudyRun:
    plan.write(output)
    progress = StudyProgress(plan)
    failures = []
    trained: list[tuple[StudyRow, int, Path]] = []
    checking = plan.instruction_check and not plan.benchmark
    if plan.tuning:
        for row in plan.rows:
            before = read_tuning(output).get(row.key)
            tried = len(before.points) if before else 0
            progress.step(
                "tuning",
                row,
                plan.seeds[0],
                lambda row=row: tune(plan, row, output),
                state=lambda row, tried=tried: (
                    "done already" if len(row.points) == tried else "resumed" if tried else "ran now"
                ),
            )
    for seed in plan.seeds:
        for row in plan.rows:
            folder = run_folder(output, row, seed)
            if plan.controls:
                state = "done already" if (folder / "step0" / MANIFEST_FILE).is_file() else "ran now"
                control = progress.step(
                    "control", row, seed, lambda row=row, seed=seed: control_row(plan, row, seed, output), state=state
                )
                failures += score_models(plan, [control], output).failures
            folder = progress.step(
                "training",
                row,
                seed,
                lambda row=row, seed=seed: train_row(plan, row, seed, output),
                state=step_state(folder),
            )
            trained.append((row, seed, folder))
            if not distributed:  # under torchrun every process trains; process 0 scores all at the end
                failures += score_models(plan, [folder], output).failures
                if checking and row.key in plan.instruction_check:
                    failures += score_models(plan, [folder], output, instructions=False, sts_only=True).failures
    if not is_main_process():
        return StudyRun(None)
    if distributed:
        failures += score_models(plan, [folder for _, _, folder in trained], output).failures
        checked = [folder for row, _, folder in trained if row.key in plan.instruction_check]
        if checking and checked:
            failures += score_models(plan, checked, output, instructions=False, sts_only=True).failures
    logger.info("study: %s", progress.summary())
    return StudyRun(write_report(output), failures)


class StudyProgress:
    """ "step k of N" with the elapsed time and an ETA for the study's stages (tuning counts one step per row), and an
    honest summary: what ran now, what continued from a checkpoint, what was done already."""

    def __init__(self, plan: StudyPlan):
        self.total = len(plan.rows) * len(plan.seeds) * (2 if plan.controls else 1)
        self.total += len(plan.rows) if plan.tuning else 0
        self.done, self.started, self.worked = 0, time.time(), 0.0
        self.counts = {"ran now": 0, "resumed": 0, "done already": 0}

    def step(self, stage: str, row: StudyRow, seed: int, work, *, state):
        """Run `work()`; `state` is what was found before it ran: "done already", "resumed" or "ran now" (or a
        function of `work`'s result that says so, where only the result tells, as for tuning)."""
        self.done += 1
        begun = time.time()
        result = work()
        took = time.time() - begun
        state = state(result) if callable(state) else state
        self.counts[state] += 1
        if state != "done already":
            self.worked += took
        working = self.counts["ran now"] + self.counts["resumed"]
        eta = f", ETA {self.worked / working * (self.total - self.done) / 60:.0f} min" if working else ""
        logger.info(
            "study: step %d of %d: %s, %s, seed %d: %s in %.0f s; elapsed %.0f s%s",
            self.done,
            self.total,
            stage,
            row.label,
            seed,
            state,
            took,
            time.time() - self.started,
            eta,
        )
        return result

    def summary(self) -> str:
        return (
            f"{self.done} steps in {time.time() - self.started:.0f} s: {self.counts['ran now']} ran now, "
            f"{self.counts['resumed']} resumed from a checkpoint, {self.counts['done already']} done already "
            "(scoring: finished tasks are not scored again)"
        )


def step_state(folder: Path) -> str:
    """What a run folder holds before its step: an export ("done already"), checkpoints ("resumed"), or nothing."""
    if (folder / "model" / MANIFEST_FILE).is_file():
        return "done already"
    return "resumed" if any(folder.glob("checkpoint-*")) else "ran now"


def row_job(plan: StudyPlan, row: StudyRow, seed: int, output, *, control: bool = False) -> TrainingJob:
    """The training job of one row and seed: the study's flags, the row's design, and (when the study tunes) its
    tuned rates, (when it trains to a plateau) the plateau rule."""
    job = TrainingJob(
        flags=tuple(plan.train_argv),
        variant=row.variant,
        seed=seed,
        output_dir=str(run_folder(output, row, seed)),
        model_name=row.model_name + (CONTROL_SUFFIX if control else ""),
        config_overrides=row.overrides,
    )
    if plan.tuning:
        choice = read_tuning(output).get(row.key)
        if choice is None or choice.choice is None:
            raise StudyError(
                f"{row.label}: no tuned rates recorded; the tuning stage runs first (run the study command again)."
            )
        job = dataclasses.replace(
            job, learning_rate=choice.choice.learning_rate, head_learning_rate=choice.choice.head_learning_rate
        )
    if plan.plateau and not control:
        job = dataclasses.replace(job, **plan.plateau_settings.job_fields())
    return job


def tune(plan: StudyPlan, row: StudyRow, output) -> RowTuning:
    """The row's rates from the tuning grid, on the first seed and held-out training rows only (`tuning.tune_row`)."""
    from .. import training  # the training stack (Trainer, peft, datasets), when a run needs it

    grid = plan.tuning_grid
    base = TrainingJob(
        flags=tuple(plan.train_argv),
        variant=row.variant,
        seed=plan.seeds[0],
        model_name=f"{row.model_name}-tuning",
        config_overrides=row.overrides,
    )

    def train(learning_rate: float, head_learning_rate: float | None, folder: Path) -> Path:
        return training.run_job(
            dataclasses.replace(base, output_dir=str(folder), **grid.job_fields(learning_rate, head_learning_rate))
        )

    return tune_row(row.key, row.variant, row.overrides, grid=grid, seed=plan.seeds[0], output=output, train=train)


def train_row(plan: StudyPlan, row: StudyRow, seed: int, output) -> Path:
    """One row and seed, resumed where it stopped, with its tuned rates and the plateau rule when the plan has
    them (`row_job`)."""
    from .. import training  # the training stack (Trainer, peft, datasets), when a run needs it

    folder = run_folder(output, row, seed)
    if (folder / "model" / MANIFEST_FILE).is_file():
        return folder / "model"
    return training.run_job(row_job(plan, row, seed, output))


def control_row(plan: StudyPlan, row: StudyRow, seed: int, output) -> Path:
    """The row's untrained control for one seed: the model its run starts from (`training.export_control`)."""
    from .. import training  # the training stack (Trainer, peft, datasets), when a run needs it

    job = row_job(plan, row, seed, output, control=True)
    return training.export_control(job, run_folder(output, row, seed) / "step0")


def score_models(plan: StudyPlan, folders: list[Path], output, *, instructions: bool = True, sts_only: bool = False):
    """`evaluate.py run` of exported models on the study's tasks (finished tasks are not scored again); `sts_only`
    keeps the STS tasks of the selection (the instruction check)."""
    tasks, categories = plan.tasks, plan.categories
    if sts_only:
        from ..evaluation.local_tasks import task_type

        if tasks:
            tasks = [name for name in tasks if task_type(name, plan.data_dir) == "STS"] or None
            if tasks is None:
                return EvaluationRun()
        else:
            categories = ["STS"]
    return evaluate_models(
        [str(folder) for folder in folders],
        output=Path(output) / "results",
        tasks=tasks,
        categories=categories,
        benchmark=plan.benchmark,
        data_dir=plan.data_dir,
        budget=plan.budget,
        batch_size=plan.batch_size,
        instructions=instructions,
    )


# ---------------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------------


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
                _replicates(row, models, output, plan.budget, True),
                _replicates(row, models, output, plan.budget, False),
                _replicates(row, controls, output, plan.budget, True),
                controls,
            )
        )
    return collected


def _replicates(row: StudyRow, models: list[ExportedModel], output: Path, budget, instructions: bool):
    runs: list[ModelResults] = []
    for model in models:
        folder = results_folder(
            output / "results",
            model.mteb_name,
            evaluation_revision(model.fingerprint, budget=budget, instructions=instructions),
        )
        if folder.is_dir() and any(folder.glob("*.json")):
            runs.append(read_results(folder))
    if not runs:
        return None
    return SeedReplicates(row.label, sorted(runs, key=lambda run: run.origin.seed if run.origin else 0))


def compare_rows(a: RowResults, b: RowResults, question: str) -> list[CategoryComparison]:
    """Per category both rows scored: the pooled paired bootstrap (Holm over this comparison's categories) and the
    Wilcoxon signed-rank over the category's datasets."""
    from ..evaluation import paired
    from ..stats import wilcoxon_by_category

    found, _ = task_parts(a.replicates, b.replicates)
    wilcoxon = {
        test.category: test
        for test in wilcoxon_by_category(a.replicates.scores, b.replicates.scores, a.replicates.categories)
    }
    tests = []
    for category in sorted({item.category for item in found}, key=category_rank):
        members = [item for item in found if item.category == category]
        parts = [part for item in members for part in item.parts.values()]
        weights = [1 / len(item.parts) for item in members for _ in item.parts]
        pooled = paired.pooled_bootstrap(
            parts, weights=weights, paired_seeds=seeds_paired(a.replicates, b.replicates), task=category
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
    return tests


def comparisons(plan: StudyPlan) -> list[tuple[str, str, str]]:
    """The comparisons the study's rows allow: the paper's, the baselines', every arm against its base."""
    keys = {row.key for row in plan.rows}
    chosen = [item for item in (*PAPER_COMPARISONS, *BASELINE_COMPARISONS) if item[0] in keys and item[1] in keys]
    chosen += [
        (
            row.key,
            plan.ablation_base,
            f"ablation: {row.key.removeprefix('arm-')} vs the base arm ({plan.ablation_base})",
        )
        for row in plan.rows
        if row.kind == "arm"
    ]
    if plan.controls:
        chosen += [
            (row.key, row.key + CONTROL_SUFFIX, "trained vs untrained (step 0): what training added")
            for row in plan.rows
        ]
    return chosen


def write_report(output) -> Path:
    """`report/study.md` (+ CSVs and the figure) from what has been trained and scored so far."""
    from ..stats import markdown_table

    output = Path(output)
    plan = StudyPlan.read(output)
    trained_rows = collect(plan, output)
    collected = [
        entry
        for item in trained_rows
        for entry in (item, item.control())
        if entry.row.kind != "control" or entry.replicates is not None
    ]
    by_key = {item.row.key: item for item in collected}
    scored = [item for item in collected if item.replicates is not None]
    if not scored:
        raise StudyError(f"{output}: nothing of this study has been scored yet; run it first.")
    categories = sorted(
        {category for item in scored for category in item.replicates.categories.values()}, key=category_rank
    )
    report_folder = output / "report"
    report_folder.mkdir(parents=True, exist_ok=True)

    def cell(item: RowResults, category: str) -> str | None:
        means, spreads = item.replicates.category_means(), item.replicates.category_spread()
        if category not in means:
            return None
        spread = spreads.get(category)
        return f"{means[category]:.4f}" + (f" ± {spread:.4f}" if spread is not None else "")

    table_rows, csv_rows = [], []
    for item in scored:
        means = item.replicates.category_means()
        table_rows.append(
            [
                item.row.label,
                len(item.replicates.runs),
                *[cell(item, c) for c in categories],
                mean([means[c] for c in categories if c in means]),
            ]
        )
        spreads = item.replicates.category_spread()
        csv_rows += [
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
    tests = []
    for key_a, key_b, question in comparisons(plan):
        a, b = by_key.get(key_a), by_key.get(key_b)
        if a is not None and b is not None and a.replicates is not None and b.replicates is not None:
            tests += compare_rows(a, b, question)
    first = min(plan.seeds)
    missing = []
    for item in trained_rows:
        if lacking := sorted(set(plan.seeds) - set(item.seeds)):
            missing.append(f"{item.row.label} (seed{'s' if len(lacking) > 1 else ''} {', '.join(map(str, lacking))})")
    task_counts = {
        category: sorted(
            {task for item in scored for task, kind in item.replicates.categories.items() if kind == category}
        )
        for category in categories
    }
    lines = [
        "# The study: pooling and attention designs, per category",
        "",
        f"Backbone `{plan.backbone}`; training flags `{' '.join(plan.train_argv) or '(train.py defaults)'}`; seeds "
        f"{', '.join(map(str, plan.seeds))} (seed s gives every row the same data order). "
        + (
            f"Every task scored on at most {plan.budget} units (`--budget {plan.budget}`, the same seeded sample for "
            "every row): comparable between rows, not with published MTEB numbers."
            if plan.budget
            else "Full tasks (no budget)."
        ),
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
        "## Main table (mean main score per category, ± sample sd over seeds)",
        "",
        markdown_table(["design", "seeds", *categories, "average"], table_rows),
        "",
        "## The paper's comparisons, the baselines and the ablations",
        "",
        "Each cell: the difference of category means (row a − row b), its 95% interval, and the marker of the "
        "category-level **paired bootstrap** (`paired.pooled_bootstrap`: the units of every task in the category — "
        "pairs, queries, examples, texts — resampled, the same sample for both rows, and each row's seeds drawn "
        "with replacement, one draw for both where their seeds match; 1000 resamples; two-sided p; Holm over the "
        "categories of each comparison): ▲ row a significantly better, ▼ row b significantly better (p_Holm < "
        "0.05), none: no significant difference. Why this test: the paper's Wilcoxon signed-rank over datasets "
        "cannot reach p < 0.05 with 5 or fewer datasets per category; its p is in `study_tests.csv` (column "
        "`wilcoxon p`). With 2 seeds the bootstrap sees about 0.71 of the seed spread: read a marker that rests "
        "on the seeds with care.",
        "",
    ]
    if tests:
        pairs = list(dict.fromkeys((test.a, test.b, test.question) for test in tests))
        rows = []
        for key_a, key_b, question in pairs:
            cells = {test.category: test for test in tests if (test.a, test.b) == (key_a, key_b)}
            rows.append(
                [
                    f"{key_a} vs {key_b}",
                    question,
                    *[cells[c].cell() if c in cells else None for c in categories],
                ]
            )
        lines += [markdown_table(["a vs b", "question", *categories], rows), ""]
    else:
        lines += ["No comparison has both rows scored yet.", ""]
    lines += _instruction_section(plan, trained_rows)
    lines += recipe_sections(plan, output, trained_rows, report_folder)
    lines += _wall_time_section(trained_rows)
    lines += ["## Figures", ""]
    for name, (title, group) in figure_groups(scored, plan.ablation_base).items():
        plots.study_bars(
            report_folder / name,
            [
                plots.Bars(
                    item.row.label, item.row.kind, item.replicates.category_means(), item.replicates.category_spread()
                )
                for item in group
            ],
            categories,
            title,
        )
        lines += [f"![{title}]({name})", ""]
    lines += [
        "Bars: mean main score per category; whiskers: ± sample sd over seeds"
        + ("; open bars: the row untrained (step 0)." if plan.controls else "."),
        "",
    ]
    write_text(report_folder / "study.md", "\n".join(lines))
    write_csv(
        report_folder / "study_table.csv",
        ["row", "label", "kind", "category", "mean", "seed sd", "seeds", "tasks"],
        csv_rows,
    )
    write_csv(
        report_folder / "study_tests.csv",
        [
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
        ],
        [
            [
                t.a,
                t.b,
                t.question,
                t.category,
                t.tasks,
                t.score_a,
                t.score_b,
                t.difference,
                t.low,
                t.high,
                t.p_value,
                t.p_holm,
                t.marker,
                t.wilcoxon_p,
                t.seeds_a,
                t.seeds_b,
            ]
            for t in tests
        ],
    )
    write_csv(
        report_folder / "per_task.csv",
        ["row", "seed", "task", "category", "score"],
        [
            [item.row.key, seed, task, item.replicates.categories[task], run.scores[task]]
            for item in scored
            for seed, run in zip(item.replicates.seeds, item.replicates.runs)
            for task in item.replicates.tasks
        ],
    )
    logger.info("study report (first seed %d): %s", first, report_folder / "study.md")
    return report_folder / "study.md"


def _instruction_section(plan: StudyPlan, collected: list[RowResults]) -> list[str]:
    """Which rows used query instructions in training and evaluation, and STS with and without them at evaluation."""
    from ..evaluation import paired
    from ..stats import markdown_table

    lines = ["## Prompts", ""]
    trained_with = []
    for item in collected:
        if not item.models:
            continue
        data = item.models[0].manifest.data
        instructed = [source.get("name") for source in data.sources if source.get("instruction")]
        trained_with.append(
            f"{item.row.key}: "
            + (
                f"query instruction on every query ({data.query_instruction!r})"
                if data.query_instruction and not instructed
                else f"per-source instructions on {len(instructed)} of {len(data.sources)} sources"
                + (f", else {data.query_instruction!r}" if data.query_instruction else "")
            )
        )
    lines += [
        "Every row is trained and scored with the same instruction policy: in training, "
        + "; ".join(trained_with)
        + ". In evaluation every row gets the e5-style task instruction on queries and on symmetric "
        "tasks (`Instruct: {instruction}\\nQuery: `), documents none (`prompts.TASK_INSTRUCTIONS`). The "
        "instruction is part of every design here, not of one.",
        "",
    ]
    rows = []
    for key in plan.instruction_check:
        item = next((item for item in collected if item.row.key == key), None)
        if item is None or item.replicates is None or item.without_instructions is None:
            continue
        found, _ = task_parts(item.replicates, item.without_instructions)
        sts = [entry for entry in found if entry.category == "STS"]
        if not sts:
            continue
        parts = [part for entry in sts for part in entry.parts.values()]
        weights = [1 / len(entry.parts) for entry in sts for _ in entry.parts]
        test = paired.pooled_bootstrap(parts, weights=weights, paired_seeds=len(item.replicates.runs) > 1, task="STS")
        rows.append(
            [
                item.row.label,
                len(sts),
                test.score_a,
                test.score_b,
                test.difference,
                f"[{test.low:+.4f}, {test.high:+.4f}]",
                test.p_value,
            ]
        )
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


def recipe_sections(plan: StudyPlan, output: Path, collected: list[RowResults], report_folder: Path) -> list[str]:
    """The tuning (grid, every point's held-out loss, the choice per row, `tuning.png`) and the training each run
    got (steps, why it stopped, the layer weights' size, `curves.png`)."""
    from ..stats import markdown_table

    lines = []
    tuned = read_tuning(output) if plan.tuning else {}
    if tuned:
        grid = plan.tuning_grid
        rows = []
        for row in plan.rows:
            entry = tuned.get(row.key)
            if entry is None:
                continue
            tried = "; ".join(
                f"{point.label()}: {point.final_loss:.4f}"
                + (f" (|w| {point.layer_weights_mean_abs:.2g})" if point.layer_weights_mean_abs is not None else "")
                for point in entry.points
            )
            chosen = entry.choice.label() if entry.choice else "not yet"
            if entry.choice and at_grid_edge(entry):
                chosen += " (still at an edge of what was tried: read with care)"
            seconds = sum(point.train_runtime_s or 0.0 for point in entry.points)
            rows.append([row.label, tried, chosen, f"{seconds:.0f}"])
        lines += [
            "## Tuning (held-out training rows only)",
            "",
            f"Grid: {grid.describe()}. No evaluation task is read before every row's choice is made.",
            "",
            markdown_table(
                [
                    "row",
                    "held-out loss at the proxy's end, per point (layer weights' mean |w|)",
                    "chosen",
                    "tuning s (training)",
                ],
                rows,
            ),
            "",
            "![Held-out loss of every tuning point](tuning.png)",
            "",
        ]
        plots.curves(
            report_folder / "tuning.png",
            {
                row.label: [(point.label(), point.curve) for point in tuned[row.key].points]
                for row in plan.rows
                if row.key in tuned
            },
            title="Tuning: held-out loss per grid point (first seed)",
        )
    trained = [item for item in collected if item.models]
    if trained:
        rule = next(
            (
                model.manifest.stop.rule
                for item in trained
                for model in item.models
                if model.manifest.stop and model.manifest.stop.rule
            ),
            None,
        )
        rows = []
        for item in trained:
            stops = [model.manifest.stop for model in item.models]
            settings = item.models[0].manifest.settings
            weights = [layer_weight_size(model.folder) for model in item.models]
            rows.append(
                [
                    item.row.label,
                    settings.describe_rates() if settings else None,
                    ", ".join(str(model.manifest.global_steps) for model in item.models),
                    ", ".join(stop.reason if stop else "?" for stop in stops),
                    ", ".join(f"{weight:.2g}" for weight in weights) if None not in weights else "no weights",
                ]
            )
        lines += [
            "## Training to a plateau" if plan.plateau else "## Training",
            "",
            (f"Rule for every run: {rule}." if rule else "Every run trained the steps its flags give.")
            + " Layer weights: mean |w| of the pooling head's layer-weight matrix after training (it starts "
            "at 0 by default; a size near 0 means the weighting did not move).",
            "",
            markdown_table(["row", "rates", "steps per seed", "stopped by", "layer weights mean |w|"], rows),
            "",
        ]
        curves = {
            item.row.label: [
                (f"seed {model.manifest.seed}", model.manifest.eval_history)
                for model in item.models
                if model.manifest.eval_history
            ]
            for item in trained
        }
        if any(curves.values()):
            plots.curves(
                report_folder / "curves.png",
                {key: value for key, value in curves.items() if value},
                title="Held-out loss during training, per row and seed",
            )
            lines += ["![Held-out loss during training](curves.png)", ""]
    return lines


def at_grid_edge(entry: RowTuning) -> bool:
    """Whether a row's choice is the largest or smallest rate tried on an axis with more than one rate."""
    for axis in ("learning_rate", "head_learning_rate"):
        value = getattr(entry.choice, axis)
        tried = {getattr(point, axis) for point in entry.points} - {None}
        if value is not None and len(tried) > 1 and value in (min(tried), max(tried)):
            return True
    return False


def _wall_time_section(collected: list[RowResults]) -> list[str]:
    from ..stats import markdown_table

    rows, total = [], 0.0
    for item in collected:
        if not item.models:
            continue
        train = [model.manifest.train_runtime_s or 0.0 for model in item.models]
        scoring = [
            sum(result.evaluation_time or 0.0 for result in run.task_results)
            for run in (item.replicates.runs if item.replicates else [])
        ]
        total += sum(train) + sum(scoring)
        rows.append([item.row.label, len(train), f"{mean(train):.0f}", f"{mean(scoring):.0f}" if scoring else None])
    return [
        "## Wall time",
        "",
        markdown_table(["design", "seeds trained", "training s (mean per seed)", "scoring s (mean per seed)"], rows),
        "",
        f"Total: {total / 3600:.2f} h of training and scoring (this machine; loading and export not counted).",
        "",
    ]


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


# ---------------------------------------------------------------------------------------------------------------------
# the model card's section
# ---------------------------------------------------------------------------------------------------------------------


def card_section(output, model) -> str:
    """Markdown for the card of `model` (an `ExportedModel` or its folder), one of the study's runs: the study's
    table (this row in bold) and the comparisons this row is part of, from the written report (`write_report`).
    Raises `StudyError` when the model is not one of the study's runs or the report is missing."""
    import csv

    from ..stats import markdown_table

    output = Path(output)
    model = model if isinstance(model, ExportedModel) else ExportedModel.read(model)
    plan = StudyPlan.read(output)
    row = next(
        (
            item.row
            for item in collect(plan, output)
            if any(run.fingerprint == model.fingerprint for run in item.models)
        ),
        None,
    )
    if row is None:
        raise StudyError(
            f"{model.folder} is not one of the runs of the study in {output} (no run there has these "
            "weights); publish it without --study, or give the study it was trained in."
        )
    report = output / "report"
    if not (report / "study_table.csv").is_file():
        raise StudyError(f"{output}: the study has no report yet; write it with `study.py --report {output}`.")
    with (report / "study_table.csv").open() as handle:
        table = list(csv.DictReader(handle))
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

    rows = [
        [f"**{label}**" if label == row.label else label, *[cell(label, c) for c in categories]] for label in labels
    ]
    budget = (
        f"every task on at most {plan.budget} units (the same sample for every row), so not comparable with "
        "published MTEB numbers"
        if plan.budget
        else "full tasks"
    )
    lines = [
        f"This model is the row **{row.label}** (seed {model.manifest.seed}) of a poolattn study: "
        f"{len(plan.rows)} designs trained identically on `{plan.backbone}` (flags "
        f"`{' '.join(plan.train_argv) or 'train.py defaults'}`) with seeds {', '.join(map(str, plan.seeds))}, "
        f"scored on {budget}. Mean main score per category, ± sample sd over seeds:",
        "",
        markdown_table(["design", *categories], rows),
        "",
    ]
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
    return "\n".join(lines)
