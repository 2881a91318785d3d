"""Run a study: each row's rates tuned on held-out training rows, its untrained control, its training runs (one per
seed, to the plateau when asked) and their scores, in an order that resumes; progress as "step k of N".
The user's guide is the package's docstring (`python study.py --help`)."""

import dataclasses
import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ..evaluation.scoring import EvaluationRun, evaluate_models
from ..files import folder_lock
from ..launch import is_main_process, launched_processes
from ..manifest import MANIFEST_FILE
from ..model_folder import weights_record
from ..training.job import TrainingJob
from .changes import keep_earlier_tests, read_earlier_tests
from .full_sts import best_row_folders, check_full_sts
from .plan import CONTROL_SUFFIX, PLAN_FILE, StudyError, StudyPlan, StudyRow, run_folder
from .progress import StudyProgress, recorded_costs
from .records import check_recorded_scores
from .report import write_report
from .tuning import (
    TUNING_FILE,
    RowTuning,
    chosen_point,
    design_record,
    has_head,
    points_to_train,
    read_tuning,
    tune_row,
    tuning_differences,
    write_tuning,
)

logger = logging.getLogger(__name__)


@dataclass
class StudyRun:
    """What `run_study` did: the report (None on processes other than 0), the tasks that failed to score and the
    scores the report left out (`report.StudyReport.left_out`)."""

    report: Path | None
    failures: list = field(default_factory=list)  # evaluation.TaskFailure
    left_out: list[str] = field(default_factory=list)


def run_study(plan: StudyPlan, output, *, earlier_tests=None, tune_only: bool = False) -> StudyRun:
    """Train and score every row once per seed in `run_order` (the designs and baselines, seed by seed, then the
    ablation arms the same way), each row's rates tuned just before its first run (with a tuning grid), each run
    scored as soon as it is trained, its untrained control first with `controls`; the rows of the instruction check
    also on the STS tasks without instructions; then write the report. `earlier_tests` (an earlier study's
    `study_tests.csv`) is checked first and kept in the folder once the study may run there (`--previous-tests`).
    `tune_only` runs the tuning stage of every row and stops (no report): the rates can be read, or the tuning run
    on another machine, before the runs spend their hours."""
    output = Path(output)
    if earlier_tests:
        read_earlier_tests(earlier_tests)
    if (output / PLAN_FILE).is_file() and (earlier := StudyPlan.read(output)).recipe() != plan.recipe():
        raise StudyError(
            f"{output} holds a study trained with other flags or another tuning / plateau setting "
            f"({' '.join(earlier.train_argv)}; tuning {earlier.tuning}; plateau {earlier.recipe()['plateau']}); use "
            "another --output, or the same settings to resume it."
        )
    if tune_only and not plan.tuning:
        raise StudyError("tune_only: the plan has no tuning grid; plan the study with one (--tune).")
    distributed = launched_processes() > 1
    if distributed and (left := one_process_work_left(plan, output)):
        raise StudyError(
            f"tuning (--tune) and untrained controls (--controls) run in one process, and this study has some left: "
            f"{'; '.join(left)}. Run the same command without torchrun until they are done (--tune-only stops after "
            "the tuning), then again under torchrun: its runs resume there."
        )
    check_rows_build(plan)
    check_scoring(plan)
    check_full_sts(plan)
    if plan.tuning:
        check_tuning_record(plan, output)
    output.mkdir(parents=True, exist_ok=True)
    with folder_lock(output, what="study"):  # a second study into this folder is refused, by name
        if earlier_tests and is_main_process():
            keep_earlier_tests(earlier_tests, output)
        if tune_only:
            return _tune_locked(plan, output)
        return _run_locked(plan, output, distributed)


def one_process_work_left(plan: StudyPlan, output) -> list[str]:
    """The tuning and control steps the study still has to run, which run in one process (not under torchrun): a row
    whose tuning has points left to train or no recorded choice, a control not exported yet."""
    left = []
    tuned = read_tuning(output) if plan.tuning else {}
    for row in plan.rows:
        if plan.tuning and not row_tuned(plan, tuned, row):
            left.append(f"{row.label}: tuning")
        left += [
            f"{row.label}, seed {seed}: control"
            for seed in plan.seeds
            if plan.has_control(seed) and not (run_folder(output, row, seed) / "step0" / MANIFEST_FILE).is_file()
        ]
    return left


def row_tuned(plan: StudyPlan, tuned: dict, row: StudyRow) -> bool:
    """Whether the row's tuning is done: every point of its grid walk trained and its choice recorded."""
    record, head = tuned.get(row.key), has_head(row.variant, row.overrides)
    return not (
        record is None
        or points_to_train(record, plan.tuning_grid, has_head=head)
        or record.chosen != chosen_point(record, plan.tuning_grid, has_head=head)
    )


