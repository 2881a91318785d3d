"""Score embedding models on MTEB with the real mteb package (offline on local task copies), and compare them.

`evaluate_models` runs mteb on poolattn folders, poolattn Hub repositories and sentence-transformers models and writes
mteb's results layout (`results.py`); `compare_results` writes per-task and per-category tables, Wilcoxon signed-rank
tests per category with Holm correction, a figure and a summary for model cards. Both raise `EvaluationError` (or
`results.ResultsError`) for bad input; `poolattn.cli` turns them into exit codes.
"""

import csv
import dataclasses
import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .. import plots
from ..files import content_hash, write_text
from ..manifest import ExportedModel, is_poolattn_folder, model_fingerprint
from ..prompts import QUERY_PROMPT_FORMAT
from .budget import budget_revision, cap_task
from .local_tasks import LocalTaskError, is_mteb_task, load_task, scan, splits_by_subset, task_type
from .results import (
    CATEGORY_ORDER,
    PREDICTIONS_FOLDER,
    ModelResults,
    SeedReplicates,
    TaskInfo,
    TrainingOrigin,
    category_rank,
    group_replicates,
    mean,
    read_run_settings,
    read_runs,
    results_folder,
    write_run_settings,
)

logger = logging.getLogger(__name__)


class EvaluationError(ValueError):
    """A selection or input that cannot be evaluated; the message says what was given and what to do."""


# ---------------------------------------------------------------------------------------------------------------------
# Models and tasks
# ---------------------------------------------------------------------------------------------------------------------


def hub_poolattn_snapshot(model: str) -> str | None:
    """The local snapshot of a Hub repository published by poolattn (`publish.py`), else None."""
    if Path(model).exists() or model.count("/") != 1:
        return None
    import json

    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        config = json.loads(Path(hf_hub_download(model, "config.json")).read_text())
    except Exception:  # not reachable or no config: let sentence-transformers try (and explain) below
        return None
    return snapshot_download(model) if config.get("model_type") == "poolattn" else None


NO_INSTRUCTIONS = "no-instructions"


def evaluation_revision(
    revision: str,
    *,
    budget: int | None = None,
    instructions: bool = True,
    onnx_file: str | None = None,
    truncate_dim: int | None = None,
    max_length: int | None = None,
) -> str:
    """The revision results are stored under: the weights' fingerprint, `-budget<N>` on a budget,
    `-no-instructions` when a poolattn model was scored without its task instructions, `-onnx` (`-onnx-qint8`,
    ...) when its ONNX export was scored in ONNX Runtime, `-dim<N>` for embeddings cut to their first N dims and
    `-len<N>` for texts cut to N tokens (`--max-length`), so that no two settings ever share (or are skipped as
    already done by) each other's results. The task data is checked per task (`stale_results`).

    >>> evaluation_revision("0123abcd", budget=100, instructions=False)
    '0123abcd-budget100-no-instructions'
    >>> evaluation_revision("0123abcd", onnx_file="onnx/model_qint8.onnx", truncate_dim=64, max_length=128)
    '0123abcd-onnx-qint8-dim64-len128'
    """
    revision = budget_revision(revision, budget)
    revision = revision if instructions else f"{revision}-{NO_INSTRUCTIONS}"
    if onnx_file:
        stem = Path(onnx_file).name.removesuffix(".onnx").removeprefix("model").strip("_-")
        revision = f"{revision}-onnx" + (f"-{stem}" if stem else "")
    revision = f"{revision}-dim{truncate_dim}" if truncate_dim else revision
    return f"{revision}-len{max_length}" if max_length else revision


def task_data_fingerprint(name: str, data_dir) -> str | None:
    """A hash of a task's local copy (`<data_dir>/<name>`: every file's path and bytes), or None for a task read
    from the Hub (mteb pins its dataset revision itself)."""
    folder = Path(data_dir) / name if data_dir else None
    if folder is None or not folder.is_dir():
        return None
    return content_hash(folder, sorted(item for item in folder.rglob("*") if item.is_file()))


