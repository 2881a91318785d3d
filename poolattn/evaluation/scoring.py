"""Score embedding models on MTEB with the real mteb package (offline on local task copies), and compare them.

`evaluate_models` runs mteb on poolattn folders, poolattn Hub repositories and sentence-transformers models and writes
mteb's results layout (`results.py`); `compare_results` writes per-task and per-category tables, Wilcoxon signed-rank
tests per category with Holm correction, a figure and a summary for model cards. Both raise `EvaluationError` (or
`results.ResultsError`) for bad input; `poolattn.cli` turns them into exit codes.
"""

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..files import folder_lock
from ..model_folder import is_poolattn_folder, model_fingerprint
from ..prompts import QUERY_PROMPT_FORMAT, TASK_INSTRUCTIONS
from .budget import cap_task
from .cache_keys import (
    readable_json,
    scoring_key,
    stale_results,
    task_data_fingerprint,
    task_prompts,
    unkeyed_results,
)
from .encoders import check_model_source, check_truncate_dim, load_encoder
from .local_tasks import LOCAL_MAIN_SCORES, LocalTaskError, check_local_copy, is_mteb_task, load_task
from .requests import EvaluationError, select_tasks
from .results import (
    MODEL_META_FILE,
    PREDICTIONS_FOLDER,
    TaskInfo,
    TrainingOrigin,
    results_folder,
    write_run_settings,
)

logger = logging.getLogger(__name__)


@dataclass
class TaskFailure:
    model: str
    task: str
    error: str


@dataclass
class EvaluationRun:
    """What `evaluate_models` did: every model's results folder and scores, tasks without a local copy, failures."""

    folders: dict[str, Path] = field(default_factory=dict)  # model as given -> its results folder
    # model as given -> task -> main score (not by mteb name: two seeds of one name are two models)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
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

    _check_counts(budget=budget, batch_size=batch_size, max_length=max_length, truncate_dim=truncate_dim)
    run, task_names, infos = _checked_tasks(tasks, categories, benchmark, data_dir, subsets, skip_missing)
    _check_models(models, onnx_file, truncate_dim)
    fingerprints = {name: task_data_fingerprint(name, data_dir) for name in task_names}
    cache = mteb.ResultCache(output)
    encoding = dict(batch_size=batch_size, max_length=max_length, onnx_file=onnx_file, truncate_dim=truncate_dim)
    settings = _run_settings(data_dir, encoding, budget)
    for model in models:
        encoder = load_encoder(
            model, instructions=instructions, budget=budget, trust_remote_code=trust_remote_code, **encoding
        )
        folder = results_folder(output, encoder.mteb_model_meta.name, encoder.mteb_model_meta.revision)
        # one scoring of these weights and settings at a time: a second would remove the first's unrecorded tasks
        with folder_lock(folder, what="evaluation"):
            # fresh task objects per model: mteb unloads a task's data after evaluating it
            selected = [_task_to_score(name, data_dir, subsets, budget) for name in task_names]
            keys = {
                name: scoring_key(task, fingerprints[name], encoder, budget=budget)
                for name, task in zip(task_names, selected)
            }
            _forget_stale_results(folder, encoder, keys, fingerprints, infos)
            unkeyed = [] if overwrite else unkeyed_results(folder, keys)  # kept as checked: no key written
            result = _run_mteb(encoder, selected, folder, cache, batch_size=batch_size, overwrite=overwrite)
            _refuse_copies_changed_while_scored(folder, task_names, fingerprints, data_dir)
            keyed = (fingerprints, {name: key for name, key in keys.items() if name not in unkeyed})
            _record(run, model, encoder, folder, result, {**settings, "model": model}, infos, keyed)
    return run


def _refuse_copies_changed_while_scored(folder: Path, task_names, fingerprints: dict, data_dir) -> None:
    """The task copies hold the data they held when the run took their fingerprints: mteb reads a copy only when it
    scores it, hours later for the last task, and a score of an edited copy would be kept under the old fingerprint
    (then served once the copy is restored). The scores of a copy that changed are removed, and the run stopped."""
    changed = [name for name in task_names if task_data_fingerprint(name, data_dir) != fingerprints[name]]
    if not changed:
        return
    for name in changed:
        (folder / f"{name}.json").unlink(missing_ok=True)
        (folder / PREDICTIONS_FOLDER / f"{name}_predictions.json").unlink(missing_ok=True)
    raise EvaluationError(
        f"the local copies of {', '.join(changed)} in {data_dir} changed while this run scored them; their scores "
        "were removed (they were computed from either data). Leave the task copies as they are while a run reads "
        "them, and run again."
    )


