"""Every row of a study at its best: learning rates chosen per row on held-out training rows, then training to a
plateau of the held-out loss. Nothing here reads an evaluation task: the choice rests on the training data alone.

Tuning (`TuningGrid`): each row is trained with every point of a small grid (the backbone adapter's rate x the pooling
head's rate; rows without a head, EOS-last and mean pooling, only the first) for a short proxy (`steps`) on the
study's first seed, with `eval_fraction` of the training rows held out (the same rows for every point and every row)
and scored every `eval_steps` (contrastive loss, in-batch recall@1). The point with the lowest held-out loss at the
proxy's last evaluation is the row's rates. Every point's curve is kept in `tuning.json`, so the report shows what each
choice rests on, and a point already recorded is not trained again (the study resumes point by point).

The runs then train with the chosen rates to a plateau of their held-out loss (`study.plateau.PlateauSettings`).

>>> TuningGrid(learning_rates=[1e-4, 3e-4], head_learning_rates=[1e-3, 1e-2]).points(has_head=True)
[(0.0001, 0.001), (0.0001, 0.01), (0.0003, 0.001), (0.0003, 0.01)]
>>> TuningGrid(learning_rates=[1e-4, 3e-4], head_learning_rates=[1e-3, 1e-2]).points(has_head=False)
[(0.0001, None), (0.0003, None)]
"""

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..files import read_json, write_json
from ..manifest import MANIFEST_FILE, TrainingManifest
from ..model_folder import layer_weight_size
from ..training.job import TrainingJob, without_flags

logger = logging.getLogger(__name__)

TUNING_FILE = "tuning.json"