def steps_done(plan: StudyPlan, output) -> dict[str, int]:
    """How many steps of each stage the study's folder holds done already (the ETA leaves them out)."""
    tuned = read_tuning(output) if plan.tuning else {}
    done = {"tuning": sum(row_tuned(plan, tuned, row) for row in plan.rows) if plan.tuning else 0}
    pairs = [(row, seed) for row in plan.rows for seed in plan.seeds]
    done["control"] = sum(
        plan.has_control(seed) and (run_folder(output, row, seed) / "step0" / MANIFEST_FILE).is_file()
        for row, seed in pairs
    )
    done["training"] = sum(step_state(run_folder(output, row, seed)) == "done already" for row, seed in pairs)
    return done


def check_rows_build(plan: StudyPlan) -> None:
    """Every row's design (an arm's overrides included) builds on the study's backbone, before any row trains: a layer
    spec the backbone is too shallow for is refused now, not after the other rows have trained."""
    from transformers import AutoConfig

    from ..backbones import resolve_backbone
    from ..configuration_poolattn import PoolAttnConfig

    text_config = AutoConfig.from_pretrained(resolve_backbone(plan.backbone))
    for row in plan.rows:
        try:
            PoolAttnConfig.from_variant(row.variant, text_config, **row.overrides)
        except ValueError as error:
            raise StudyError(f"{row.label}: {error} (backbone {plan.backbone})") from None


def check_scoring(plan: StudyPlan) -> None:
    """The study's tasks, budget and batch size as scoring will read them, before any row trains: an unknown task, a
    category the data dir has no task of or a task without a local copy is refused now, not after a run has
    trained (`evaluate_models` refuses them only when it scores)."""
    from ..evaluation.scoring import check_scoring_request

    check_scoring_request(
        tasks=plan.tasks,
        categories=plan.categories,
        benchmark=plan.benchmark,
        data_dir=plan.data_dir,
        budget=plan.budget,
        batch_size=plan.batch_size,
    )


def check_tuning_record(plan: StudyPlan, output: Path) -> None:
    """A `tuning.json` already in the folder (resumed, or copied from another study to reuse its choices) holds proxy
    runs of this study's grid settings, training flags, first seed and training data, else its points would be read
    as this study's: refused before anything runs."""
    from .. import training  # the training stack (Trainer, peft, datasets), when a run needs it
    from ..training.sources import fingerprint_files

    data = fingerprint_files(training.parse_arguments([*plan.train_argv, "--variant", "1"])[1].train_data)
    designs = {row.key: design_record(row.variant, row.overrides) for row in plan.rows}
    if differences := tuning_differences(output, plan.tuning_grid, plan.train_argv, plan.seeds[0], data, designs):
        raise StudyError(
            f"{output / TUNING_FILE} records proxy runs other than this study's: {'; '.join(differences)}. Its points "
            "would be read as trained with this study's settings. Use the settings it records, or move it away "
            "(every point is then trained anew)."
        )


def _tune_locked(plan: StudyPlan, output: Path) -> StudyRun:
    """The tuning stage alone: every row tuned in the order its runs would come (`run_order`), nothing else."""
    _write_plan(plan, output)
    progress = StudyProgress(
        plan, stages=("tuning",), recorded=recorded_costs(plan, output), done=steps_done(plan, output)
    )
    for row, seed in run_order(plan):
        if seed == plan.seeds[0]:
            tune_step(plan, row, output, progress)
    logger.info("study: %s", progress.summary())
    return StudyRun(None)


def _write_plan(plan: StudyPlan, output: Path) -> None:
    """`study.json`, and with a tuning grid a new `tuning.json` (a new tuning: every point runs with these flags)."""
    plan.write(output)
    if plan.tuning and not (output / TUNING_FILE).is_file():
        write_tuning(output, plan.tuning_grid, {}, plan.train_argv)


