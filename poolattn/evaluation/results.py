"""mteb results on disk: where a model's results live, reading them into a typed object, and category means.

The layout is mteb's `ResultCache`: `<output>/results/<org>__<name>/<revision>/<Task>.json`, plus `model_meta.json`,
poolattn's `poolattn_run.json` (the run's settings) and `predictions/<Task>_predictions.json` (mteb's per-query,
per-pair, per-example predictions) beside the task files. The revision of a poolattn model is a
fingerprint of its weights (`model_folder.model_fingerprint`), so two models never share a cache entry.

>>> results_folder("results", "poolattn/smollm2-135m-v5", "0123abcd").as_posix()
'results/results/poolattn__smollm2-135m-v5/0123abcd'
>>> category_means({"STS12": 0.5, "STS13": 0.7, "Banking77Classification": 0.6},
...                {"STS12": "STS", "STS13": "STS", "Banking77Classification": "Classification"})
{'STS': 0.6, 'Classification': 0.6}
"""

import dataclasses
import json
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..files import read_json, write_json

logger = logging.getLogger(__name__)


CATEGORY_ORDER = (
    "Retrieval",
    "Reranking",
    "Clustering",
    "PairClassification",
    "Classification",
    "STS",
    "Summarization",
)


# The four metric families the paper (and the study) asks of every model; a card names those a model was not scored on.
CORE_CATEGORIES = ("STS", "Retrieval", "Classification", "Clustering")
RUN_SETTINGS_FILE = "poolattn_run.json"


PREDICTIONS_FOLDER = "predictions"  # mteb's per-example predictions, `<Task>_predictions.json`


MODEL_META_FILE = "model_meta.json"
NOT_TASK_FILES = (MODEL_META_FILE, RUN_SETTINGS_FILE)  # the JSON files of a results folder that are no task's


class ResultsError(ValueError):
    """Results that cannot be read or found; the message names the folder and what to do."""


def results_folder(output, name: str, revision: str) -> Path:
    """Where mteb writes the results of model `name` at `revision` under an evaluation's `output` folder."""
    return Path(output) / "results" / name.replace("/", "__") / revision


def category_rank(category: str) -> int:
    """Position of a category in the order tables list them (unknown categories last)."""
    return CATEGORY_ORDER.index(category) if category in CATEGORY_ORDER else len(CATEGORY_ORDER)


def mean(values) -> float | None:
    """`statistics.fmean`, None for no values."""
    values = list(values)
    return statistics.fmean(values) if values else None


def category_means(scores: dict[str, float], categories: dict[str, str], tasks=None) -> dict[str, float]:
    """Mean main score per category over `tasks` (default: every scored task), in first-seen order."""
    grouped: dict[str, list[float]] = {}
    for task, score in scores.items():
        if tasks is None or task in tasks:
            grouped.setdefault(categories[task], []).append(score)
    return {category: mean(values) for category, values in grouped.items()}


@dataclass(frozen=True)
class TaskInfo:
    """What a table, a test and a card need to know of a task: its category and main score, and where its data is.

    Stock mteb tasks take it from mteb's metadata; local tasks of names mteb does not know (`local_tasks.py`) have it
    recorded in the run's `poolattn_run.json`, since mteb cannot look them up by name.
    """

    name: str
    type: str
    main_score: str
    dataset_path: str
    dataset_revision: str | None = None
    local: bool = False  # a local folder mteb has no task of that name for: kept out of the card's model-index

    @classmethod
    def of_task(cls, task, *, local: bool = False) -> "TaskInfo":
        metadata = task.metadata
        return cls(
            metadata.name,
            metadata.type,
            metadata.main_score,
            str(metadata.dataset["path"]),
            metadata.dataset.get("revision"),
            local,
        )

    def hf_task_type(self) -> str:
        """The Hub's task type for the card (mteb's mapping; sentence-similarity where it has none)."""
        import mteb

        metadata = mteb.get_task(self.name).metadata
        return metadata._hf_task_type()[0] if hasattr(metadata, "_hf_task_type") else "sentence-similarity"


@dataclass(frozen=True)
class TrainingOrigin:
    """Where the scored weights come from: the training seed and the recipe (`TrainingManifest.recipe_fingerprint`).
    Runs of one name and recipe with different seeds are replicates (`SeedReplicates`)."""

    seed: int | None
    recipe: str | None

    @classmethod
    def of_model(cls, model: str) -> "TrainingOrigin | None":
        """The origin of a poolattn folder with a training manifest, else None (a baseline, a Hub model)."""
        from ..model_folder import ExportedModel, is_poolattn_folder

        manifest = ExportedModel.read(model).manifest if is_poolattn_folder(model) else None
        return cls(manifest.seed, manifest.recipe_fingerprint()) if manifest else None