@dataclass
class TuningGrid:
    """The rates tried per row, and the proxy run each is judged by."""

    learning_rates: list[float]
    head_learning_rates: list[float] = field(default_factory=list)
    steps: int = 30
    eval_steps: int = 10
    eval_fraction: float = 0.01
    eval_batch_size: int = 16
    # times the grid may grow past an edge the choice sits on, per axis: 2 (until 2026-12-07) left every row of the
    # SmolLM2 study at its last adapter rate, 9x the stated grid's top, and a probe past it lowered the loss again
    extend: int = 5
    factor: float = 3.0  # the next rate past an edge: the edge's rate x factor (or / factor)
    # the learning-rate schedule each proxy follows: the full runs' length, so that a proxy is the first `steps` steps
    # of the run it stands for (warmup, then the rate the run has there); None: a schedule of its own `steps`, which
    # decays to 0 by the last evaluation and, before 2026-12-07, chose rates at which the full runs collapsed
    schedule_steps: int | None = None

    def __post_init__(self):
        if not self.learning_rates or any(not rate > 0 for rate in [*self.learning_rates, *self.head_learning_rates]):
            raise ValueError(
                f"tuning grid: give one or more learning rates > 0; got {self.learning_rates} and head "
                f"rates {self.head_learning_rates}."
            )
        if self.steps < 1 or not 1 <= self.eval_steps <= self.steps or not 0 < self.eval_fraction < 1:
            raise ValueError(
                f"tuning proxy: --tune-steps {self.steps} must be >= 1, --tune-eval-steps {self.eval_steps} in "
                f"[1, --tune-steps] and --held-out-fraction {self.eval_fraction} in (0, 1)."
            )
        if self.eval_batch_size < 1:
            raise ValueError(f"--held-out-batch-size {self.eval_batch_size}: give queries per batch, >= 1.")
        if self.schedule_steps is not None and self.schedule_steps < self.steps:
            raise ValueError(
                f"tuning proxy: the runs' schedule of {self.schedule_steps} steps is shorter than the proxy's "
                f"{self.steps} (--tune-steps); give a proxy no longer than the runs."
            )
        if self.extend < 0:
            raise ValueError(f"--tune-extend {self.extend}: give how many rates past an edge to try, >= 0.")

    def job_fields(self, learning_rate: float, head_learning_rate: float | None) -> dict:
        """The `jobs.TrainingJob` fields of one proxy run of the grid."""
        return {
            "learning_rate": learning_rate,
            "head_learning_rate": head_learning_rate,
            "max_steps": self.steps,
            "lr_schedule_steps": self.schedule_steps,
            "save_steps": self.eval_steps,
            "eval_fraction": self.eval_fraction,
            "per_device_eval_batch_size": self.eval_batch_size,
        }

    def proxy_flags(self, train_argv) -> tuple[str, ...]:
        """The runs' training flags as a proxy takes them: without the run's length, checkpoints and held-out rows
        (`--max_steps 300` says how long a run trains; its proxy trains `steps` of that schedule)."""
        proxy = TrainingJob(**self.job_fields(1.0, 1.0)).owned_flags()
        return without_flags(train_argv, proxy - TrainingJob.ALWAYS_OWNED - {"learning_rate", "head_learning_rate"})

    def points(self, *, has_head: bool) -> list[tuple[float, float | None]]:
        heads = self.head_learning_rates if has_head and self.head_learning_rates else [None]
        return [(rate, head) for rate in self.learning_rates for head in heads]

    def beyond_edge(self, choice: "TuningPoint", points: list[tuple]) -> list[tuple[float, float | None]]:
        """The points to try next when `choice` sits at the largest or smallest rate tried on an axis (at most
        `extend` steps past the stated grid; an axis of one stated rate grows upwards): the next rate past that edge,
        the other rate as chosen.

        >>> grid = TuningGrid(learning_rates=[1e-4, 3e-4], head_learning_rates=[1e-3])
        >>> grid.beyond_edge(TuningPoint(3e-4, 1e-3), grid.points(has_head=True))
        [(0.0009, 0.001), (0.0003, 0.003)]
        >>> grid.beyond_edge(TuningPoint(9e-4, 1e-3), [(1e-4, 1e-3), (3e-4, 1e-3), (9e-4, 1e-3), (1e-4, 3e-3)])
        [(0.0027, 0.001), (0.0009, 0.000333)]
        >>> grid.beyond_edge(TuningPoint(2.7e-3, 1e-3), [(1e-4, 1e-3), (3e-4, 1e-3), (9e-4, 1e-3), (2.7e-3, 1e-3)])
        [(0.0081, 0.001), (0.0027, 0.003)]
        >>> two = TuningGrid(learning_rates=[1e-4, 3e-4], head_learning_rates=[1e-3], extend=2)  # two steps past
        >>> two.beyond_edge(TuningPoint(2.7e-3, 1e-3), [(1e-4, 1e-3), (3e-4, 1e-3), (9e-4, 1e-3), (2.7e-3, 1e-3)])
        [(0.0027, 0.003)]
        """
        beyond = []
        for axis, stated in ((0, self.learning_rates), (1, self.head_learning_rates)):
            value = (choice.learning_rate, choice.head_learning_rate)[axis]
            tried = sorted({point[axis] for point in points if point[axis] is not None})
            if value is None:
                continue
            above = sum(rate > max(stated) for rate in tried)  # steps already taken past each edge
            below = sum(rate < min(stated) for rate in tried)
            if value == tried[-1] and above < self.extend:
                step = self.factor
            elif value == tried[0] and len(tried) > 1 and below < self.extend:
                step = 1 / self.factor
            else:
                continue
            rates = [choice.learning_rate, choice.head_learning_rate]
            rates[axis] = float(f"{value * step:.3g}")
            if tuple(rates) not in points:
                beyond.append(tuple(rates))
        return beyond

    def describe(self) -> str:
        heads = ", ".join(f"{rate:g}" for rate in self.head_learning_rates) or "the backbone's rate"
        return (
            f"adapter rate {{{', '.join(f'{rate:g}' for rate in self.learning_rates)}}} x pooling head rate "
            f"{{{heads}}} (rows without a head: the adapter rates alone); each point trained {self.steps} steps "
            f"on the first seed with {self.eval_fraction:.0%} of the training rows held out, scored every "
            f"{self.eval_steps} steps; chosen: the lowest held-out loss at the last evaluation; a choice at an "
            f"edge of the grid tries the next rate past it (x{self.factor:g} or /{self.factor:g}, up to "
            f"{self.extend} times per axis)"
            + (
                f"; each proxy follows the runs' learning-rate schedule ({self.schedule_steps} steps: warmup, then "
                f"the rate a run has at those steps), not one of its own {self.steps}"
                if self.schedule_steps
                else f"; each proxy's learning rate decays over its own {self.steps} steps"
            )
        )


@dataclass
class TuningPoint:
    """One grid point of one row: its rates and its held-out curve ([step, loss, recall@1] per evaluation)."""

    learning_rate: float
    head_learning_rate: float | None
    curve: list = field(default_factory=list)
    train_runtime_s: float | None = None
    layer_weights_mean_abs: float | None = None  # the head's layer-weight matrix after the proxy (None: none)
    data_fingerprint: str | None = None  # the training data the proxy read (None: a point recorded before this)

    @property
    def final_loss(self) -> float:
        return self.curve[-1][1]

    def label(self) -> str:
        head = f", head {self.head_learning_rate:g}" if self.head_learning_rate is not None else ""
        return f"lr {self.learning_rate:g}{head}"


