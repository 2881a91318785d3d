"""Paired tests within one task: two models scored on the same units (queries, pairs, examples, texts), resampled
together.

The paper's test (Wilcoxon signed-rank over datasets within a category) needs many datasets: with 5 or fewer no
two-sided p-value can fall below 0.0625, so on a small local suite it never fires. A task itself has hundreds of units,
and both models are scored on the same ones, so the difference of their main scores can be tested within the task.
This module uses the paired bootstrap (Efron & Tibshirani 1993; Koehn 2004): resample the task's units with
replacement, the same sample for both models, recompute both main scores, and take the difference. It works for main
scores that are means over units (nDCG@10 and MAP per query, accuracy per example) and for those that are not
(Spearman over pairs, average precision over pairs, V-measure over a clustering set), where per-unit sign or
Wilcoxon tests do not apply; with many units those would also call tiny differences significant.

- the interval is the 2.5th-97.5th percentile of the bootstrap differences (95%);
- the two-sided p-value counts bootstrap differences at least as far from the observed one as the observed one is
  from zero (the bootstrap distribution shifted to the null): p = (1 + #{|d* - d| >= |d|}) / (B + 1);
- a resample on which a score is undefined (average precision with one class left in the sample) is left out, and
  B counts the others (`PairedTest.resamples`).
- clustering: drawing texts with replacement puts duplicates in a set, and duplicates inflate V-measure (the interval
  of a difference then sat off the observed difference), so each resample takes half of each set's texts without
  replacement instead. That is the delete-d jackknife with d = n/2 (Shao & Wu 1989), whose variance factor
  (n - d)/d is 1: the spread of half-sample differences estimates the full-sample variance. Half-sample scores are
  shifted from full-sample ones (V-measure depends on the set size), so the differences are recentred on the
  observed one before the interval and the p-value are read.
- seed replicates (`replicated_bootstrap`): a model trained with several seeds scores the mean of its seeds, and
  each resample also draws its seeds with replacement (one draw for both models when their seeds match one to one),
  so the interval holds the training noise between seeds as well as the test-set noise.

Units and main scores, per task type (from mteb's predictions saved by the evaluation,
`predictions/<Task>_predictions.json`, and the gold of the same task data):

| type | unit | main score recomputed |
|---|---|---|
| STS | pair | Spearman of cosine similarity and gold score |
| PairClassification | pair | average precision of the best of mteb's similarity scores (max_ap) |
| Classification | evaluation example | accuracy, averaged over mteb's experiments |
| Clustering (sets) | text, half of each set drawn without replacement | V-measure, averaged over the sets |
| Retrieval, Reranking | query | nDCG@10 / MAP (average precision over the ranking) |

>>> import numpy as np
>>> same = Units(5, lambda model, sample: float(np.mean(np.asarray(model)[sample])))
>>> test = paired_bootstrap(same, [1, 2, 3, 4, 5], [1, 2, 3, 4, 5], resamples=200)
>>> test.difference, test.low, test.high, test.p_value
(0.0, 0.0, 0.0, 1.0)
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000
SEED = 0
DISTANCE_SCORES = ("euclidean_distances", "manhattan_distances")  # lower = more similar


@dataclass
class Units:
    """`count` units and `statistic(predictions, sample)`: a model's main score on the units `sample` (an index array
    into the units, or, for `strata`, one index array per stratum)."""

    count: int
    statistic: Callable
    strata: list[int] | None = None  # sizes of strata resampled separately (clustering sets)
    half_samples: bool = False  # draw half of each stratum without replacement (see the module doc)

    def resample(self, rng: np.random.Generator):
        if self.half_samples:
            sizes = self.strata or [self.count]
            samples = [np.sort(rng.choice(size, max(1, size // 2), replace=False)) for size in sizes]
            return samples if self.strata is not None else samples[0]
        if self.strata is None:
            return rng.integers(0, self.count, self.count)
        return [rng.integers(0, size, size) for size in self.strata]

    def everything(self):
        return np.arange(self.count) if self.strata is None else [np.arange(size) for size in self.strata]


@dataclass
class PairedTest:
    """Model a against model b on one task: main scores, their difference with its 95% interval, and the p-value.

    With seed replicates (`replicated_bootstrap`) the scores are means over each model's seeds."""

    task: str
    units: int
    score_a: float
    score_b: float
    difference: float  # a - b
    low: float
    high: float
    p_value: float
    resamples: int  # resamples the interval and p rest on (those with every score defined)
    p_holm: float | None = None
    seeds_a: int = 1  # training seeds (replicates) behind score_a
    seeds_b: int = 1
    paired_seeds: bool = False  # seeds matched one to one (the same seed: the same data order for both models)
    part: str = ""  # "subset/split" where a task was scored on several, else ""

    def significant(self, alpha: float = 0.05) -> bool:
        return (self.p_holm if self.p_holm is not None else self.p_value) < alpha