def stale_results(folder: Path, fingerprints: dict[str, str | None]) -> list[str]:
    """Remove the results (and predictions) in `folder` of every task whose data changed since it was scored (its
    recorded fingerprint differs, or none was recorded for a local copy), so that mteb scores it again; the names."""
    recorded = read_run_settings(folder).get("task_data", {})
    stale = []
    for name, fingerprint in fingerprints.items():
        result = folder / f"{name}.json"
        if result.is_file() and fingerprint is not None and recorded.get(name) != fingerprint:
            result.unlink()
            (folder / PREDICTIONS_FOLDER / f"{name}_predictions.json").unlink(missing_ok=True)
            stale.append(name)
    return stale


def check_truncate_dim(model: str, truncate_dim: int) -> None:
    """Raise `EvaluationError` unless `model` is a poolattn folder trained for embeddings of `truncate_dim` dims
    (its `config.json` `matryoshka_dims`); reads the config only."""
    folder = model if is_poolattn_folder(model) else hub_poolattn_snapshot(model)
    if not folder:
        raise EvaluationError(
            f"--truncate-dim scores a poolattn model at a size it was trained for; {model} is not a poolattn model."
        )
    config = json.loads((Path(folder) / "config.json").read_text())
    trained = config.get("matryoshka_dims") or []
    if truncate_dim not in trained:
        sizes = ", ".join(map(str, trained)) if trained else "none (trained at its full size only)"
        raise EvaluationError(
            f"--truncate-dim {truncate_dim}: {model} was trained for the smaller sizes {sizes}. "
            "Give one of them, or train with --matryoshka_dims."
        )


def load_encoder(
    model: str,
    *,
    batch_size: int,
    max_length: int | None,
    instructions: bool,
    onnx_file: str | None = None,
    truncate_dim: int | None = None,
    budget: int | None = None,
    trust_remote_code: bool = False,
):
    """A poolattn folder or Hub repository -> PoolAttnEncoder (its ONNX export `onnx_file` in ONNX Runtime, when
    given; embeddings cut to `truncate_dim`); else a sentence-transformers model (folder, Hub id). Its `ModelMeta`
    revision is the weights' fingerprint with these settings' suffixes (`evaluation_revision`)."""
    from .mteb_encoder import PoolAttnEncoder

    encoder = _encoder_of(
        model,
        batch_size=batch_size,
        max_length=max_length,
        instructions=instructions,
        onnx_file=onnx_file,
        truncate_dim=truncate_dim,
        trust_remote_code=trust_remote_code,
    )
    prompted = instructions or not isinstance(encoder, PoolAttnEncoder)  # the flag concerns poolattn models only
    revision = evaluation_revision(
        encoder.mteb_model_meta.revision,
        budget=budget,
        instructions=prompted,
        onnx_file=onnx_file,
        truncate_dim=truncate_dim,
        max_length=max_length,
    )
    encoder.mteb_model_meta = encoder.mteb_model_meta.model_copy(update={"revision": revision})
    return encoder


