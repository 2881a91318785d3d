"""Paired significance tests between two models' MTEB scores, per task category (the paper's Section 5 analysis).

>>> a = {"STS12": 0.70, "STS13": 0.80, "STS14": 0.75, "STS15": 0.82, "STS16": 0.79, "STSB": 0.81}
>>> b = {"STS12": 0.69, "STS13": 0.78, "STS14": 0.72, "STS15": 0.78, "STS16": 0.74, "STSB": 0.75}
>>> test = wilcoxon_by_category(a, b, dict.fromkeys(a, "STS"))[0]
>>> test.n_datasets, round(test.p_value, 5), test.enough_datasets
(6, 0.03125, True)

The Wilcoxon signed-rank test pairs the two models' main scores by dataset within a category (scipy, exact p-value
for small samples, two-sided). p-values are Holm-corrected across the categories that have enough datasets: the
paper tested only categories with more than 4 (with 4 or fewer, no two-sided p-value can fall below 0.125).
"""

from dataclasses import dataclass

MIN_DATASETS = 5  # the paper tested categories with more than 4 datasets


@dataclass(frozen=True)
class CategoryTest:
    """Model A vs model B on one task category."""

    category: str
    n_datasets: int
    mean_a: float
    mean_b: float
    wins_a: int  # datasets where A scores higher
    statistic: float | None  # Wilcoxon W (the smaller rank sum), None when untestable
    p_value: float | None
    p_holm: float | None  # None for categories outside the Holm family (too few datasets)
    enough_datasets: bool

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_holm is not None and self.p_holm < alpha


def holm_adjust(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    >>> holm_adjust([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running_max = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running_max = max(running_max, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running_max
    return adjusted


def wilcoxon_by_category(
    scores_a: dict[str, float],
    scores_b: dict[str, float],
    categories: dict[str, str],
    *,
    min_datasets: int = MIN_DATASETS,
) -> list[CategoryTest]:
    """One `CategoryTest` per category over the tasks both models have, sorted by category name.

    scores_*: task name -> main score; categories: task name -> category (e.g. mteb's task type).
    """
    from scipy.stats import wilcoxon

    shared = sorted(set(scores_a) & set(scores_b) & set(categories))
    by_category: dict[str, list[str]] = {}
    for task in shared:
        by_category.setdefault(categories[task], []).append(task)
    rows = []
    for category in sorted(by_category):
        tasks = by_category[category]
        a, b = [scores_a[t] for t in tasks], [scores_b[t] for t in tasks]
        statistic = p_value = None
        if any(x != y for x, y in zip(a, b)):
            result = wilcoxon(a, b, alternative="two-sided")
            statistic, p_value = float(result.statistic), float(result.pvalue)
        elif tasks:
            statistic, p_value = 0.0, 1.0  # identical scores everywhere: no difference to find
        rows.append(
            dict(
                category=category,
                n_datasets=len(tasks),
                mean_a=sum(a) / len(a),
                mean_b=sum(b) / len(b),
                wins_a=sum(x > y for x, y in zip(a, b)),
                statistic=statistic,
                p_value=p_value,
                enough_datasets=len(tasks) >= min_datasets,
            )
        )
    family = [row for row in rows if row["enough_datasets"] and row["p_value"] is not None]
    for row, adjusted in zip(family, holm_adjust([row["p_value"] for row in family])):
        row["p_holm"] = adjusted
    return [CategoryTest(p_holm=row.pop("p_holm", None), **row) for row in rows]


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub Markdown table; floats with 4 decimals, None as an em dash."""

    def cell(value) -> str:
        if value is None:
            return "—"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(test: CategoryTest, name_a: str, name_b: str, alpha: float = 0.05) -> str:
    """What a test says in words: which model is better, no difference, or why it cannot say."""
    if not test.enough_datasets:
        return f"too few datasets (< {MIN_DATASETS}) for the test to mean much"
    if test.significant(alpha):
        return f"{name_a if test.mean_a > test.mean_b else name_b} better (p_Holm < {alpha})"
    return "no significant difference"


def category_test_table(tests: list[CategoryTest], name_a: str, name_b: str, alpha: float = 0.05) -> str:
    """Markdown: per category, both means, wins, W, p, Holm p, and a verdict (or why there is none)."""
    rows = [
        [
            test.category,
            test.n_datasets,
            test.mean_a,
            test.mean_b,
            f"{test.wins_a}/{test.n_datasets}",
            test.statistic,
            test.p_value,
            test.p_holm,
            verdict(test, name_a, name_b, alpha),
        ]
        for test in tests
    ]
    header = ["category", "datasets", name_a, name_b, f"{name_a} wins", "W", "p", "p (Holm)", "verdict"]
    return markdown_table(header, rows)
