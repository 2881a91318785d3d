"""Budget mode: every task scored on at most N evaluation units, so that a study of many arms fits a small machine.

The units are what a task averages over: pairs (STS, pair classification), evaluation examples (classification; the
training examples mteb samples from are left as they are), texts to cluster (per clustering set; of a task with one
text a row, mteb's v2 clustering tasks, the rows), queries (retrieval and reranking). A seeded random sample of N
units is kept (seed 42, the same sample for every model); a retrieval corpus keeps every document judged for or
ranked under the kept queries, plus random others up to 10 x N documents.

Scores on a budget are not comparable with published MTEB numbers (fewer units, and for retrieval a smaller corpus,
which makes retrieval easier); they compare models with each other on the same sample. Evaluation stores them under
the revision `<weights fingerprint>-budget<N>`, so they never mix with full runs or reach a model card.

>>> budget_revision("0123abcd", 200)
'0123abcd-budget200'
"""

import logging
import random

logger = logging.getLogger(__name__)

SEED = 42
CORPUS_PER_QUERY = 10
# raise it whenever `cap_task` would keep other units from the same data: cached budget scores of the older sampler are
# then scored again (`sampler_key` is part of each task's cache key, `cache_keys.scoring_key`)
SAMPLER_VERSION = 1


def sampler_key(max_units: int | None) -> dict | None:
    """What decides which units a budget keeps besides its size (the revision holds the size); None without one."""
    if not max_units:
        return None
    return {"version": SAMPLER_VERSION, "seed": SEED, "corpus_per_query": CORPUS_PER_QUERY}


def budget_revision(revision: str, max_units: int | None) -> str:
    return f"{revision}-budget{max_units}" if max_units else revision


def cap_task(task, max_units: int, *, seed: int = SEED):
    """Load `task`'s data and keep at most `max_units` units of each evaluation split (see the module doc)."""
    from .local_tasks import splits_by_subset

    task.load_data()
    task_type = task.metadata.type
    for splits in splits_by_subset(task).values():
        for split in task.eval_splits:
            if split not in splits:
                continue
            if task_type in ("Retrieval", "Reranking"):
                splits[split] = _cap_retrieval(splits[split], max_units, seed)
            elif task_type == "Clustering" and _holds_sets(splits[split]):
                splits[split] = _cap_clustering_sets(splits[split], max_units, seed)
            else:
                splits[split] = _cap_rows(splits[split], max_units, seed)
    return task


def _cap_rows(dataset, max_units: int, seed: int):
    if len(dataset) <= max_units:
        return dataset
    return dataset.shuffle(seed=seed).select(range(max_units))


def _holds_sets(dataset) -> bool:
    """Whether a clustering split holds sets (a row: a list of `sentences` and their `labels`, mteb's first layout)
    rather than one text a row (its v2 tasks, e.g. `BiorxivClusteringP2P.v2`, capped by rows like the others)."""
    return "sentences" in dataset.column_names and len(dataset) > 0 and isinstance(dataset[0]["sentences"], list)


def _cap_clustering_sets(dataset, max_units: int, seed: int):
    """Each clustering set (a row of `sentences` and `labels`) cut to `max_units` random texts."""
    rng = random.Random(seed)

    def cap(row):
        keep = sorted(rng.sample(range(len(row["sentences"])), min(max_units, len(row["sentences"]))))
        labels = [row["labels"][i] for i in keep]
        if len(set(labels)) < 2 or len(keep) < 2 * len(set(labels)):  # v-measure near 1 for any model
            logger.warning(
                "budget %d keeps %d texts of %d labels of a clustering set: too few texts a label for the score to "
                "tell models apart (v-measure tends to 1); give a larger --budget",
                max_units,
                len(keep),
                len(set(labels)),
            )
        return {"sentences": [row["sentences"][i] for i in keep], "labels": labels}

    return dataset.map(cap)


def _cap_retrieval(split: dict, max_units: int, seed: int) -> dict:
    """`max_units` random queries with judgements, their judged and ranked documents, and random other documents."""
    rng = random.Random(seed)
    relevant = split["relevant_docs"]
    judged_queries = sorted(query for query in split["queries"]["id"] if relevant.get(query))
    if len(judged_queries) <= max_units:
        return split
    kept = set(rng.sample(judged_queries, max_units))
    top_ranked = split.get("top_ranked")
    needed = {doc for query in kept for doc in relevant[query]}
    if top_ranked:
        needed |= {doc for query in kept for doc in top_ranked.get(query, [])}
    others = sorted(set(split["corpus"]["id"]) - needed)
    extra = max(0, CORPUS_PER_QUERY * max_units - len(needed)) if not top_ranked else 0
    documents = needed | set(rng.sample(others, min(extra, len(others))))
    if top_ranked:
        top_ranked = {query: docs for query, docs in top_ranked.items() if query in kept}
    return {
        **split,
        "corpus": split["corpus"].filter(lambda row: row["id"] in documents),
        "queries": split["queries"].filter(lambda row: row["id"] in kept),
        "relevant_docs": {query: docs for query, docs in relevant.items() if query in kept},
        "top_ranked": top_ranked,
    }
