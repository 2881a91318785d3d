"""Wilcoxon signed-rank per category with Holm correction: against scipy and hand-worked examples."""

import random

import pytest
from scipy.stats import wilcoxon

from poolattn.stats import category_test_table, holm_adjust, markdown_table, wilcoxon_by_category


def test_holm_by_hand():
    # sorted: 0.01 x3 = 0.03; 0.03 x2 = 0.06; 0.04 x1 = 0.04 -> kept monotone at 0.06
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjust([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm_adjust([0.02]) == pytest.approx([0.02])
    assert holm_adjust([]) == []


def test_all_positive_differences_by_hand():
    # 6 positive differences: W- = 0, exact two-sided p = 2 / 2**6
    a = {f"t{i}": 0.5 + i / 10 for i in range(6)}
    b = {task: score - 0.01 * (i + 1) for i, (task, score) in enumerate(a.items())}
    (test,) = wilcoxon_by_category(a, b, dict.fromkeys(a, "STS"))
    assert (test.statistic, test.p_value, test.wins_a) == (0.0, pytest.approx(2 / 64), 6)
    assert test.p_holm == pytest.approx(2 / 64) and test.significant(0.05)


def test_matches_scipy_per_category_and_holm_across_categories():
    rng = random.Random(0)
    tasks = {
        f"{category}{i}": category
        for category, count in (("STS", 9), ("Classification", 8), ("Retrieval", 6))
        for i in range(count)
    }
    a = {task: rng.uniform(0.4, 0.9) for task in tasks}
    b = {task: score + rng.gauss(0.02, 0.03) for task, score in a.items()}
    tests = {test.category: test for test in wilcoxon_by_category(a, b, tasks)}
    raw = []
    for category in sorted(tests):
        names = sorted(task for task, c in tasks.items() if c == category)
        expected = wilcoxon([a[t] for t in names], [b[t] for t in names])
        assert tests[category].statistic == pytest.approx(expected.statistic)
        assert tests[category].p_value == pytest.approx(expected.pvalue)
        raw.append(expected.pvalue)
    assert [tests[c].p_holm for c in sorted(tests)] == pytest.approx(holm_adjust(raw))


def test_small_categories_are_tested_but_left_out_of_holm_and_flagged():
    a = {"s1": 0.9, "s2": 0.8, "s3": 0.7, "s4": 0.6, "s5": 0.5, "r1": 0.3, "r2": 0.4}
    b = {"s1": 0.8, "s2": 0.7, "s3": 0.6, "s4": 0.5, "s5": 0.4, "r1": 0.2, "r2": 0.5}
    categories = {**dict.fromkeys(["s1", "s2", "s3", "s4", "s5"], "STS"), "r1": "Retrieval", "r2": "Retrieval"}
    retrieval, sts = wilcoxon_by_category(a, b, categories)
    assert (retrieval.category, retrieval.n_datasets, retrieval.enough_datasets, retrieval.p_holm) == (
        "Retrieval",
        2,
        False,
        None,
    )
    assert retrieval.p_value is not None and sts.p_holm == pytest.approx(sts.p_value)  # a family of one
    table = category_test_table([retrieval, sts], "v5", "v1")
    assert "too few datasets" in table and "v5 better" not in table.split("\n")[2]
    assert "| STS | 5 | 0.7000 | 0.6000 | 5/5 |" in table


def test_identical_scores_and_missing_tasks():
    a = {"x": 0.5, "y": 0.6, "only_a": 0.9}
    (test,) = wilcoxon_by_category(a, {"x": 0.5, "y": 0.6}, {"x": "STS", "y": "STS", "only_a": "STS"})
    assert (test.n_datasets, test.p_value, test.statistic) == (2, 1.0, 0.0)


def test_markdown_table_renders_numbers_and_gaps():
    assert markdown_table(["a", "b"], [[0.123456, None], ["x", 3]]) == (
        "| a | b |\n|---|---|\n| 0.1235 | — |\n| x | 3 |"
    )
