"""Two rows' scores on the same units: each task's per-unit scores from mteb's predictions and the gold labels, and the
paired tests within each task (seeds as replicates)."""

import functools
from dataclasses import dataclass, field

from .budget import cap_task
from .local_tasks import load_task, splits_by_subset
from .replicates import SeedReplicates
from .requests import EvaluationError
from .results import ModelResults, TaskInfo


def task_gold(results: ModelResults, task: str) -> dict:
    """{subset: {split: data}} of `task` as `results`' run scored it: the same data dir and budget, so the same units.
    Raises `EvaluationError` when the data cannot be loaded."""
    return _gold(task, results.data_dir, results.budget)


@functools.lru_cache(maxsize=32)
def _gold(task: str, data_dir: str | None, budget: int | None) -> dict:
    """Loaded once per process and setting: a study compares many pairs of models on the same units."""
    try:
        loaded = load_task(task, data_dir=data_dir)
        loaded = cap_task(loaded, budget) if budget else loaded
        loaded.load_data()
    except Exception as error:  # offline without --data-dir, a moved data dir, ...
        raise EvaluationError(f"its data could not be loaded ({type(error).__name__}: {error})") from None
    return splits_by_subset(loaded)


def task_units(info: TaskInfo, data, prediction):
    """The `paired.Units` of one subset and split of a task of type `info.type`, from its gold `data` (a prediction
    shows which similarity scores a pair classification run saved). Raises `EvaluationError` saying why the task
    cannot be tested."""
    from . import paired

    if info.type == "STS":
        return paired.sts_units(data["score"])
    if info.type == "PairClassification":
        return paired.pair_classification_units(data["labels"], prediction)
    if info.type == "Classification":
        return paired.classification_units(data["label"])
    if info.type == "Clustering" and "sentences" in data.column_names:
        return paired.clustering_set_units(data["labels"])
    if info.type in ("Retrieval", "Reranking"):
        metric = paired.average_precision if info.main_score.startswith("map") else paired.ndcg_at_10
        if info.main_score not in ("ndcg_at_10", "map_at_1000"):
            raise EvaluationError(f"main score {info.main_score} (paired tests recompute ndcg_at_10 or map_at_1000)")
        return paired.retrieval_units(data["relevant_docs"], metric)
    raise EvaluationError(f"no paired test for {info.type} tasks in this layout yet")


@dataclass
class TaskParts:
    """What the paired bootstrap of one task needs, per scored subset and split ("subset/split" -> its units and each
    model's predictions, one per seed), for two models scored on the same units."""

    task: str
    category: str
    parts: dict[str, tuple] = field(default_factory=dict)  # "subset/split" -> (Units, runs_a, runs_b)


def task_parts(a: SeedReplicates, b: SeedReplicates) -> tuple[list[TaskParts], dict[str, str]]:
    """Every task both models scored, as `TaskParts`; and the tasks left out, with the reason."""
    if a.budget != b.budget:
        return [], {"all tasks": "the two runs were scored on different budgets, so their units differ"}
    found, skipped = [], {}
    for task in sorted(set(a.scores) & set(b.scores)):
        if changed := different_data(task, [*a.runs, *b.runs]) or _data_changed(task, [*a.runs, *b.runs]):
            skipped[task] = changed
            continue
        predictions_a, predictions_b = a.predictions(task), b.predictions(task)
        if predictions_a is None or predictions_b is None:
            skipped[task] = "no saved predictions (a run before poolattn kept them; re-run with --overwrite)"
            continue
        layouts = {tuple(_subsets_and_splits(predictions)) for predictions in predictions_a + predictions_b}
        if len(layouts) != 1:
            skipped[task] = "the runs scored different subsets or splits"
            continue
        parts = layouts.pop()
        try:
            gold, info = task_gold(a.runs[0], task), a.runs[0].task_info(task)
            units = {
                part: task_units(info, gold[part[0]][part[1]], predictions_a[0][part[0]][part[1]]) for part in parts
            }
        except EvaluationError as error:
            skipped[task] = str(error)
            continue
        found.append(
            TaskParts(
                task,
                a.categories[task],
                {
                    f"{subset}/{split}": (
                        part_units,
                        [predictions[subset][split] for predictions in predictions_a],
                        [predictions[subset][split] for predictions in predictions_b],
                    )
                    for (subset, split), part_units in units.items()
                },
            )
        )
    return found, skipped


def different_data(task: str, runs: list[ModelResults]) -> str | None:
    """Why the runs did not score `task` on the same data, or None: the fingerprints of the local copies they read
    differ, or some read a local copy and others the Hub (no fingerprint recorded: mteb's pinned dataset). Two
    spellings of one folder, or two identical copies, are the same data."""
    recorded = {run.task_data.get(task) for run in runs}
    if len(recorded) == 1:
        return None
    if None in recorded:
        return "some runs read a local copy of it, others the Hub's (or recorded no fingerprint)"
    return "the runs scored different copies of its data (other fingerprints)"


def _data_changed(task: str, runs: list[ModelResults]) -> str | None:
    """Why the runs' predictions cannot be paired with `task`'s gold as its local copy holds it now (the copy changed
    since some run scored it), or None. A run that recorded no fingerprint (an older poolattn) is taken as it is."""
    from .cache_keys import task_data_fingerprint

    current = task_data_fingerprint(task, runs[0].data_dir)
    recorded = {run.task_data.get(task) for run in runs} - {None}
    if current is None or recorded <= {current}:
        return None
    return (
        f"scored on other data than {runs[0].data_dir}/{task} holds now; score it again (evaluate.py run and "
        "study.py score what changed anew), or restore the copy"
    )


def seeds_paired(a: SeedReplicates, b: SeedReplicates) -> bool:
    """Whether run i of a and of b share a seed (hence the data order), for every i (runs are sorted by seed)."""
    return len(a.runs) > 1 and a.seeds == b.seeds


def paired_tests(a: SeedReplicates, b: SeedReplicates) -> tuple[list, dict[str, str]]:
    """Paired bootstrap tests of model a against model b on every task both scored on the same units, over their seed
    replicates (`paired.replicated_bootstrap`; seeds matched one to one when both have the same seeds), Holm-corrected
    within each category; and the tasks left out, with the reason. A task scored on several subsets or splits gets a
    test per subset and split (`PairedTest.part`)."""
    from . import paired

    found, skipped = task_parts(a, b)
    tests = []
    for item in found:
        for part, (units, runs_a, runs_b) in item.parts.items():
            test = paired.replicated_bootstrap(units, runs_a, runs_b, paired_seeds=seeds_paired(a, b), task=item.task)
            test.part = part if len(item.parts) > 1 else ""
            tests.append(test)
    categories = {item.task: item.category for item in found}
    for category in set(categories.values()):
        paired.holm([test for test in tests if categories[test.task] == category])
    return tests, skipped


def _subsets_and_splits(predictions: dict) -> list[tuple[str, str]]:
    return sorted((subset, split) for subset, splits in predictions.items() for split in splits)