@dataclass
class RowTuning:
    """A row's tuning: every point tried and the one chosen (`chosen` indexes `points`)."""

    row: str
    seed: int
    points: list[TuningPoint] = field(default_factory=list)
    chosen: int | None = None
    design: dict | None = None  # {"variant", "overrides"} the points trained (None: recorded before it was kept)

    @property
    def choice(self) -> TuningPoint | None:
        return self.points[self.chosen] if self.chosen is not None else None

    def point(self, learning_rate: float, head_learning_rate: float | None) -> TuningPoint | None:
        return next(
            (
                point
                for point in self.points
                if (point.learning_rate, point.head_learning_rate) == (learning_rate, head_learning_rate)
            ),
            None,
        )


def has_head(variant, overrides: dict | None = None) -> bool:
    """Whether a design has a trainable pooling head (and so a head rate to tune)."""
    from ..training.preflight import has_pooling_head

    return has_pooling_head(variant, overrides)


def read_tuning(output) -> dict[str, RowTuning]:
    """`tuning.json` of a study folder: row key -> its tuning ({} when nothing has been tuned)."""
    path = Path(output) / TUNING_FILE
    if not path.is_file():
        return {}
    values = read_json(path, recovery="delete it to tune again (the points are trained anew), or restore it")
    return {
        key: RowTuning(
            row=entry["row"],
            seed=entry["seed"],
            chosen=entry.get("chosen"),
            points=[TuningPoint(**point) for point in entry["points"]],
            design=entry.get("design"),
        )
        for key, entry in values["rows"].items()
    }


def write_tuning(output, grid: TuningGrid, tuned: dict[str, RowTuning], train_argv=None) -> Path:
    """`tuning.json`: the grid, the training flags every proxy ran with (kept from the file when not given) and every
    row's points."""
    path = Path(output) / TUNING_FILE
    if train_argv is None and path.is_file():
        train_argv = read_json(path, recovery="delete it to tune again, or restore it").get("train_argv")
    values = {"grid": asdict(grid), "rows": {key: asdict(value) for key, value in tuned.items()}}
    write_json(path, {**values, "train_argv": list(train_argv) if train_argv is not None else None})
    return path


# what a recorded point's curve means (a record without `schedule_steps` ran the proxy's own schedule: None)
PROXY_FIELDS = ("steps", "eval_steps", "eval_fraction", "eval_batch_size", "schedule_steps")


def design_record(variant, overrides: dict | None) -> dict:
    """A row's design as its tuning records it (JSON's view of it, so a read record compares equal)."""
    return json.loads(json.dumps({"variant": variant, "overrides": overrides or {}}))


def tuning_differences(
    output, grid: TuningGrid, train_argv, seed: int, data_fingerprint: str, designs: dict[str, dict] | None = None
) -> list[str]:
    """How the proxy runs recorded in a study folder's `tuning.json` differ from those this study would run (its grid's
    proxy settings, training flags, first seed, training data, and each row's design, `designs`: row key ->
    `design_record`; an ablation arm is keyed by its name whatever its base); [] when they match or nothing is
    recorded. Records written before the flags, the data or the design were kept are checked on what they hold."""
    path = Path(output) / TUNING_FILE
    if not path.is_file():
        return []
    recorded = read_json(path, recovery="delete it to tune again (the points are trained anew), or restore it")
    then = {"schedule_steps": None, **recorded.get("grid", {})}  # recorded before the field: the proxy's own
    found = [
        f"{name} {then[name]} (now {getattr(grid, name)})"
        for name in PROXY_FIELDS
        if name in then and then[name] != getattr(grid, name)
    ]
    if recorded.get("train_argv") is not None and list(recorded["train_argv"]) != list(train_argv):
        found.append(f"training flags {' '.join(recorded['train_argv'])!r} (now {' '.join(train_argv)!r})")
    for key, row in read_tuning(output).items():
        if row.seed != seed:
            found.append(f"{key}: seed {row.seed} (now {seed})")
        if other := sorted({point.data_fingerprint for point in row.points} - {None, data_fingerprint}):
            found.append(f"{key}: training data {', '.join(other)} (now {data_fingerprint})")
        if row.design is not None and key in (designs or {}) and row.design != designs[key]:
            found.append(f"{key}: design {_design_words(row.design)} (now {_design_words(designs[key])})")
    return found


def _design_words(design: dict) -> str:
    overrides = ", ".join(f"{name}={value}" for name, value in design["overrides"].items())
    return f"variant {design['variant']}" + (f" with {overrides}" if overrides else "")