def _run_settings(data_dir, encoding: dict, budget: int | None) -> dict:
    """How every model of an evaluation is encoded and sampled, as `poolattn_run.json` records it."""
    return {
        "data_dir": str(Path(data_dir).resolve()) if data_dir else None,  # read from any folder later
        **encoding,
        "prompt_format": QUERY_PROMPT_FORMAT,
        "prompted_texts": "queries and symmetric tasks; documents get none",
        "budget": budget,
    }


def check_scoring_request(
    *,
    tasks: list[str] | None = None,
    categories: list[str] | None = None,
    benchmark: str | None = None,
    data_dir=None,
    budget: int | None = None,
    batch_size: int = 32,
) -> None:
    """What `evaluate_models` refuses before any model loads, for a caller that trains the models first (the study):
    the counts, task names, categories and which tasks have a local copy, so a misspelled task or a missing copy is
    found before training, not after it. Names and folders only: no task's data is read. Raises `EvaluationError`."""
    _check_counts(budget=budget, batch_size=batch_size)
    _selected_tasks(
        tasks, categories, benchmark, data_dir, False, "Add them to the data dir, or drop them from --tasks."
    )


def keys_without_weights(model_folder, task_names, *, data_dir=None, budget: int | None = None, instructions=True):
    """Task -> the key (`scoring_key`) `evaluate_models` would score a poolattn folder's task under, read from the
    folder's files other than its weights (its query prompt) and the tasks' data: for a model whose scores must stand
    without its weights (a study's records, `study.records`)."""
    from types import SimpleNamespace

    from .mteb_encoder import encoding_key, folder_query_prompt

    table, prompt = TASK_INSTRUCTIONS if instructions else {}, folder_query_prompt(model_folder)
    encoder = SimpleNamespace(scoring_key=lambda metadata: encoding_key(metadata, table, prompt))
    fingerprints = {name: task_data_fingerprint(name, data_dir) for name in task_names}
    tasks = {name: load_task(name, data_dir=data_dir) for name in task_names}
    return {name: scoring_key(tasks[name], fingerprints[name], encoder, budget=budget) for name in task_names}


def _task_to_score(name: str, data_dir, subsets, budget: int | None):
    task = load_task(name, data_dir=data_dir, subsets=subsets)
    return cap_task(task, budget) if budget else task


def _forget_stale_results(folder: Path, encoder, keys: dict, fingerprints: dict, infos) -> None:
    model_name, instructions = encoder.mteb_model_meta.name, getattr(encoder, "instructions", None) or None
    meta = folder / MODEL_META_FILE  # mteb writes it only with a task's results: a damaged one would stay
    if meta.is_file() and not readable_json(meta):
        logger.warning("%s: its %s is damaged (a run killed while writing?); removed", model_name, MODEL_META_FILE)
        meta.unlink()
    stale = stale_results(folder, keys, instructions=instructions, infos=infos, fingerprints=fingerprints)
    for name, why in stale.items():
        logger.warning("%s: %s %s; scoring it again", model_name, name, why)


def _run_mteb(encoder, tasks, folder: Path, cache, *, batch_size: int, overwrite: bool):
    """mteb's own evaluation of `encoder` on `tasks`, keeping per-item predictions (what paired tests need)."""
    import mteb

    predictions = folder / PREDICTIONS_FOLDER  # per query, pair, example or text
    predictions.mkdir(parents=True, exist_ok=True)
    return mteb.evaluate(
        encoder,
        tasks,
        cache=cache,
        encode_kwargs={"batch_size": batch_size},
        overwrite_strategy="always" if overwrite else "only-missing",
        raise_error=False,
        show_progress_bar=True,
        prediction_folder=predictions,
    )


COUNTS = {
    "budget": "the most units (pairs, examples, queries) scored per task",
    "batch_size": "the texts per encode batch",
    "max_length": "the tokens per text",
    "truncate_dim": "the embedding dims kept",
}


def _check_counts(**counts: int | None) -> None:
    """Before any task or model loads: every count given (`COUNTS`) is a whole number >= 1."""
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise EvaluationError(
                f"--{name.replace('_', '-')} {value!r}: give {COUNTS[name]}, a whole number >= 1 (or leave it out)."
            )


