"""Paired tests within tasks: the bootstrap against scipy and hand-worked cases, and the main scores recomputed from
mteb's saved predictions equal mteb's own, for every task type."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_model
from test_local_tasks import wikiqa_subset

from poolattn.evaluation.paired import Units, holm, paired_bootstrap
from poolattn.stats import wilcoxon_by_category

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def mean_units(count: int) -> Units:
    return Units(count, lambda values, sample: float(np.asarray(values)[sample].mean()))


def test_the_interval_matches_scipys_paired_percentile_bootstrap():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(1)
    a, b = rng.normal(0.52, 0.2, 300), rng.normal(0.50, 0.2, 300)
    ours = paired_bootstrap(mean_units(300), a, b, resamples=4000)
    theirs = bootstrap(
        (a, b),
        lambda x, y: np.mean(x) - np.mean(y),
        paired=True,
        vectorized=False,
        n_resamples=4000,
        method="percentile",
        random_state=2,
    ).confidence_interval
    assert ours.difference == pytest.approx(a.mean() - b.mean())
    assert ours.low == pytest.approx(theirs.low, abs=0.006) and ours.high == pytest.approx(theirs.high, abs=0.006)


def test_hand_worked_cases():
    same = paired_bootstrap(mean_units(4), [0.1, 0.5, 0.2, 0.9], [0.1, 0.5, 0.2, 0.9], resamples=100)
    assert (same.difference, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    shifted = paired_bootstrap(mean_units(4), [0.3, 0.7, 0.4, 1.1], [0.1, 0.5, 0.2, 0.9], resamples=99)
    # every resample differs by exactly 0.2: the interval is a point and no resample reaches the null
    assert shifted.difference == pytest.approx(0.2) and shifted.low == pytest.approx(0.2) == shifted.high
    assert shifted.p_value == pytest.approx(1 / 100)
    tests = [paired_bootstrap(mean_units(1), [x], [0.0], resamples=9) for x in (0.0, 0.0, 0.0)]
    for test, p in zip(tests, (0.01, 0.04, 0.03)):
        test.p_value = p
    holm(tests)  # Holm by hand: 3 x 0.01, then max(0.03, 2 x 0.03), then max(0.06, 0.04)
    assert [test.p_holm for test in tests] == pytest.approx([0.03, 0.06, 0.06])


def test_half_samples_estimate_the_bootstraps_spread_without_duplicating_clustered_texts():
    """Clustering sets are half-sampled without replacement (delete-d jackknife, d = n/2): for a smooth statistic its
    interval is as wide as the ordinary bootstrap's; for V-measure it sits around the observed difference, where the
    with-replacement bootstrap, inflated by duplicated texts, can miss it."""
    from poolattn.evaluation.paired import clustering_set_units

    rng = np.random.default_rng(3)
    a, b = rng.normal(0.52, 0.2, 400), rng.normal(0.50, 0.2, 400)
    strata = [200, 200]

    def stratified_mean(values, samples):
        values = np.asarray(values)
        return float(np.mean([values[:200][samples[0]].mean(), values[200:][samples[1]].mean()]))

    ordinary = paired_bootstrap(Units(400, stratified_mean, strata=strata), a, b, resamples=2000)
    halved = paired_bootstrap(Units(400, stratified_mean, strata=strata, half_samples=True), a, b, resamples=2000)
    assert halved.high - halved.low == pytest.approx(ordinary.high - ordinary.low, rel=0.15)
    assert halved.difference == ordinary.difference

    gold = [np.repeat(np.arange(4), 40), np.repeat(np.arange(5), 30)]

    def noisy(labels, share):  # each text's cluster replaced by a random one with probability `share`
        flip = rng.random(len(labels)) < share
        return np.where(flip, rng.integers(0, labels.max() + 1, len(labels)), labels)

    better, worse = [noisy(g, 0.2) for g in gold], [noisy(g, 0.5) for g in gold]
    units = clustering_set_units(gold)
    test = paired_bootstrap(units, better, worse, resamples=400)
    assert units.half_samples and test.low < test.difference < test.high and test.difference > 0.1
    assert test.low + test.high == pytest.approx(2 * test.difference, abs=0.05)  # around the observed difference
    assert all(len(set(sample)) == len(sample) == size // 2 for sample, size in zip(units.resample(rng), (160, 150)))


def test_within_task_tests_find_what_wilcoxon_over_three_datasets_cannot():
    rng = np.random.default_rng(0)
    tests, a_scores, b_scores = [], {}, {}
    for task in ("T1", "T2", "T3"):  # model a is 0.03 better on each task, per query, with noise
        b = rng.uniform(0.2, 0.8, 400)
        a = b + 0.03 + rng.normal(0, 0.05, 400)
        tests.append(paired_bootstrap(mean_units(400), a, b, task=task))
        a_scores[task], b_scores[task] = a.mean(), b.mean()
    holm(tests)
    (wilcoxon,) = wilcoxon_by_category(a_scores, b_scores, dict.fromkeys(a_scores, "Retrieval"))
    assert wilcoxon.wins_a == 3 and wilcoxon.p_value >= 0.25  # 3 datasets: the smallest two-sided p is 0.25
    assert all(test.significant() and test.low > 0 for test in tests)


@pytest.fixture(scope="module")
def every_task_type(tmp_path_factory):
    """Two tiny models scored on one small local task of every type (budget 30), then compared."""
    mteb = pytest.importorskip("mteb")  # noqa: F841
    from poolattn import cli

    root = tmp_path_factory.mktemp("paired")
    data = root / "data"
    copies = (
        ("STSBenchmark", "test.jsonl", 40),
        ("TwitterURLCorpus", "test.jsonl", 40),
        ("EmotionClassification", "test.jsonl", 40),
        ("EmotionClassification", "train.jsonl", 120),
        ("TwentyNewsgroupsClustering", "test.jsonl", 2),
    )
    for task, file, rows in copies:
        (data / task).mkdir(parents=True, exist_ok=True)
        lines = (SHARED / task / file).read_text().splitlines()[:rows]
        (data / task / file).write_text("\n".join(lines) + "\n")
    wikiqa_subset("WikiQARetrieval", data / "MyRetrieval", queries=6)
    wikiqa_subset("WikiQAReranking", data / "MyReranking", queries=6)
    arguments = [
        "run",
        "--benchmark",
        "local",
        "--data-dir",
        str(data),
        "--output",
        str(root / "results"),
        "--budget",
        "30",
        "--batch-size",
        "16",
    ]
    for variant in (1, 5):
        tiny_model("llama", variant, seed=variant).save_pretrained(root / f"v{variant}")
        arguments += ["--model", str(root / f"v{variant}")]
    assert cli.evaluate(arguments) == 0
    folders = sorted(next(p.iterdir()) for p in (root / "results" / "results").iterdir())
    assert cli.evaluate(["compare", *map(str, folders), "--output", str(root / "cmp")]) == 0
    return root, folders


def test_recomputed_main_scores_equal_mtebs_for_every_task_type(every_task_type):
    from poolattn.evaluation.pairing import paired_tests
    from poolattn.evaluation.replicates import SeedReplicates
    from poolattn.evaluation.results import read_results

    _, folders = every_task_type
    v1, v5 = (read_results(folder) for folder in folders)
    tests, skipped = paired_tests(SeedReplicates("v5", [v5]), SeedReplicates("v1", [v1]))
    assert not skipped
    assert (
        {test.task for test in tests}
        == set(v5.scores)
        == {
            "STSBenchmark",
            "TwitterURLCorpus",
            "EmotionClassification",
            "TwentyNewsgroupsClustering",
            "MyRetrieval",
            "MyReranking",
        }
    )
    for test in tests:  # mteb stores 5 or 6 decimals
        assert test.score_a == pytest.approx(v5.scores[test.task], abs=6e-6), test.task
        assert test.score_b == pytest.approx(v1.scores[test.task], abs=6e-6), test.task
        assert test.low <= test.difference <= test.high and 0 < test.p_value <= 1


def test_the_comparison_reports_the_paired_tests(every_task_type):
    root, _ = every_task_type
    report = (root / "cmp" / "comparison.md").read_text()
    assert "paired bootstrap within each task" in report and "| MyRetrieval | Retrieval | 6 |" in report
    rows = (root / "cmp" / "paired_tests.csv").read_text().splitlines()
    assert len(rows) == 1 + 6 and rows[0].startswith("model,baseline,task,subset/split,category,units")
    assert json.loads((next(root.glob("results/results/*/*")) / "poolattn_run.json").read_text())["budget"] == 30


def test_resamples_where_the_score_is_undefined_are_left_out_not_counted_as_no_difference():
    """A resample can leave a statistic undefined (average precision with one class left in the sample): such a
    resample says nothing about the difference and is left out. Counting it as a difference of 0 pulled the interval
    to 0 and counted it as reaching the null. Checked against the same resamples computed here, undefined ones
    dropped: percentile interval and p = (1 + #{|d* - d| >= |d|}) / (valid + 1)."""
    from sklearn.metrics import average_precision_score

    from poolattn.evaluation.paired import pair_classification_units

    rng = np.random.default_rng(7)
    labels = np.zeros(20, dtype=int)
    labels[:3] = 1  # 3 positives in 20: (17/20)^20 = 4% of resamples hold none
    a = {"cosine_scores": list(labels * 0.5 + rng.normal(0, 0.3, 20))}
    b = {"cosine_scores": list(labels * 0.2 + rng.normal(0, 0.3, 20))}
    test = paired_bootstrap(pair_classification_units(labels, a), a, b, resamples=2000)

    draws, differences = np.random.default_rng(0), []
    for _ in range(2000):
        sample = draws.integers(0, 20, 20)
        if labels[sample].any():
            ap = [average_precision_score(labels[sample], np.asarray(x["cosine_scores"])[sample]) for x in (a, b)]
            differences.append(ap[0] - ap[1])
    differences = np.array(differences)
    observed = average_precision_score(labels, a["cosine_scores"]) - average_precision_score(
        labels, b["cosine_scores"]
    )
    assert 1900 < len(differences) < 2000 and test.difference == pytest.approx(observed, abs=1e-12)
    assert [test.low, test.high] == pytest.approx(np.percentile(differences, [2.5, 97.5]), abs=1e-12)
    far = np.abs(differences - observed) >= abs(observed) - 1e-12
    assert test.p_value == pytest.approx((1 + far.sum()) / (len(differences) + 1), abs=1e-12)
    assert test.resamples == len(differences)


def test_pair_classification_reads_each_models_best_score_chosen_once_on_all_pairs():
    """max_ap is the AP of the similarity score that is best on all pairs (mteb's report). The test took the best
    score anew in every resample: the maximum of several APs per resample, a statistic above the one reported."""
    from sklearn.metrics import average_precision_score

    from poolattn.evaluation.paired import pair_classification_units

    rng = np.random.default_rng(2)
    labels = np.array([1] * 10 + [0] * 30)
    predictions = {
        "cosine_scores": list(labels * 0.2 + rng.normal(0, 0.3, 40)),  # the best on all pairs (AP 0.52 vs 0.31)
        "euclidean_distances": list(rng.normal(0, 0.3, 40)),  # noise
    }
    units = pair_classification_units(labels, predictions)
    cosine, distance = np.asarray(predictions["cosine_scores"]), -np.asarray(predictions["euclidean_distances"])
    assert units.statistic(predictions, np.arange(40)) == average_precision_score(labels, cosine)
    where_noise_wins = 0
    for _ in range(200):
        sample = rng.integers(0, 40, 40)
        if len(set(labels[sample])) < 2:
            continue
        ap_cosine, ap_noise = (average_precision_score(labels[sample], x[sample]) for x in (cosine, distance))
        where_noise_wins += ap_noise > ap_cosine
        assert units.statistic(predictions, sample) == ap_cosine
    assert where_noise_wins > 0  # resamples where choosing again would have taken the noise


def test_compares_category_counts_say_tests_per_subset_and_the_tasks_behind_them():
    """A task scored on two subsets is two tests: the column said "tasks tested" and counted it twice."""
    from types import SimpleNamespace

    from poolattn.evaluation.comparison import _category_counts_table

    def test(task, difference):
        return SimpleNamespace(task=task, difference=difference, significant=lambda: False)

    table = _category_counts_table("a", "b", [test("STS17", 0.1), test("STS17", -0.1)], {"STS17": "STS"})
    assert "tests (tasks): one per subset/split" in table and "| STS | 2 (1) | 1/2 | 0 | 0 |" in table