def _run_locked(plan: StudyPlan, output: Path, distributed: bool) -> StudyRun:
    """Every step in `run_order`; under torchrun (`distributed`) the runs alone, their tuning and controls done
    already (`one_process_work_left`), and process 0 scores every model at the end."""
    _write_plan(plan, output)
    stages = ("training",) if distributed else ("tuning", "control", "training")
    progress = StudyProgress(plan, stages, recorded=recorded_costs(plan, output), done=steps_done(plan, output))
    failures = []
    trained: list[tuple[StudyRow, int, Path]] = []
    for row, seed in run_order(plan):
        if plan.tuning and seed == plan.seeds[0] and not distributed:  # each row tuned just before its first run
            tune_step(plan, row, output, progress)
        folder = run_folder(output, row, seed)
        if plan.has_control(seed) and not distributed:
            state = "done already" if (folder / "step0" / MANIFEST_FILE).is_file() else "ran now"
            control = partial(control_step, plan, row, seed, output, failures)
            progress.step("control", row, seed, control, state=state)
        # under torchrun every process trains; process 0 scores all at the end
        run = partial(training_step, plan, row, seed, output, failures, score=not distributed)
        trained.append((row, seed, progress.step("training", row, seed, run, state=step_state(folder))))
    if not is_main_process():
        return StudyRun(None)
    if distributed:
        for row, seed, folder in trained:
            if plan.has_control(seed):
                failures += score_models(plan, [folder / "step0"], output).failures
            failures += score_run(plan, row, folder, output)
    if plan.full_sts and not failures:  # every run scored: the best row and its control on the full STS tasks
        full = partial(score_models, plan.full_sts_plan(), best_row_folders(plan, output), output)
        failures += progress.step("full STS", None, None, full, state="ran now").failures
    elif plan.full_sts:
        logger.warning("study: the full STS scoring waits for every task to score (%d failed)", len(failures))
    logger.info("study: %s", progress.summary())
    report = write_report(output)
    return StudyRun(report.path, failures, report.left_out)


def run_order(plan: StudyPlan) -> list[tuple[StudyRow, int]]:
    """The order the study trains its (row, seed) runs in: breadth first within two groups, the designs and
    baselines (the study's main question) before the ablation arms: every design's first seed, then every design's
    second seed, ..., then the arms likewise. A study cut short then holds complete seeds of the designs first, and
    every seed of a row still comes after that row's first (where it is tuned)."""
    designs = [row for row in plan.rows if row.kind != "arm"]
    arms = [row for row in plan.rows if row.kind == "arm"]
    return [(row, seed) for group in (designs, arms) for seed in plan.seeds for row in group]


def tune_step(plan: StudyPlan, row: StudyRow, output: Path, progress: StudyProgress) -> None:
    """The row's tuning as a step of the study ("done already" when every point of its grid has a record)."""
    before = read_tuning(output).get(row.key)
    tried = len(before.points) if before else 0
    progress.step(
        "tuning",
        row,
        plan.seeds[0],
        lambda: tune(plan, row, output),
        state=lambda tuned: "done already" if len(tuned.points) == tried else "resumed" if tried else "ran now",
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
        flags=grid.proxy_flags(plan.train_argv),
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
    them (`row_job`); a finished run is kept only when its recipe, design, seed and data are this row's (train.py's
    own check: an edited training file, or another base's arm in the folder, is refused)."""
    from .. import training  # the training stack (Trainer, peft, datasets), when a run needs it

    return training.run_job(row_job(plan, row, seed, output))


def control_step(plan: StudyPlan, row: StudyRow, seed: int, output, failures: list) -> Path:
    """The row's untrained control, written and scored (the tasks that failed to score added to `failures`): one
    step of the study's progress, its time the scoring's."""
    control = control_row(plan, row, seed, output)
    failures += score_models(plan, [control], output).failures
    return control


def training_step(plan: StudyPlan, row: StudyRow, seed: int, output, failures: list, *, score: bool) -> Path:
    """One run of `row` trained and, with `score`, scored (failures added to `failures`): one step of the progress."""
    folder = train_row(plan, row, seed, output)
    if score:
        failures += score_run(plan, row, folder, output)
    return folder


def control_row(plan: StudyPlan, row: StudyRow, seed: int, output) -> Path:
    """The row's untrained control for one seed: the model its run starts from (`training.export_control`)."""
    from .. import training  # the training stack (Trainer, peft, datasets), when a run needs it

    job = row_job(plan, row, seed, output, control=True)
    return training.export_control(job, run_folder(output, row, seed) / "step0")


def score_run(plan: StudyPlan, row: StudyRow, folder: Path, output) -> list:
    """Every scoring of one trained model of `row` (`StudyPlan.scorings`); the tasks that failed to score."""
    failures = []
    for selection, instructions in plan.scorings(row):
        failures += score_models(plan, [folder], output, selection=selection, instructions=instructions).failures
    return failures


def score_models(plan: StudyPlan, folders: list[Path], output, *, selection=None, instructions: bool = True):
    """`evaluate.py run` of exported models on `selection` (default: the study's tasks; finished tasks are not scored
    again); the models copied without their weights (`records`) are checked instead, their scores must stand."""
    selection = selection or plan.selection()
    recorded = [folder for folder in folders if weights_record(folder) is not None]
    for folder in recorded:  # copied without weights (`records`): their scores must all be there already
        check_recorded_scores(plan, folder, output, selection=selection, instructions=instructions)
    folders = [folder for folder in folders if folder not in recorded]
    if not folders:
        return EvaluationRun()
    return evaluate_models(
        [str(folder) for folder in folders],
        output=Path(output) / "results",
        **selection,
        budget=plan.budget,
        batch_size=plan.batch_size,
        instructions=instructions,
    )
