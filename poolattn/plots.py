"""The package's figures, drawn with matplotlib's object API (`matplotlib.figure.Figure`: no pyplot state, no global
backend switch, so importing poolattn never changes how a user's own plots render).

- `category_bars`: `evaluate.py compare`'s per-category means, one bar per model, `*` where significant;
- `study_bars`: the study's designs (or arms) per category, whiskers ± seed sd, untrained controls as open bars;
- `curves`: held-out loss against steps, one panel per row (tuning points, training seeds).
"""

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Bars:
    """One row of a grouped bar chart: its label, what it is ("variant", "baseline", "arm" or "control"), and its
    mean and spread per category."""

    label: str
    kind: str
    means: dict[str, float]
    spreads: dict[str, float | None] = field(default_factory=dict)


def _save(figure, path, **options) -> None:
    """`figure.savefig(path)`, atomically (`files.write_with`): a report killed while drawing leaves the earlier
    figure, never a truncated one beside its new tables."""
    from .files import write_with

    write_with(path, lambda file: figure.savefig(file, format=Path(path).suffix[1:], **options))


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.subplots()


def category_bars(
    path: Path, names: list[str], category_means: dict, categories: list[str], significant: dict[str, set[str]]
) -> None:
    """Per-category means of each model; `*` over a bar whose category is significant vs the baseline."""
    width = 0.8 / len(names)
    figure, axis = _figure(max(6, 1.6 * len(categories)), 4)
    for position, name in enumerate(names):
        shown = [index for index, category in enumerate(categories) if category in category_means[name]]
        values = [category_means[name][categories[index]] for index in shown]  # no bar, not a 0, where none
        xs = [index + position * width for index in shown]
        axis.bar(xs, values, width, label=name, color=f"C{position % 10}")
        for x, value, category in zip(xs, values, [categories[index] for index in shown]):
            if category in significant.get(name, set()):
                axis.text(x, value, "*", ha="center", va="bottom", fontsize=14)
    axis.set_xticks(
        [index + width * (len(names) - 1) / 2 for index in range(len(categories))], categories, rotation=20
    )
    axis.set_ylabel("mean main score")
    axis.set_title("Per-category scores (* significant vs baseline, Holm-corrected)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    _save(figure, path, dpi=120)


def study_bars(path: Path, rows: list[Bars], categories: list[str], title: str) -> None:
    """Grouped bars: one group per category, one bar per row, whiskers ± seed sd, no bar where a row has no score;
    a control ("step 0") is an open bar in the colour of the trained row just before it (its own colour where that
    row is not drawn: a control scored before its run)."""
    width = 0.8 / len(rows)
    figure, axis = _figure(max(7, 2.2 * len(categories)), 4.5)
    colours, colour = 0, None
    for position, row in enumerate(rows):
        control = row.kind == "control"
        if not control or position == 0 or rows[position - 1].kind == "control":
            colour, colours = f"C{colours % 10}", colours + 1
        shown = [index for index, category in enumerate(categories) if category in row.means]
        axis.bar(
            [index + position * width for index in shown],
            [row.means[categories[index]] for index in shown],
            width,
            label=row.label,
            yerr=[row.spreads.get(categories[index]) or 0.0 for index in shown],
            capsize=2,
            hatch="//" if row.kind == "baseline" else ("." if row.kind == "arm" else None),
            fill=not control,
            linestyle="--" if control else "-",
            **({"edgecolor": colour} if control else {"color": colour}),
        )
    axis.set_xticks([index + width * (len(rows) - 1) / 2 for index in range(len(categories))], categories)
    axis.set_ylabel("mean main score")
    axis.set_title(title)
    axis.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.08))  # below: never over a bar
    _save(figure, path, dpi=120, bbox_inches="tight")


def curves(path: Path, panels: dict[str, list[tuple[str, list]]], *, title: str) -> None:
    """One panel per row, one line per curve ([step, loss, ...] points): held-out loss against steps."""
    from matplotlib.figure import Figure

    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(3.6 * columns, 2.8 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis, (name, lines) in zip(axes.flat, panels.items()):
        for label, curve in lines:
            axis.plot([point[0] for point in curve], [point[1] for point in curve], marker=".", label=label)
        axis.set_title(name, fontsize=8)
        axis.set_xlabel("step", fontsize=7)
        axis.set_ylabel("held-out loss", fontsize=7)
        axis.tick_params(labelsize=6)
        axis.legend(fontsize=5)
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    _save(figure, path, dpi=110)