def _encoder_of(
    model: str,
    *,
    batch_size: int,
    max_length: int | None,
    instructions: bool,
    onnx_file: str | None,
    truncate_dim: int | None,
    trust_remote_code: bool = False,
):
    from .mteb_encoder import TASK_INSTRUCTIONS, PoolAttnEncoder

    folder = model if is_poolattn_folder(model) else hub_poolattn_snapshot(model)
    if folder:
        exported = ExportedModel.read(folder)
        # A Hub snapshot is named by its training manifest like a local folder, else by its repository id.
        name = model if folder != model and exported.manifest is None else exported.mteb_name
        return PoolAttnEncoder(
            folder,
            name=name,
            revision=exported.fingerprint,
            batch_size=batch_size,
            max_length=max_length,
            instructions=TASK_INSTRUCTIONS if instructions else {},
            onnx_file=onnx_file,
            truncate_dim=truncate_dim,
            trust_remote_code=trust_remote_code,
        )
    if onnx_file or truncate_dim:
        flag = (
            "--onnx scores a poolattn model's ONNX export"
            if onnx_file
            else "--truncate-dim scores a poolattn model at a size it was trained for"
        )
        raise EvaluationError(
            f"{flag}; {model} is not a poolattn model. Score sentence-transformers models without it."
        )
    import mteb
    from sentence_transformers import SentenceTransformer

    folder = Path(model)
    if (folder / "config.json").is_file() and not (folder / "modules.json").is_file():
        logger.warning(
            "%s is neither an exported poolattn model nor a sentence-transformers folder: "
            "sentence-transformers wraps the bare backbone with mean pooling (no poolattn head, EOS or "
            "instructions), so these are that model's scores. Give the `model/` folder training exported "
            "to score a poolattn design.",
            model,
        )
    try:
        transformer = SentenceTransformer(model, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise EvaluationError(
            f"--model {model}: not a poolattn folder, and sentence-transformers could not load "
            f"it as a folder or Hub id ({str(error).splitlines()[0]})."
        ) from None
    if max_length:
        transformer.max_seq_length = max_length
    encoder = mteb.SentenceTransformerEncoderWrapper(transformer)
    name = model if "/" in model and not Path(model).exists() else f"local/{Path(model).resolve().name}"
    revision = model_fingerprint(model) if Path(model).exists() else encoder.mteb_model_meta.revision
    encoder.mteb_model_meta = encoder.mteb_model_meta.model_copy(update={"name": name, "revision": revision})
    return encoder


LOCAL_BENCHMARK = "local"  # every task folder of --data-dir


@dataclass
class TaskSelection:
    """The tasks a run scores, by name, with what the selection passed over and why."""

    names: list[str]
    passed_over: dict[str, str] = field(default_factory=dict)  # local folder or task -> reason


def select_tasks(
    *, tasks: list[str] | None = None, categories: list[str] | None = None, benchmark: str | None = None, data_dir=None
) -> TaskSelection:
    """Task names from `tasks`, from `categories` (of the task folders in `data_dir`, or of `benchmark`), or from
    `benchmark` (an mteb benchmark, or `"local"`: every task folder of `data_dir`)."""
    import mteb

    if not (tasks or categories or benchmark):
        raise EvaluationError("choose tasks with --tasks, --categories or --benchmark.")
    if tasks and (categories or benchmark):
        raise EvaluationError("--tasks names the tasks itself; drop --categories/--benchmark.")
    if categories:
        unknown = set(categories) - set(CATEGORY_ORDER)
        if unknown:
            raise EvaluationError(f"unknown categories {sorted(unknown)}; allowed: {', '.join(CATEGORY_ORDER)}.")
    if tasks:
        for name in tasks:  # an unknown name fails here, with close names, before any model is loaded
            task_type(name, data_dir)
        return TaskSelection(list(dict.fromkeys(tasks)))
    passed_over = {}
    if benchmark and benchmark != LOCAL_BENCHMARK:
        chosen = {task.metadata.name: task.metadata.type for task in mteb.get_benchmark(benchmark).tasks}
    elif data_dir:
        found = scan(data_dir)
        passed_over = found.passed_over
        chosen = {name: task_type(name, data_dir) for name in found.tasks}
    else:
        raise EvaluationError(
            f"--categories and --benchmark {LOCAL_BENCHMARK} need --data-dir (local copies); "
            "or name an mteb benchmark to choose from."
        )
    if categories:
        passed_over.update(
            {
                name: f"category {kind}, not in {','.join(categories)}"
                for name, kind in chosen.items()
                if kind not in categories
            }
        )
        chosen = {name: kind for name, kind in chosen.items() if kind in categories}
    return TaskSelection(list(chosen), passed_over)


# ---------------------------------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class TaskFailure:
    model: str
    task: str
    error: str


@dataclass
class EvaluationRun:
    """What `evaluate_models` did: every model's results folder and scores, tasks without a local copy, failures."""

    folders: dict[str, Path] = field(default_factory=dict)  # model as given -> its results folder
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # mteb name -> task -> main score
    missing_tasks: list[str] = field(default_factory=list)
    passed_over: dict[str, str] = field(default_factory=dict)  # local folder or task -> why it was not selected
    failures: list[TaskFailure] = field(default_factory=list)


def evaluate_models(
    models: list[str],
    *,
    output,
    tasks: list[str] | None = None,
    categories: list[str] | None = None,
    benchmark: str | None = None,
    data_dir=None,
    subsets: list[str] | None = None,
    budget: int | None = None,
    skip_missing: bool = False,
    batch_size: int = 32,
    max_length: int | None = None,
    instructions: bool = True,
    overwrite: bool = False,
    onnx_file: str | None = None,
    truncate_dim: int | None = None,
    trust_remote_code: bool = False,
) -> EvaluationRun:
    """Run mteb on every model (finished tasks are skipped unless `overwrite`); results under `output/results/`.

    `budget` scores every task on at most that many units (`budget.py`), stored under the revision
    `<fingerprint>-budget<N>`: comparable between models, not with published numbers. `onnx_file` (e.g.
    `onnx/model_qint8.onnx`) scores each poolattn model's ONNX export in ONNX Runtime instead of PyTorch, under
    the revision `<fingerprint>-onnx-qint8`. `truncate_dim` scores each model's embeddings cut to their first N
    dims (a size it was trained for, `--matryoshka_dims`), under `<fingerprint>-dim<N>`.

    Raises `EvaluationError` before any model is loaded when the selection is empty, names an unknown task or subset,
    holds a malformed local folder, or, with `data_dir`, tasks lack a local copy (unless `skip_missing`, which runs
    the rest and lists them).
    """
    import mteb

    if budget is not None and budget < 1:
        raise EvaluationError(f"--budget {budget}: give the most units (pairs, examples, queries) per task, >= 1.")
    selection = select_tasks(tasks=tasks, categories=categories, benchmark=benchmark, data_dir=data_dir)
    if not selection.names:
        passed = "; ".join(f"{name}: {why}" for name, why in selection.passed_over.items())
        raise EvaluationError("no tasks selected" + (f" (passed over: {passed})." if passed else "."))
    run = EvaluationRun(passed_over=selection.passed_over)
    task_names = selection.names
    if data_dir:
        run.missing_tasks = [name for name in task_names if not (Path(data_dir) / name).is_dir()]
        if run.missing_tasks and not skip_missing:
            raise EvaluationError(
                f"{len(run.missing_tasks)} task(s) have no local copy in {data_dir}: {', '.join(run.missing_tasks)}. "
                "Add them, drop them from the selection, or pass --skip-missing to run the rest (they are listed)."
            )
        task_names = [name for name in task_names if name not in run.missing_tasks]
    try:  # every task is built (and every local folder checked) once before any model is loaded
        infos = [
            TaskInfo.of_task(load_task(name, data_dir=data_dir, subsets=subsets), local=not is_mteb_task(name))
            for name in task_names
        ]
    except LocalTaskError as error:
        raise EvaluationError(str(error)) from None
    fingerprints = {name: task_data_fingerprint(name, data_dir) for name in task_names}
    cache = mteb.ResultCache(output)
    if onnx_file:
        from ..onnx_poolattn import resolve_file

        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise EvaluationError("--onnx needs onnxruntime: pip install 'poolattn[onnx]'.") from None
        for model in models:  # before any model loads: every export is there
            if is_poolattn_folder(model):
                try:
                    resolve_file(model, onnx_file)
                except FileNotFoundError as error:
                    raise EvaluationError(str(error)) from None
    if truncate_dim is not None:
        for model in models:  # before any model loads: every model was trained for that size
            check_truncate_dim(model, truncate_dim)
    for model in models:
        encoder = load_encoder(
            model,
            batch_size=batch_size,
            max_length=max_length,
            instructions=instructions,
            onnx_file=onnx_file,
            truncate_dim=truncate_dim,
            budget=budget,
            trust_remote_code=trust_remote_code,
        )
        # fresh task objects per model: mteb unloads a task's data after evaluating it
        selected = [load_task(name, data_dir=data_dir, subsets=subsets) for name in task_names]
        if budget:
            selected = [cap_task(task, budget) for task in selected]
        meta, origin = encoder.mteb_model_meta, TrainingOrigin.of_model(model)
        folder = results_folder(output, meta.name, meta.revision)
        predictions = folder / PREDICTIONS_FOLDER  # per query, pair, example or text: what paired tests need
        predictions.mkdir(parents=True, exist_ok=True)
        for name in stale_results(folder, fingerprints):
            logger.warning(
                "%s: %s was scored on other data than %s holds now (or on an unrecorded copy); scoring it again",
                meta.name,
                name,
                Path(data_dir) / name,
            )
        result = mteb.evaluate(
            encoder,
            selected,
            cache=cache,
            encode_kwargs={"batch_size": batch_size},
            overwrite_strategy="always" if overwrite else "only-missing",
            raise_error=False,
            show_progress_bar=True,
            prediction_folder=predictions,
        )
        write_run_settings(
            folder,
            {
                "model": model,
                "data_dir": str(data_dir) if data_dir else None,
                "batch_size": batch_size,
                "max_length": max_length,
                "instructions": getattr(encoder, "instructions", None) or None,
                "prompt_format": QUERY_PROMPT_FORMAT,
                "prompted_texts": "queries and symmetric tasks; documents get none",
                "budget": budget,
                "training": dataclasses.asdict(origin) if origin else None,
                "onnx_file": onnx_file,
                "truncate_dim": truncate_dim,
            },
            infos,
            task_data={
                task_result.task_name: fingerprints.get(task_result.task_name) for task_result in result.task_results
            },
        )
        run.folders[model] = folder
        run.scores[meta.name] = {task_result.task_name: task_result.get_score() for task_result in result.task_results}
        run.failures += [TaskFailure(meta.name, error.task_name, str(error.exception)) for error in result.exceptions]
    return run


# ---------------------------------------------------------------------------------------------------------------------
# paired tests within tasks
# ---------------------------------------------------------------------------------------------------------------------


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
    if (a.data_dir, a.budget) != (b.data_dir, b.budget):
        return [], {"all tasks": "the two runs read different data or budgets, so their units differ"}
    found, skipped = [], {}
    for task in sorted(set(a.scores) & set(b.scores)):
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


# ---------------------------------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """The written comparison: the report's text and the files beside it."""

    report: str
    files: list[Path]
    left_out: list[str] = field(default_factory=list)  # scores some model lacks, so means average fewer tasks


def compare_results(result_folders: list, *, output, baseline: str | None = None) -> Comparison:
    """Tables, Wilcoxon tests per category (Holm-corrected) and paired tests within tasks against `baseline`, a figure
    and a summary, in `output`.

    `result_folders` are model or revision folders of an evaluation's results (`results.read_runs`). Runs of one model
    trained with several seeds are grouped (`results.group_replicates`): tables give the mean over seeds with the
    sample standard deviation, Wilcoxon pairs the seed means by task, the paired tests resample seeds as well.
    """
    from ..stats import category_test_table, markdown_table, wilcoxon_by_category

    loaded = [run for folder in result_folders for run in read_runs(folder)]
    seen: dict[tuple[str, str], Path] = {}
    for results in loaded:
        if (results.name, results.revision) in seen:
            raise EvaluationError(
                f"{seen[results.name, results.revision]} and {results.folder} hold results of the "
                f"same model and weights ({results.name}, revision {results.revision}); give each "
                "model once."
            )
        seen[results.name, results.revision] = results.folder
    budgets = {results.budget for results in loaded}
    if len(budgets) > 1:
        raise EvaluationError(
            f"the results mix evaluation budgets ({', '.join(map(str, sorted(budgets, key=str)))}); "
            "compare runs scored on the same units (the same --budget, or none): give the revision "
            "folders of one budget (e.g. <model folder>/<fingerprint>-budget100)."
        )
    budget = budgets.pop()
    groups, grouping_notes = group_replicates(loaded)
    names = [group.label for group in groups]
    by_name = dict(zip(names, groups))
    scores = {group.label: group.scores for group in groups}
    categories = {task: category for group in groups for task, category in group.categories.items()}
    baseline = baseline or names[0]
    if baseline not in scores:
        raise EvaluationError(f"--baseline {baseline!r} is not one of {names}.")
    tasks = sorted(categories, key=lambda t: (category_rank(categories[t]), t))
    means = {group.label: group.category_means() for group in groups}
    spreads = {group.label: group.category_spread() for group in groups}
    used_categories = sorted({categories[t] for t in tasks}, key=category_rank)
    replicated = any(len(group.runs) > 1 for group in groups)

    def with_spread(value, spread):
        return value if spread is None or value is None else f"{value:.4f} ± {spread:.4f}"

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    task_rows = [[task, categories[task], *[scores[name].get(task) for name in names]] for task in tasks]
    category_rows = [
        [category, sum(categories[t] == category for t in tasks), *[means[name].get(category) for name in names]]
        for category in used_categories
    ]
    average_row = ["Average (all tasks)", len(tasks), *[mean(scores[name].values()) for name in names]]
    tests = {
        name: wilcoxon_by_category(scores[name], scores[baseline], categories) for name in names if name != baseline
    }

    seeds_line = "; ".join(
        f"{group.label}: {len(group.runs)} ({', '.join(map(str, group.seeds))})" for group in groups
    )
    report = [
        "# Comparison",
        "",
        *(
            [
                f"Budget run: every task scored on at most {budget} units (`--budget {budget}`); comparable between "
                "these models, not with published MTEB numbers.",
                "",
            ]
            if budget
            else []
        ),
        *(
            [
                f"Seeds (training replicates) per model: {seeds_line}. A score is the mean over a model's seeds, "
                "± the sample standard deviation over its seeds (the seed spread).",
                "",
            ]
            if replicated
            else []
        ),
        *[f"Note: {note}" for note in grouping_notes],
        *[
            f"Note: {group.label}: {task} left out ({why})."
            for group in groups
            for task, why in group.left_out.items()
        ],
        *[
            f"Note: {name} has no score for {', '.join(missing)}: its category means average fewer tasks than "
            "the others'."
            for name in names
            if (missing := [t for t in tasks if t not in scores[name]])
        ],
        *(
            [""]
            if grouping_notes
            or any(group.left_out for group in groups)
            or any(set(tasks) - set(scores[name]) for name in names)
            else []
        ),
        "## Per task (main score)",
        "",
        markdown_table(
            ["task", "category", *names],
            [
                [
                    task,
                    categories[task],
                    *[
                        with_spread(
                            scores[name].get(task), by_name[name].spread(task) if task in scores[name] else None
                        )
                        for name in names
                    ],
                ]
                for task in tasks
            ],
        ),
        "",
        "## Per category (mean main score)",
        "",
        markdown_table(
            ["category", "tasks", *names],
            [
                [
                    category,
                    count,
                    *[with_spread(value, spreads[name].get(category)) for name, value in zip(names, values)],
                ]
                for category, count, *values in category_rows
            ]
            + [average_row],
        ),
        "",
    ]
    paired_rows = []
    for name, category_tests in tests.items():
        report += [
            f"## {name} vs {baseline}: Wilcoxon signed-rank by category, Holm-corrected",
            "",
            *(["Over the seed means of each task.", ""] if replicated else []),
            category_test_table(category_tests, name, baseline),
            "",
        ]
        within, skipped = paired_tests(by_name[name], by_name[baseline])
        report += paired_section(name, baseline, within, skipped, categories)
        paired_rows += [
            [
                name,
                baseline,
                test.task,
                test.part,
                categories[test.task],
                test.units,
                test.seeds_a,
                test.seeds_b,
                test.score_a,
                test.score_b,
                test.difference,
                test.low,
                test.high,
                test.p_value,
                test.p_holm,
            ]
            for test in within
        ]
    files = [
        output / name
        for name in (
            "comparison.md",
            "per_task.csv",
            "per_category.csv",
            "summary.md",
            "per_category.png",
            "paired_tests.csv",
            "per_seed.csv",
        )
    ]
    write_text(files[0], "\n".join(report))
    write_csv(
        files[5],
        [
            "model",
            "baseline",
            "task",
            "subset/split",
            "category",
            "units",
            "model seeds",
            "baseline seeds",
            "model score",
            "baseline score",
            "difference",
            "95% low",
            "95% high",
            "p",
            "p (Holm, category)",
        ],
        paired_rows,
    )
    write_csv(
        files[1],
        ["task", "category", *names, *[f"{name} seed sd" for name in names]],
        [
            [*row, *[by_name[name].spread(row[0]) if row[0] in scores[name] else None for name in names]]
            for row in task_rows
        ],
    )
    write_csv(
        files[2],
        ["category", "tasks", *names, *[f"{name} seed sd" for name in names]],
        [[*row, *[spreads[name].get(row[0]) for name in names]] for row in category_rows]
        + [[*average_row, *[None for _ in names]]],
    )
    write_csv(
        files[6],
        ["model", "seed", "revision", "task", "category", "score"],
        [
            [group.label, seed, run.revision, task, categories[task], run.scores[task]]
            for group in groups
            for seed, run in zip(group.seeds, group.runs)
            for task in group.tasks
        ],
    )
    write_text(files[3], summary_block(names, means, used_categories, tests, baseline))
    significant = {name: {test.category for test in found if test.significant()} for name, found in tests.items()}
    plots.category_bars(files[4], names, means, used_categories, significant)
    left_out = [f"{group.label}: {task} ({why})" for group in groups for task, why in group.left_out.items()]
    left_out += [f"{name}: no score for {task}" for name in names for task in tasks if task not in scores[name]]
    return Comparison("\n".join(report), files, left_out)


SEED_RESAMPLING = (
    "With seed replicates, each resample also draws every model's seeds with replacement (one draw for both when "
    "their seeds match one to one, as the same seed gives the same data order), so the interval holds the training "
    "noise between seeds too (a bootstrap over n seeds sees (n-1)/n of their variance: with 2 seeds that part of the "
    "interval is about 0.71 of its width). "
)


def paired_section(name: str, baseline: str, tests: list, skipped: dict[str, str], categories: dict) -> list[str]:
    """Markdown: the paired bootstrap test of every task, then per category how many tasks differ after Holm."""
    from ..stats import markdown_table
    from .paired import RESAMPLES

    lines = [
        f"### {name} vs {baseline}: paired bootstrap within each task",
        "",
        "Each task's own units (queries, pairs, examples, texts) resampled together for both models "
        f"({RESAMPLES} resamples, seed 0): the difference of main scores, its 95% percentile interval, and a "
        "two-sided p from the bootstrap distribution shifted to the null; Holm-corrected over the tasks of each "
        "category. "
        + (SEED_RESAMPLING if any(test.seeds_a > 1 or test.seeds_b > 1 for test in tests) else "")
        + "Why not Wilcoxon here: over 5 or fewer datasets it cannot reach p < 0.05, and over units a rank or "
        "sign test applies neither to Spearman, average precision or V-measure nor, with hundreds of units, to "
        "the question of how large a difference is.",
        "",
    ]
    if tests:
        rows = [
            [
                f"{test.task} ({test.part})" if test.part else test.task,
                categories[test.task],
                test.units,
                test.score_a,
                test.score_b,
                test.difference,
                f"[{test.low:.4f}, {test.high:.4f}]",
                test.p_value,
                test.p_holm,
                (name if test.difference > 0 else baseline) if test.significant() else "no significant difference",
            ]
            for test in sorted(tests, key=lambda t: (category_rank(categories[t.task]), t.task))
        ]
        lines += [
            markdown_table(
                ["task", "category", "units", name, baseline, "difference", "95% interval", "p", "p (Holm)", "better"],
                rows,
            ),
            "",
        ]
        summary = []
        for category in sorted({categories[test.task] for test in tests}, key=category_rank):
            members = [test for test in tests if categories[test.task] == category]
            summary.append(
                [
                    category,
                    len(members),
                    f"{sum(test.difference > 0 for test in members)}/{len(members)}",
                    sum(test.significant() and test.difference > 0 for test in members),
                    sum(test.significant() and test.difference < 0 for test in members),
                ]
            )
        lines += [
            markdown_table(
                [
                    "category",
                    "tasks tested",
                    f"{name} higher",
                    f"{name} significantly better",
                    f"{baseline} significantly better",
                ],
                summary,
            ),
            "",
        ]
    if skipped:
        lines += ["Not tested: " + "; ".join(f"{task} ({why})" for task, why in skipped.items()) + ".", ""]
    return lines


def summary_block(names, category_means, categories, tests, baseline) -> str:
    """Compact Markdown for model cards: per-category means, with a marker where a model differs significantly."""
    from ..stats import markdown_table

    rows = []
    for name in names:
        significant = {t.category for t in tests.get(name, []) if t.significant()}
        rows.append(
            [
                name,
                *[
                    f"{category_means[name][c]:.4f}{'*' if c in significant else ''}"
                    if c in category_means[name]
                    else None
                    for c in categories
                ],
            ]
        )
    note = (
        f"\n\n\\* significantly different from {baseline} (Wilcoxon signed-rank by dataset, Holm-corrected, p < 0.05)."
    )
    return markdown_table(["model", *categories], rows) + note + "\n"


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """A CSV file of `header` and `rows` (the comparison's and the study's tables)."""
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())