SKIP_MISSING_ADVICE = (
    "Add them, drop them from the selection, or pass --skip-missing to run the rest (they are listed)."
)


def _selected_tasks(tasks, categories, benchmark, data_dir, skip_missing, missing_advice: str = SKIP_MISSING_ADVICE):
    """(the run, the task names to score): the selection, with the tasks that have no local copy of `data_dir`
    refused (or, with `skip_missing`, listed in the run and left out). Reads names and folders, not task data."""
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
                + missing_advice
            )
        task_names = [name for name in task_names if name not in run.missing_tasks]
        if not task_names:
            raise EvaluationError(
                f"none of the selected tasks has a local copy in {data_dir} ({', '.join(run.missing_tasks)}), so "
                "--skip-missing leaves nothing to score; give the --data-dir that holds them, or other tasks."
            )
    return run, task_names


def _checked_tasks(tasks, categories, benchmark, data_dir, subsets, skip_missing):
    """(the run, the task names to score, their `TaskInfo`s): every task built and every local folder checked once,
    before any model is loaded."""
    run, task_names = _selected_tasks(tasks, categories, benchmark, data_dir, skip_missing)
    infos = []
    try:
        for name in task_names:
            task = load_task(name, data_dir=data_dir, subsets=subsets)
            if data_dir and is_mteb_task(name) and task.metadata.type not in LOCAL_MAIN_SCORES:
                check_local_copy(task, Path(data_dir) / name)  # retrieval copies: checked as they are built
            infos.append(TaskInfo.of_task(task, local=not is_mteb_task(name)))
    except LocalTaskError as error:
        raise EvaluationError(str(error)) from None
    return run, task_names, infos


def _check_models(models: list[str], onnx_file: str | None, truncate_dim: int | None) -> None:
    """Before any model loads: every model is a model folder or a Hub id, every ONNX export asked for is there, every
    model was trained for `truncate_dim`."""
    for model in models:
        check_model_source(model)
    if onnx_file:
        from ..onnx_poolattn import resolve_file

        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise EvaluationError("--onnx needs onnxruntime: pip install 'poolattn[onnx]'.") from None
        for model in models:
            if is_poolattn_folder(model):
                try:
                    resolve_file(model, onnx_file)
                except FileNotFoundError as error:
                    raise EvaluationError(str(error)) from None
                _check_onnx_weights(model)
    if truncate_dim is not None:
        for model in models:
            check_truncate_dim(model, truncate_dim)


def _check_onnx_weights(model: str) -> None:
    """The folder's ONNX export was made from the weights it holds now (its `export.json` records them): a model saved
    again after its export would be scored as the old graph."""
    from ..hub.onnx_export import EXPORT_RECORD, ONNX_FOLDER, OnnxExport

    if not (Path(model) / ONNX_FOLDER / EXPORT_RECORD).is_file():
        return
    recorded = OnnxExport.read(model).weights_fingerprint
    if recorded is None:
        logger.warning(
            "%s: its ONNX export records no weights (an older export); export again to have them checked", model
        )
    elif recorded != model_fingerprint(model):
        raise EvaluationError(
            f"--onnx: {model}'s ONNX export was made from other weights ({recorded}) than the folder holds now "
            f"({model_fingerprint(model)}); export it again: poolattn-export-onnx {model}."
        )


def _record(run: EvaluationRun, model: str, encoder, folder: Path, result, settings: dict, infos, keyed):
    """One model's scoring: its run settings (with each scored task's data fingerprint and key, `keyed`) beside the
    results, and the run's folders, scores and failures."""
    fingerprints, keys = keyed
    origin = TrainingOrigin.of_model(model)
    settings = {
        **settings,
        "instructions": getattr(encoder, "instructions", None) or None,
        "training": dataclasses.asdict(origin) if origin else None,
    }
    scored = {task_result.task_name: fingerprints.get(task_result.task_name) for task_result in result.task_results}
    prompts = task_prompts(settings["instructions"], infos)
    prompts = {name: prompts.get(name) for name in scored}
    scored_keys = {name: keys[name] for name in scored if name in keys}
    write_run_settings(folder, settings, infos, task_data=scored, task_prompts=prompts, task_keys=scored_keys)
    name = encoder.mteb_model_meta.name
    run.folders[model] = folder
    run.scores[model] = {task_result.task_name: task_result.get_score() for task_result in result.task_results}
    run.failures += [TaskFailure(name, error.task_name, str(error.exception)) for error in result.exceptions]