def choose(points: list[TuningPoint]) -> int:
    """The point with the lowest held-out loss at its last evaluation (ties: the earlier point, lower rates)."""
    return min(range(len(points)), key=lambda index: (points[index].final_loss, index))


def tune_row(key: str, variant, overrides: dict, *, grid: TuningGrid, seed: int, output, train) -> RowTuning:
    """Train every grid point of one row for the proxy (resuming: recorded points are kept) and choose its rates;
    while the choice sits at the grid's largest or smallest rate on an axis, try the next rate beyond it
    (`TuningGrid.beyond_edge`, at most `extend` times per axis), so that no row is judged at the edge of its grid.

    `train(learning_rate, head_learning_rate, folder) -> exported folder` runs one proxy training (the study passes
    train.py with the row's flags); the point's folder is removed once its curve is recorded.
    """
    output = Path(output)
    row = read_tuning(output).get(key) or RowTuning(row=key, seed=seed)
    row.design = design_record(variant, overrides)  # checked against the record first (`tuning_differences`)
    head = has_head(variant, overrides)
    stated = grid.points(has_head=head)
    while to_train := points_to_train(row, grid, has_head=head):
        if row.points and (rate_pair := to_train[0]) not in stated:
            logger.info("tuning %s: the choice is at the edge of the grid; trying %s", key, _pair_label(rate_pair))
        for rate, head_rate in to_train:
            row.points.append(_tuning_point(rate, head_rate, output / "tuning" / key, train))
            _record(output, grid, key, row)
            logger.info("tuning %s: %s -> held-out loss %.4f", key, row.points[-1].label(), row.points[-1].final_loss)
    row.chosen = chosen_point(row, grid, has_head=head)
    _record(output, grid, key, row)
    logger.info("tuning %s: chose %s", key, row.choice.label())
    return row


def points_to_train(row: RowTuning, grid: TuningGrid, *, has_head: bool) -> list[tuple[float, float | None]]:
    """The rates of the row's next points to train: those of the stated grid not recorded yet, then, once each pass
    is complete, those past the edge its choice sits at (`TuningGrid.beyond_edge`); [] when its tuning is complete."""
    return _walk(row, grid, has_head)[0]


def chosen_point(row: RowTuning, grid: TuningGrid, *, has_head: bool) -> int:
    """The index in `row.points` of the rates a complete tuning chooses (`choose` among the points it reached)."""
    return _walk(row, grid, has_head)[1]


def _walk(row: RowTuning, grid: TuningGrid, has_head: bool) -> tuple[list, int | None]:
    """(the points to train next, the choice once none is left), replayed from the recorded points: the stated grid,
    then a step past the choice's edge per pass, at most `1 + 2 * extend` passes."""
    points, chosen = grid.points(has_head=has_head), None
    for _ in range(1 + 2 * grid.extend):
        if missing := [pair for pair in points if row.point(*pair) is None]:
            return missing, None
        current = [
            index
            for index, point in enumerate(row.points)
            if (point.learning_rate, point.head_learning_rate) in points
        ]
        chosen = current[choose([row.points[index] for index in current])]
        beyond = grid.beyond_edge(row.points[chosen], points)
        if not beyond:
            break
        points = [*points, *beyond]
    return [], chosen


def _rates(point: TuningPoint) -> tuple[float, float | None]:
    return point.learning_rate, point.head_learning_rate


def _pair_label(pair: tuple[float, float | None]) -> str:
    return f"lr {pair[0]:g}" + (f", head {pair[1]:g}" if pair[1] is not None else "")


def _tuning_point(rate: float, head: float | None, folder: Path, train) -> TuningPoint:
    """One proxy run: train, read its held-out curve and layer weights, remove its folder."""
    folder = folder / (f"lr{rate:g}" + (f"-head{head:g}" if head is not None else ""))
    exported = train(rate, head, folder)
    manifest = TrainingManifest.read(exported) if (Path(exported) / MANIFEST_FILE).is_file() else None
    if manifest is None or not manifest.eval_history:
        raise RuntimeError(f"{exported}: the tuning run recorded no held-out evaluation; it cannot be judged.")
    point = TuningPoint(
        rate,
        head,
        [list(entry) for entry in manifest.eval_history],
        manifest.train_runtime_s,
        layer_weight_size(exported),
        manifest.data.fingerprint,
    )
    shutil.rmtree(folder)
    return point


def _record(output: Path, grid: TuningGrid, key: str, row: RowTuning) -> None:
    tuned = read_tuning(output)
    tuned[key] = row
    write_tuning(output, grid, tuned)