@dataclass
class ModelResults:
    """One model's mteb results at one revision (mteb `TaskResult`s), with how the run encoded."""

    name: str
    revision: str
    folder: Path
    task_results: list = field(repr=False)  # mteb TaskResult
    instructions: bool = True  # whether queries and symmetric tasks got their task instructions
    recorded_tasks: dict[str, TaskInfo] = field(default_factory=dict, repr=False)  # local tasks, from the run
    budget: int | None = None  # at most this many units per task (`budget.py`), or None: the full tasks
    data_dir: str | None = None  # the local task copies the run read, or None: the Hub
    origin: TrainingOrigin | None = None  # the training seed and recipe of the weights, when poolattn trained them
    task_data: dict = field(default_factory=dict, repr=False)  # task -> fingerprint of the local copy it was scored on

    def predictions(self, task: str) -> dict | None:
        """mteb's saved predictions of `task` ({subset: {split: ...}}), or None when the run kept none."""
        path = self.folder / PREDICTIONS_FOLDER / f"{task}_predictions.json"
        if not path.is_file():
            return None
        try:
            saved = json.loads(path.read_text())
        except ValueError as error:
            raise ResultsError(
                f"{path} is damaged ({error}; mteb writes it in place: a run killed while writing?); run the same "
                "`evaluate.py run` again, which scores that task again."
            ) from None
        return {key: value for key, value in saved.items() if key != "mteb_model_meta"}

    def task_info(self, task: str) -> TaskInfo:
        if task in self.recorded_tasks:
            return self.recorded_tasks[task]
        import mteb

        try:
            return TaskInfo.of_task(mteb.get_task(task))
        except KeyError:
            raise ResultsError(
                f"{self.folder}: {task!r} is neither an mteb task nor recorded in "
                f"{RUN_SETTINGS_FILE} (a local task run by an older poolattn?); re-run it."
            ) from None

    @property
    def scores(self) -> dict[str, float]:
        return {result.task_name: result.get_score() for result in self.task_results}

    @property
    def categories(self) -> dict[str, str]:
        return {result.task_name: self.task_info(result.task_name).type for result in self.task_results}

    @property
    def main_score_names(self) -> dict[str, str]:
        return {result.task_name: self.task_info(result.task_name).main_score for result in self.task_results}

    def category_means(self, tasks=None) -> dict[str, float]:
        return category_means(self.scores, self.categories, tasks)


def read_results(folder) -> ModelResults:
    """The results in a revision folder, or in a model folder that holds exactly one revision.

    Raises `ResultsError` when the folder holds no task results, or several revisions (different weights, which must
    never be averaged together).
    """
    from mteb import TaskResult

    folder = Path(folder)
    if not folder.is_dir():
        raise ResultsError(
            f"{folder} is not a folder; give a results folder of an evaluation run, e.g. "
            "results/results/ORG__NAME/<revision>."
        )
    if not any(folder.glob("*.json")):
        revisions = sorted(p for p in folder.iterdir() if p.is_dir() and any(p.glob("*.json")))
        if len(revisions) > 1:
            raise ResultsError(
                f"{folder} holds results of {len(revisions)} revisions (different weights): "
                f"{', '.join(p.name for p in revisions)}; give one of them, e.g. {revisions[-1]}."
            )
        if revisions:
            folder = revisions[0]
    results = []
    for path in sorted(folder.glob("*.json")):
        if path.name in NOT_TASK_FILES:
            continue
        try:
            results.append(TaskResult.from_disk(path))
        except Exception as error:  # a truncated or foreign JSON file: never dropped silently
            raise ResultsError(
                f"{path} is not a readable mteb task result ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:200]}); delete it and run `evaluate.py run` again, "
                "which scores only the missing tasks, or move the file out of the results folder."
            ) from None
    if not results:
        raise ResultsError(f"no mteb task results found under {folder}.")
    meta = folder / MODEL_META_FILE
    recovery = (
        "delete it (the results folder's name gives the model's name), or run the same `evaluate.py run` or "
        "`study.py` command again, which removes it"
    )
    name = read_json(meta, recovery=recovery)["name"] if meta.is_file() else folder.parent.name.replace("__", "/", 1)
    settings = read_run_settings(folder)
    recorded = {task: TaskInfo(**info) for task, info in settings.get("tasks", {}).items()}
    origin = TrainingOrigin(**settings["training"]) if settings.get("training") else None
    return ModelResults(
        name,
        folder.name,
        folder,
        results,
        bool(settings.get("instructions", True)),
        recorded,
        settings.get("budget"),
        settings.get("data_dir"),
        origin,
        settings.get("task_data", {}),
    )


def read_runs(folder) -> list[ModelResults]:
    """Every revision's results under a model folder (e.g. one per training seed), or the one in a revision folder."""
    folder = Path(folder)
    if folder.is_dir() and not any(folder.glob("*.json")):
        revisions = sorted(p for p in folder.iterdir() if p.is_dir() and any(p.glob("*.json")))
        if revisions:
            return [read_results(revision) for revision in revisions]
    return [read_results(folder)]


def read_run_settings(folder) -> dict:
    """`poolattn_run.json` of a results folder ({} when there is none); a damaged one is named."""
    path = Path(folder) / RUN_SETTINGS_FILE
    if not path.is_file():
        return {}
    return read_json(path, recovery="delete it and the task results beside it, then score again")