def paired_bootstrap(
    units: Units, predictions_a, predictions_b, *, task: str = "", resamples: int = RESAMPLES, seed: int = SEED
) -> PairedTest:
    """The paired bootstrap of `units`' statistic for two models' predictions (see the module doc)."""
    return replicated_bootstrap(units, [predictions_a], [predictions_b], task=task, resamples=resamples, seed=seed)


def replicated_bootstrap(
    units: Units,
    runs_a: list,
    runs_b: list,
    *,
    paired_seeds: bool = False,
    task: str = "",
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> PairedTest:
    """The paired bootstrap over units and, where a model was trained with several seeds, over its seeds too.

    `runs_a` and `runs_b` hold each model's predictions, one per training seed. A model's score is the mean of its
    seeds' scores. Each resample draws the units (the same for every run of both models) and, for a model with several
    seeds, as many seeds with replacement, so the interval holds both the test-set noise and the seed-to-seed
    (training) noise. With `paired_seeds` the runs are matched one to one (`runs_a[i]` and `runs_b[i]` share a seed,
    hence the data order) and one seed draw serves both models. With one seed each this is `paired_bootstrap`.
    A bootstrap over n seeds sees (n-1)/n of their variance: with 2 seeds the seed part of the interval is about
    0.71 (sqrt(1/2)) of its width; use 3 or more seeds for a claim that rests on it.
    """
    return pooled_bootstrap(
        [(units, runs_a, runs_b)], paired_seeds=paired_seeds, task=task, resamples=resamples, seed=seed
    )


def pooled_bootstrap(
    parts: list[tuple[Units, list, list]],
    *,
    weights: list[float] | None = None,
    paired_seeds: bool = False,
    task: str = "",
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> PairedTest:
    """`replicated_bootstrap` of the mean over several tasks (`parts`: each task's units and both models' runs), e.g.
    a category's mean main score: each resample draws every task's units independently (the tasks are separate
    samples) and each model's seeds once for all tasks (a seed's model is one model on every task). `weights` weigh
    the parts in the mean (default equal; e.g. 1/2 each for the two subsets of one task). `units` of the result is the
    total over the tasks. With one part this is `replicated_bootstrap`.
    """
    count_a, count_b = _seed_counts(parts, paired_seeds)
    weights = np.ones(len(parts)) if weights is None else np.asarray(weights, dtype=float)
    weights = weights / weights.sum()
    rng = np.random.default_rng(seed)
    everything = [units.everything() for units, _, _ in parts]
    score_a = float(weights @ [scores.mean() for scores in _run_scores(parts, everything, 0)])
    score_b = float(weights @ [scores.mean() for scores in _run_scores(parts, everything, 1)])
    observed = score_a - score_b
    differences = np.empty(resamples)
    for index in range(resamples):
        samples = [units.resample(rng) for units, _, _ in parts]
        draw_a = _draw_seeds(rng, count_a)
        draw_b = draw_a if paired_seeds else _draw_seeds(rng, count_b)
        mean_a = weights @ [scores[draw_a].mean() for scores in _run_scores(parts, samples, 0)]
        differences[index] = mean_a - weights @ [scores[draw_b].mean() for scores in _run_scores(parts, samples, 1)]
    # a resample whose score is undefined (average precision with one class left, ...) says nothing: left out
    differences = differences[~np.isnan(differences)]
    if not len(differences):
        raise ValueError(f"{task or 'paired bootstrap'}: the score is undefined on every resample of the units.")
    if any(units.half_samples for units, _, _ in parts):  # half samples: their spread, around the observed difference
        differences = differences - differences.mean() + observed
    far = np.abs(differences - observed) >= abs(observed) - 1e-12
    p_value = 1.0 if observed == 0 else float((1 + far.sum()) / (len(differences) + 1))
    low, high = np.percentile(differences, [2.5, 97.5])
    return PairedTest(
        task,
        sum(units.count for units, _, _ in parts),
        score_a,
        score_b,
        float(observed),
        float(low),
        float(high),
        p_value,
        len(differences),
        seeds_a=count_a,
        seeds_b=count_b,
        paired_seeds=paired_seeds,
    )


def _seed_counts(parts, paired_seeds: bool) -> tuple[int, int]:
    """How many runs (seeds) each model has, the same on every task."""
    if not parts or any(not runs_a or not runs_b for _, runs_a, runs_b in parts):
        raise ValueError("replicated_bootstrap needs at least one run (seed) of each model.")
    seeds_a, seeds_b = {len(part[1]) for part in parts}, {len(part[2]) for part in parts}
    if len(seeds_a) != 1 or len(seeds_b) != 1:
        raise ValueError("pooled_bootstrap: every task needs the same runs (seeds) of each model.")
    count_a, count_b = seeds_a.pop(), seeds_b.pop()
    if paired_seeds and count_a != count_b:
        raise ValueError(f"paired_seeds needs as many runs of each model, got {count_a} and {count_b}.")
    return count_a, count_b


def _run_scores(parts, samples, model: int) -> list[np.ndarray]:
    """Per task: each run's score of model `model` (0: a, 1: b) on that task's sample."""
    return [
        np.array([units.statistic(run, sample) for run in (runs_a, runs_b)[model]])
        for (units, runs_a, runs_b), sample in zip(parts, samples, strict=True)
    ]


def _draw_seeds(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` seed indices with replacement; one seed draws nothing (the random stream stays that of units alone)."""
    return rng.integers(0, count, count) if count > 1 else np.zeros(1, dtype=int)


def holm(tests: list[PairedTest]) -> None:
    """Holm's step-down correction over `tests` (one family, e.g. the tasks of a category), set as `p_holm`
    (`stats.holm_adjust`)."""
    from ..stats import holm_adjust

    for test, adjusted in zip(tests, holm_adjust([test.p_value for test in tests])):
        test.p_holm = adjusted


# ---------------------------------------------------------------------------------------------------------------------
# Units per task type, from mteb's saved predictions and the task's gold data
# ---------------------------------------------------------------------------------------------------------------------


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def sts_units(gold_scores) -> Units:
    gold = np.asarray(gold_scores, dtype=float)
    return Units(
        len(gold),
        lambda predictions, sample: _spearman(np.asarray(predictions["cosine_scores"])[sample], gold[sample]),
    )


def pair_classification_units(gold_labels, predictions_for_choice: dict | None = None) -> Units:
    """max_ap: the average precision of the similarity score that gives each model the best AP on all pairs, chosen
    once per model (as mteb reports it) and then read on every resample; choosing again per resample would test the
    best of several scores in each resample, a statistic above the one reported. `predictions_for_choice` is not
    read (each model's own predictions choose its score)."""
    from sklearn.metrics import average_precision_score

    labels = np.asarray(gold_labels, dtype=int)
    chosen: dict[int, tuple] = {}  # id -> (the predictions themselves, their best score): an id is never reused

    def oriented(predictions) -> dict[str, np.ndarray]:
        return {
            name: -np.asarray(values) if name in DISTANCE_SCORES else np.asarray(values)
            for name, values in predictions.items()
            if isinstance(values, list) and len(values) == len(labels)
        }

    def best_score(predictions) -> np.ndarray:
        cached = chosen.get(id(predictions))
        if cached is None or cached[0] is not predictions:
            scores = oriented(predictions)
            name = max(scores, key=lambda name: average_precision_score(labels, scores[name]))
            cached = chosen[id(predictions)] = (predictions, scores[name])
        return cached[1]

    def statistic(predictions, sample):
        if len(set(labels[sample])) < 2:
            return float("nan")
        return average_precision_score(labels[sample], best_score(predictions)[sample])

    return Units(len(labels), statistic)


def _mean_of_units(per_unit: Callable) -> Callable:
    """A statistic that is the mean of per-unit values, computed once per model's predictions."""
    cache: dict[int, tuple] = {}  # id -> (the predictions themselves, their per-unit values): an id is never reused

    def statistic(predictions, sample):
        cached = cache.get(id(predictions))
        if cached is None or cached[0] is not predictions:
            cached = cache[id(predictions)] = (predictions, per_unit(predictions))
        return float(cached[1][sample].mean())

    return statistic


def classification_units(gold_labels) -> Units:
    labels = np.asarray(gold_labels)
    # predictions: one list of predicted labels per experiment; a unit's value is its accuracy over the experiments
    per_example = lambda predictions: np.mean([np.asarray(run) == labels for run in predictions], axis=0)  # noqa: E731
    return Units(len(labels), _mean_of_units(per_example))


def clustering_set_units(gold_label_sets) -> Units:
    from sklearn.metrics import v_measure_score

    gold = [np.asarray(labels) for labels in gold_label_sets]

    def statistic(predictions, samples):  # predictions: one list of cluster assignments per set
        return float(
            np.mean(
                [
                    v_measure_score(labels[sample], np.asarray(assigned)[sample])
                    for labels, assigned, sample in zip(gold, predictions, samples)
                ]
            )
        )

    return Units(sum(map(len, gold)), statistic, strata=[len(labels) for labels in gold], half_samples=True)


def ndcg_at_10(scored: dict[str, float], relevant: dict[str, int]) -> float:
    ranked = sorted(scored, key=lambda doc: -scored[doc])[:10]
    gains = sum(relevant.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked))
    ideal = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(sorted(relevant.values(), reverse=True)[:10]))
    return gains / ideal if ideal else 0.0


def average_precision(scored: dict[str, float], relevant: dict[str, int]) -> float:
    judged = {doc for doc, gain in relevant.items() if gain > 0}
    hits, total = 0, 0.0
    for rank, doc in enumerate(sorted(scored, key=lambda doc: -scored[doc])[:1000], start=1):
        if doc in judged:
            hits += 1
            total += hits / rank
    return total / len(judged) if judged else 0.0


def retrieval_units(relevant_docs: dict[str, dict[str, int]], metric: Callable) -> Units:
    queries = sorted(query for query, docs in relevant_docs.items() if any(gain > 0 for gain in docs.values()))

    def per_query(predictions):  # predictions: query -> {document: score}
        return np.array([metric(predictions.get(query, {}), relevant_docs[query]) for query in queries])

    return Units(len(queries), _mean_of_units(per_query))
