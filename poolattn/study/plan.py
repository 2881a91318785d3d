"""What a study trains and scores (`StudyPlan`, `study.json`): its rows (designs, baselines, ablation arms), seeds,
tasks and recipe, checked before anything runs, and the comparisons its rows allow."""

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..configuration_poolattn import DESIGNS, variant_tag
from ..files import read_json, write_json
from ..hub.model_card import VARIANT_NAMES
from ..training.job import TrainingJob, flag_names
from .ablation import ABLATIONS, DEFAULT_BUDGET, DEFAULT_CATEGORIES, arm_model_name, arms
from .plateau import PlateauSettings
from .tuning import TuningGrid

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
    (
        "v5",
        "v1",
        "the paper's best design vs its simplest (multi-layers trainable + bidirectional vs EOS-last + causal)",
    ),
)


BASELINE_COMPARISONS = (
    ("v5", "mean-bidirectional", "the paper's best design vs mean pooling, bidirectional"),
    ("v5", "mean-causal", "the paper's best design vs mean pooling, causal"),
    ("v1", "mean-causal", "EOS-last vs mean pooling, causal"),
)

# arms compared with each other as well as with their base: at the base's rates the layer-weight matrix barely moves
# (so "weights off vs base" compares two near-identical models); x100 moves it, and is the on/off question asked
ARM_COMPARISONS = (
    ("arm-weights_x100", "arm-weights_off", "layer weights on, at a rate where they move (x100), vs off"),
)


INSTRUCTION_CHECK = ("v5", "mean-causal")  # one variant and one baseline scored on STS without instructions too


# What the study sets per row and seed is what a `jobs.TrainingJob` owns; these probes say which of those flags a
# plan's study sets: always (design, seed, folder, name, an arm's config), and with tuning or the plateau rule.
STRUCTURE_PROBE = {"output_dir": "-", "model_name": "-", "config_overrides": {"-": 0}}


TUNING_PROBE = {"learning_rate": 1.0, "head_learning_rate": 1.0}


PLATEAU_PROBE = PlateauSettings().job_fields()


CONTROL_SUFFIX = "-step0"  # the untrained control of a row: model name and label