def write_run_settings(
    folder,
    settings: dict,
    tasks: list[TaskInfo] = (),
    task_data: dict | None = None,
    task_prompts: dict | None = None,
    task_keys: dict | None = None,
) -> Path:
    """`poolattn_run.json` beside a model's task results: how the evaluation encoded (instructions, lengths, ...),
    the local tasks it ran, the fingerprint of each task's data it scored (`task_data`), the instruction each
    task's texts got (`task_prompts`) and the key each task was scored under (`task_keys`, `cache_keys`), all added
    to those recorded by earlier runs into the same folder. Written atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RUN_SETTINGS_FILE
    earlier = read_run_settings(folder)
    recorded = {**earlier.get("tasks", {}), **{info.name: dataclasses.asdict(info) for info in tasks if info.local}}
    data = {**earlier.get("task_data", {}), **(task_data or {})}
    prompts = {**earlier.get("task_prompts", {}), **(task_prompts or {})}
    keys = {**earlier.get("task_keys", {}), **(task_keys or {})}
    write_json(path, {**settings, "tasks": recorded, "task_data": data, "task_prompts": prompts, "task_keys": keys})
    return path


def other_settings(output, model) -> dict[str, str]:
    """Results of `model`'s exact weights scored under other settings than the full, plain ones a card shows
    (revision -> why it is left out of a card): a budget, no instructions, ONNX Runtime, a Matryoshka size, a length.

    >>> describe_revision_settings("0123abcd-budget100-no-instructions", "0123abcd")
    'a budget of 100 units per task (not comparable with published MTEB numbers); without task instructions'
    """
    folder = results_folder(output, model.mteb_name, model.fingerprint).parent
    if not folder.is_dir():
        return {}
    return {
        path.name: describe_revision_settings(path.name, model.fingerprint)
        for path in sorted(folder.glob(f"{model.fingerprint}-*"))
        if path.is_dir() and any(path.glob("*.json"))
    }


def describe_revision_settings(revision: str, fingerprint: str) -> str:
    """What the suffixes of an evaluation revision (`evaluation.evaluation_revision`) say, in words."""
    import re

    suffix = revision.removeprefix(fingerprint)
    words = []
    if match := re.search(r"-budget(\d+)", suffix):
        words.append(f"a budget of {match.group(1)} units per task (not comparable with published MTEB numbers)")
    if "-no-instructions" in suffix:
        words.append("without task instructions")
    if match := re.search(r"-onnx(-[\w]+)?", suffix):
        words.append("the ONNX export" + (f" ({match.group(1)[1:]})" if match.group(1) else ""))
    if match := re.search(r"-dim(\d+)", suffix):
        words.append(f"embeddings cut to {match.group(1)} dimensions")
    if match := re.search(r"-len(\d+)", suffix):
        words.append(f"texts cut to {match.group(1)} tokens")
    return "; ".join(words) or f"other settings ({suffix})"


def results_root(output) -> Path:
    """The `results/` folder of an evaluation's `output` folder; raises `ResultsError` when there is none."""
    root = Path(output) / "results"
    if not root.is_dir():
        raise ResultsError(
            f"{output} holds no mteb results (no results/ folder); give the --output of an evaluation run."
        )
    return root


def find_model_results(output, model, others=()) -> tuple["ModelResults | None", list[ModelResults]]:
    """(`model`'s results or None, the other variants' results) under an evaluation's `output` folder.

    `model` and `others` are `model_folder.ExportedModel`s. This model's results are found by its name and weights
    fingerprint (never a stale revision). Other variants of the same backbone: the exact revisions of `others`
    where given, else each name's newest revision.
    """
    root = results_root(output)

    def exact(candidate) -> ModelResults | None:
        folder = results_folder(output, candidate.mteb_name, candidate.fingerprint)
        return _read_or_none(folder) if folder.is_dir() else None

    own, own_name = exact(model), model.mteb_name
    peers = {results.name: results for results in map(exact, others) if results and results.name != own_name}
    family = own_name.rsplit("-v", 1)[0] + "-v"
    for model_folder in sorted(root.glob(family.replace("/", "__") + "*")):
        name = model_folder.name.replace("__", "/", 1)
        # a peer's plain runs only (no budget, instructions, ONNX, size or length suffix), as the card's own
        plain = (p for p in model_folder.iterdir() if p.is_dir() and "-" not in p.name)
        revisions = sorted(plain, key=lambda p: p.stat().st_mtime)
        if name != own_name and name not in peers and revisions:
            results = _read_or_none(revisions[-1])
            if results:
                peers[name] = results
    return own, sorted(peers.values(), key=lambda results: results.name)


def _read_or_none(folder: Path) -> ModelResults | None:
    try:
        return read_results(folder)
    except ResultsError:
        return None


def unscored_categories(results: ModelResults) -> list[str]:
    """The core categories (`CORE_CATEGORIES`) none of whose tasks `results` holds a score for.

    >>> from types import SimpleNamespace
    >>> run = SimpleNamespace(categories={"STS12": "STS", "ArguAna": "Retrieval"})
    >>> unscored_categories(run)
    ['Classification', 'Clustering']
    """
    scored = set(results.categories.values())
    return [category for category in CORE_CATEGORIES if category not in scored]
