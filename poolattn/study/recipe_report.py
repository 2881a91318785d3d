"""The report's sections on how each row was trained: the rates chosen on held-out training rows (table and
`tuning.png`), the steps, stop and layer-weight size of every run with the learning curves (`curves.png`), and the
wall time per stage."""

from pathlib import Path

from .. import plots
from ..evaluation.results import mean
from ..model_folder import layer_weight_size
from .compare import RowResults, scoring_seconds
from .plan import StudyPlan
from .tuning import RowTuning, read_tuning


def recipe_sections(plan: StudyPlan, output: Path, collected: list[RowResults], report_folder: Path) -> list[str]:
    """The tuning (grid, every point's held-out loss, the choice per row, `tuning.png`) and the training each run
    got (steps, why it stopped, the layer weights' size, `curves.png`)."""
    tuned = read_tuning(output) if plan.tuning else {}
    trained = [item for item in collected if item.models]
    return [
        *(_tuning_section(plan, tuned, report_folder) if tuned else []),
        *(_training_section(plan, trained, report_folder) if trained else []),
    ]


def _tuning_section(plan: StudyPlan, tuned: dict, report_folder: Path) -> list[str]:
    from ..stats import markdown_table

    lines = []
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
        f"Grid: {grid.describe()}. Each row is tuned just before its first run; no evaluation task is read while a "
        "row is tuned, and the choice rests on the held-out training rows alone (the grid is fixed by the study's "
        "plan).",
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
    return lines


def _training_section(plan: StudyPlan, trained: list[RowResults], report_folder: Path) -> list[str]:
    from ..stats import markdown_table

    lines = []
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
                ", ".join(
                    str(stop.exported_step) if stop and stop.exported_step is not None else "last" for stop in stops
                ),
                ", ".join(stop.reason if stop else "?" for stop in stops),
                ", ".join(f"{weight:.2g}" for weight in weights) if None not in weights else "no weights",
            ]
        )
    lines += [
        "## Training to a plateau" if plan.plateau else "## Training",
        "",
        (f"Rule for every run: {rule}; {plan.plateau_settings.describe_export()}." if rule and plan.plateau else "")
        + ("" if rule else "Every run trained the steps its flags give.")
        + " Layer weights: mean |w| of the pooling head's layer-weight matrix after training (it starts "
        "at 0 by default; a size near 0 means the weighting did not move).",
        "",
        markdown_table(
            ["row", "rates", "steps per seed", "step exported", "stopped by", "layer weights mean |w|"], rows
        ),
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


def wall_time_section(collected: list[RowResults], tuned: dict[str, RowTuning] | None = None) -> list[str]:
    """Each row's wall time by stage: its tuning (every proxy point's training), its runs' training and scoring (STS
    without instructions too, for a row of the instruction check), its untrained controls' scoring; and the total of
    every stage (loading and export not counted)."""
    from ..stats import markdown_table

    rows, total = [], 0.0
    for item in collected:  # a row tuned, or with its control scored, before its first run counts too
        entry = (tuned or {}).get(item.row.key)
        tuning = sum(point.train_runtime_s or 0.0 for point in entry.points) if entry else None
        train = [model.manifest.train_runtime_s or 0.0 for model in item.models]
        parts = (item.replicates, item.without_instructions, item.controls)
        scored, plain, controls = ([seconds for _, seconds in scoring_seconds(part)] for part in parts)
        if tuning is None and not train and not controls:
            continue
        total += (tuning or 0.0) + sum(train) + sum(scored) + sum(plain) + sum(controls)
        rows.append(
            [
                item.row.label,
                f"{tuning:.0f}" if tuning is not None else None,
                len(train),
                f"{mean(train):.0f}" if train else None,
                f"{(sum(scored) + sum(plain)) / len(scored):.0f}" if scored else None,
                f"{sum(controls):.0f}" if controls else None,
            ]
        )
    header = ["design", "tuning s", "seeds trained", "training s (mean per seed)", "scoring s (mean per seed)"]
    return [
        "## Wall time",
        "",
        markdown_table([*header, "controls' scoring s"], rows),
        "",
        f"Total: {total / 3600:.2f} h of tuning, training and scoring (this machine; loading and export not counted).",
        "",
    ]