CONTROL_SEEDS = ("all", "first")  # the seeds a row's untrained control is scored for (`StudyPlan.control_seeds`)


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
    controls: bool = False  # every row also scored untrained (step 0)
    control_seeds: str = "all"  # the seeds each row's control is scored for: "all", or "first" (one per row)
    ablation_base: str = "v5"  # the row every ablation arm is compared with: the arms' base variant
    full_sts: bool = False  # the best row and its control scored on the full STS tasks at the end (`full_sts`)

    def has_control(self, seed: int) -> bool:
        """Whether the runs of `seed` are scored untrained too (`controls`, `control_seeds`)."""
        return self.controls and (self.control_seeds == "all" or seed == self.seeds[0])

    @property
    def tuning_grid(self) -> TuningGrid | None:
        return TuningGrid(**self.tuning) if self.tuning else None

    @property
    def plateau_settings(self) -> PlateauSettings | None:
        # studies recorded before the choice of export exported the last step
        return PlateauSettings(**{"exported": "last", **self.plateau}) if self.plateau else None

    def recipe(self) -> dict:
        """What a study folder's runs were trained with: a resumed study must not mix in other settings."""
        # an older study's settings in full: fields added since take the value that study ran with (their default)
        plateau = asdict(self.plateau_settings) if self.plateau else None
        tuning = asdict(self.tuning_grid) if self.tuning else None
        return {"train_argv": self.train_argv, "tuning": tuning, "plateau": plateau}

    def selection(self) -> dict:
        """The study's task selection, as scoring reads it (`evaluate_models`' arguments)."""
        return dict(tasks=self.tasks, categories=self.categories, benchmark=self.benchmark, data_dir=self.data_dir)

    def scorings(self, row: StudyRow, *, control: bool = False) -> list[tuple[dict, bool]]:
        """Each scoring a trained model of `row` gets, as (task selection, with instructions): the study's tasks with
        the task instructions, and for a row of the instruction check the STS tasks of that selection without them
        (none where it has no STS task; a study of an mteb benchmark makes no check). A control: the first alone."""
        scorings = [(self.selection(), True)]
        if not control and row.key in self.instruction_check and not self.benchmark and (tasks := self.sts_tasks()):
            scorings.append(({**self.selection(), "tasks": tasks, "categories": None}, False))
        return scorings

    def full_sts_plan(self) -> "StudyPlan":
        """The plan as the full STS scoring reads it (`--full-sts`): its STS tasks, by name, and no budget."""
        return replace(self, tasks=self.sts_tasks(), categories=None, benchmark=None, budget=None)

    def sts_tasks(self) -> list[str]:
        """The STS tasks of the study's selection (its tasks or categories)."""
        from ..evaluation.local_tasks import task_type
        from ..evaluation.requests import select_tasks

        names = select_tasks(**self.selection()).names
        return [name for name in names if task_type(name, self.data_dir) == "STS"]

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
            path,
            recovery="delete it and run the same study.py command: it writes the plan again and keeps every finished "
            "run and score (each run is checked against the recipe it recorded)",
        )
        try:
            return cls(**{**values, "rows": [StudyRow(**row) for row in values["rows"]]})
        except (KeyError, TypeError) as error:  # another tool's file, or a plan of fields this version lacks
            raise StudyError(
                f"{path} is not a study plan this poolattn reads ({type(error).__name__}: {error}); give the folder "
                "of a study run by this version, or delete the file and run the study command again."
            ) from None


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
    control_seeds: str = "all",
    full_sts: bool = False,
) -> StudyPlan:
    """The study's rows and settings, checked before anything runs (raises `StudyError` or `ValueError`)."""
    from .. import training  # the training stack (Trainer, peft, datasets), when a run needs it

    _check_recipe(train_argv, tuning, plateau)
    _check_choices(seeds, ablation_base, control_seeds)
    model_args = training.parse_arguments([*train_argv, "--variant", designs])[0]  # checks flags, preset, designs
    backbone = model_args.backbone
    chosen = model_args.variants
    arm_overrides = {} if not ablation or ablation == "none" else _arms(ablation)
    if arm_overrides and ablation_base not in chosen:
        chosen = sorted([*chosen, ablation_base], key=list(DESIGNS).index)
        logger.info("the ablation arms' base is variant %d: added to the designs", ablation_base)
    rows = _rows(backbone, chosen, arm_overrides, ablation_base)
    if not (tasks or categories or benchmark):
        categories = list(DEFAULT_CATEGORIES)
    keys = {row.key for row in rows}
    check = [key for key in (INSTRUCTION_CHECK if instruction_check is None else instruction_check) if key in keys]
    return StudyPlan(
        backbone=backbone,
        seeds=list(range(seed, seed + seeds)),
        rows=rows,
        train_argv=list(train_argv),
        tasks=tasks,
        categories=categories,
        benchmark=benchmark,
        # absolute: the results record it, and the report reloads each task's gold from it (from any folder)
        data_dir=str(Path(data_dir).resolve()) if data_dir else None,
        budget=budget or None,
        batch_size=batch_size,
        instruction_check=check,
        tuning=asdict(tuning) if tuning else None,
        plateau=asdict(plateau) if plateau else None,
        controls=controls,
        control_seeds=control_seeds,
        ablation_base=variant_tag(ablation_base),
        full_sts=full_sts,
    )


def _check_choices(seeds: int, ablation_base: int, control_seeds: str) -> None:
    if seeds < 1:
        raise StudyError(f"--seeds {seeds}: give how many seeds to train each row with, >= 1 (2 or more for spreads).")
    if ablation_base not in BASE_VARIANTS:
        raise StudyError(
            f"--base-variant {ablation_base}: the arms change the layers a multi-layer head reads; give one of "
            f"{', '.join(map(str, BASE_VARIANTS))}."
        )
    if control_seeds not in CONTROL_SEEDS:
        raise StudyError(f"--controls {control_seeds}: give {' or '.join(CONTROL_SEEDS)}: the seeds scored at step 0.")


def _check_recipe(train_argv, tuning: TuningGrid | None, plateau: PlateauSettings | None) -> None:
    """The training flags and the plateau settings, before anything runs (the tuning runs first, for hours)."""
    _check_training_flags(train_argv, tuning=tuning is not None, plateau=plateau is not None)
    if plateau is not None:
        plateau.check()


def _check_training_flags(train_argv, *, tuning: bool, plateau: bool) -> None:
    """The training flags a study passes on must not set what the study sets per row (a `TrainingJob`'s fields)."""
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


def _rows(backbone: str, chosen: list, arm_overrides: dict[str, dict], ablation_base: int) -> list[StudyRow]:
    """One row per design, then one per ablation arm of the base variant."""
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
    return rows


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


def comparisons(plan: StudyPlan) -> list[tuple[str, str, str]]:
    """The comparisons the study's rows allow: the paper's, the baselines', every arm against its base, the arms
    compared with each other (`ARM_COMPARISONS`), and each row against its untrained control."""
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
    chosen += [item for item in ARM_COMPARISONS if item[0] in keys and item[1] in keys]
    if plan.controls:
        chosen += [
            (row.key, row.key + CONTROL_SUFFIX, "trained vs untrained (step 0): what training added")
            for row in plan.rows
        ]
    return chosen
