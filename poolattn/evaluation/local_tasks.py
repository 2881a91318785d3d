"""mteb tasks from a folder of local task copies: stock mteb tasks pointed at their copy, and retrieval or reranking
folders of any name run through mteb's own evaluators.

A data folder holds one folder per task, named after the task:

- a copy of a stock mteb task: `<Task>/{train,validation,test}.jsonl` in the Hub dataset's raw layout (or its
  snapshot as the Hub holds it: `data/<split>-*.parquet` or `.jsonl`, a README.md `configs:` block), or, for a
  task with several subsets (languages), `<Task>/<subset>/{split}.jsonl`; by default a copy is scored on the
  subsets it holds; each copy is read and checked (splits, columns) before any model loads (`check_local_copy`);
- a retrieval task of any name, in the standard (BEIR / mteb v2) layout: `corpus/*.jsonl` (`_id`, `title`, `text`),
  `queries/*.jsonl` (`_id`, `text`), `qrels/<split>.jsonl` (`query-id`, `corpus-id`, `score`) (a README.md
  `configs:` block is not needed); with `top_ranked/<split>.jsonl` (`query-id`, `corpus-ids`) it is a reranking
  task. The folder name is the task name; the main score
  follows mteb's convention for the type (nDCG@10 for retrieval, MAP@1000 for reranking).

>>> LOCAL_MAIN_SCORES["Reranking"]
'map_at_1000'
"""

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path

from .retrieval_folders import LocalTaskError, _jsonl_rows, _jsonl_rows_of, check_retrieval_folder

logger = logging.getLogger(__name__)

LOCAL_MAIN_SCORES = {"Retrieval": "ndcg_at_10", "Reranking": "map_at_1000"}
SPLIT_FILES = ("train", "validation", "dev", "test")
RETRIEVAL_PARTS = ("corpus", "queries", "qrels")


def _mteb_task_names() -> list[str]:
    import mteb

    return sorted({task.metadata.name for task in mteb.get_tasks()})


def is_mteb_task(name: str) -> bool:
    import mteb

    try:
        mteb.get_task(name)
        return True
    except (KeyError, ValueError):
        return False


def retrieval_type(folder: Path) -> str | None:
    """ "Retrieval" or "Reranking" for a folder in the retrieval layout, else None."""
    if not all((folder / part).is_dir() for part in RETRIEVAL_PARTS):
        return None
    return "Reranking" if (folder / "top_ranked").is_dir() else "Retrieval"


def splits_by_subset(task) -> dict:
    """A loaded task's data as {subset: {split: data}}: mteb nests multi-subset and retrieval tasks so, and keeps a
    one-subset task as {split: data} (here under "default", the subset name mteb records for it)."""
    nested = task.metadata.is_multilingual or task.metadata.type in LOCAL_MAIN_SCORES
    return task.dataset if nested else {"default": task.dataset}


def held_subsets(folder: Path) -> list[str]:
    """The subset folders of a local copy (`<Task>/<subset>/{split}.jsonl`); [] for a one-subset copy."""
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.is_dir() and any((p / f"{split}.jsonl").is_file() for split in SPLIT_FILES)
    )


def _readme_configs(folder: Path) -> set[str]:
    readme = folder / "README.md"
    if not readme.is_file():
        return set()
    text = readme.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return set()
    import yaml

    try:
        front = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return set()
    return {config.get("config_name") for config in front.get("configs", []) if isinstance(config, dict)}


def retrieval_task(folder: Path):
    """An mteb retrieval or reranking task for a local folder of any name, scored by mteb's own evaluator.

    The folder is read here, as mteb's retrieval loader reads a Hub dataset (string ids, queries without judgements
    dropped, integer relevance), straight from its files: `datasets` would cache a README-configured folder under its
    name alone, so two folders of one name, or an edited folder, would silently get the first data back.
    """
    from mteb.abstasks import AbsTaskReranking, AbsTaskRetrieval
    from mteb.abstasks.task_metadata import TaskMetadata

    task_type = retrieval_type(folder)
    splits = check_retrieval_folder(folder)
    metadata = TaskMetadata(
        name=folder.name,
        description=f"Local {task_type.lower()} task from {folder}",
        type=task_type,
        main_score=LOCAL_MAIN_SCORES[task_type],
        dataset={"path": str(folder.resolve()), "revision": "local"},
        eval_splits=["test"] if "test" in splits else splits[:1],
        eval_langs=["eng-Latn"],
        modalities=["text"],
        category="t2t",
    )

    base = AbsTaskReranking if task_type == "Reranking" else AbsTaskRetrieval
    attributes = {"metadata": metadata, "load_data": _retrieval_loader(folder), "__module__": __name__}
    return type(f"Local{task_type}Task", (base,), attributes)()


def _retrieval_loader(folder: Path):
    """A `load_data` method reading each evaluation split of a retrieval folder (`read_retrieval_split`)."""

    def load_data(self, num_proc=None, **kwargs):
        if self.data_loaded:
            return
        self.dataset = {"default": {split: read_retrieval_split(folder, split) for split in self.eval_splits}}
        self.dataset_transform(num_proc=num_proc)
        self.data_loaded = True

    return load_data


def read_retrieval_split(folder: Path, split: str) -> dict:
    """mteb's `RetrievalSplitData` for one split of a retrieval folder."""
    import datasets

    relevant: dict[str, dict[str, int]] = {}
    for _, _, row in _jsonl_rows_of(folder / "qrels" / f"{split}.jsonl"):
        relevant.setdefault(str(row["query-id"]), {})[str(row["corpus-id"])] = int(row["score"])
    corpus = [
        {"id": str(row["_id"]), "title": row.get("title") or "", "text": row["text"]}
        for _, _, row in _jsonl_rows(folder / "corpus")
    ]
    queries = [
        {"id": str(row["_id"]), "text": row["text"]}
        for _, _, row in _jsonl_rows(folder / "queries")
        if str(row["_id"]) in relevant
    ]
    top_ranked = None
    if (folder / "top_ranked").is_dir():
        top_ranked = {
            str(row["query-id"]): [str(doc) for doc in row["corpus-ids"]]
            for _, _, row in _jsonl_rows_of(folder / "top_ranked" / f"{split}.jsonl")
        }
    return {
        "corpus": datasets.Dataset.from_list(corpus),
        "queries": datasets.Dataset.from_list(queries),
        "relevant_docs": relevant,
        "top_ranked": top_ranked,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Stock tasks on local copies
# ---------------------------------------------------------------------------------------------------------------------


def stock_task(name: str, *, data_dir: Path | None = None, subsets: list[str] | None = None):
    """mteb's task `name`, on its local copy in `data_dir` when given.

    A multi-subset task runs on `subsets` when given (each must be one of the task's, and held by the local copy),
    else on the subsets its local copy holds, else on all of them.
    """
    import mteb

    task = mteb.get_task(name)
    available = list(task.hf_subsets)
    folder = data_dir / name if data_dir else None
    held = held_subsets(folder) if folder else []
    if len(available) == 1:  # --subsets picks among the subsets of multi-subset tasks; one-subset tasks run whole
        subsets = None
    if subsets:
        unknown = [subset for subset in subsets if subset not in available]
        if unknown:
            raise LocalTaskError(f"{name}: no subset {', '.join(unknown)}; its subsets are {', '.join(available)}.")
        missing = [subset for subset in subsets if held and subset not in held]
        if missing:
            raise LocalTaskError(
                f"{name}: subset(s) {', '.join(missing)} have no folder in {folder} (it holds {', '.join(held)})."
            )
    chosen = subsets or [subset for subset in held if subset in available] or None
    if chosen and chosen != available:
        task = mteb.get_task(name, hf_subsets=[subset for subset in available if subset in chosen])
    return _on_local_copy(task, folder) if folder else task


def _on_local_copy(task, folder: Path):
    """Point a stock task at `folder`: the dataset path, or per-subset loading when the copy has subset folders."""
    if set(held_subsets(folder)) & set(task.hf_subsets) and not _readme_configs(folder):
        return _subset_folder_task(task, folder)
    if task.metadata.type in LOCAL_MAIN_SCORES and retrieval_type(folder) and not task.metadata.is_multilingual:
        check_retrieval_folder(folder, strict=False)  # read from its files, as local tasks of any name are
        return _local_task(task, load_data=_retrieval_loader(folder))
    # else the files are where `datasets` finds a dataset's splits: <split>.jsonl, or the Hub's data/<split>*.jsonl /
    # data/<split>-00000-of-00001.parquet (a folder named data/ is no subset of a task that has none of that name).
    # Read anew each time: datasets caches a local folder by its files' paths and times (a README-configured one by
    # a key its files are not part of), so a copy rewritten with the same times came back as its old rows
    dataset = {**task.metadata.dataset, "path": str(folder.resolve()), "download_mode": "force_redownload"}
    if _readme_configs(folder):
        dataset |= {"verification_mode": "no_checks"}
    local = _local_task(task)
    local.metadata = task.metadata.model_copy(update={"dataset": dataset})
    return local


def _local_task(task, **methods):
    """A task of `task`'s class, on its subsets, with `methods` replaced, whose `dataset_transform` (mteb's step from
    the Hub dataset's raw columns to the evaluator's) also takes a copy that already has the evaluator's columns
    (e.g. TwitterURLCorpus as `sentence1`/`sentence2`, not the Hub's `sent1`/`sent2`)."""
    base = type(task)

    def dataset_transform(self, *args, **kwargs):
        try:
            return base.dataset_transform(self, *args, **kwargs)
        except (KeyError, ValueError):  # a column the transform renames or reads is not there
            if not _holds_columns(self):
                raise
            logger.info("%s: its local copy already has the evaluator's columns; used as it is", self.metadata.name)

    attributes = {"dataset_transform": dataset_transform, **methods, "__module__": __name__}
    local_class = type(base.__name__, (base,), attributes)
    return local_class().filter_languages(None, hf_subsets=list(task.hf_subsets))


def _holds_columns(task) -> bool:
    """Whether every evaluation split of every subset of a loaded `task` has the columns its evaluator reads."""
    columns = _task_columns(task)
    return bool(columns) and all(
        split in data and set(columns) <= set(data[split].column_names)
        for data in splits_by_subset(task).values()
        for split in task.metadata.eval_splits
    )


def check_local_copy(task, folder: Path) -> None:
    """Read a stock task's local copy as mteb will when it scores it, and check it holds what mteb's evaluator for
    the task reads: each split it evaluates on (and trains its classifier on) in every subset, with the task's
    columns. mteb reads a copy only when it reaches the task, after the tasks before it were scored; a copy that
    cannot be read, or lacks a split or column, is refused here instead (`LocalTaskError`, saying what it holds)."""
    name = task.metadata.name
    try:
        task.load_data()
    except Exception as error:  # datasets' and mteb's errors alike: the copy is what failed
        cause = error.__cause__ or error.__context__
        detail = f"{type(error).__name__}: {error}" + (f" ({type(cause).__name__}: {cause})" if cause else "")
        raise LocalTaskError(
            f"{name}: its local copy {folder} cannot be read as mteb reads the task ({detail[:400]}). Fix or "
            f"replace the copy (one JSON object per line, the columns of the task's Hub dataset)."
        ) from None
    splits = [*task.metadata.eval_splits, *([task.train_split] if hasattr(task, "train_split") else [])]
    columns = _task_columns(task)
    for subset, data in splits_by_subset(task).items():
        where = f"{folder}" + (f"/{subset}" if subset != "default" and held_subsets(folder) else "")
        missing_splits = [split for split in splits if split not in data]
        if missing_splits:
            raise LocalTaskError(
                f"{name}: its local copy {where} has no {', '.join(missing_splits)} split (it holds "
                f"{', '.join(data) or 'none'}); mteb's {task.metadata.type} evaluator reads {', '.join(splits)}. Add "
                f"{', '.join(f'{split}.jsonl' for split in missing_splits)}."
            )
        for split in splits:
            missing = [column for column in columns if column not in data[split].column_names]
            if missing:
                raise LocalTaskError(
                    f"{name}: the {split} split of its local copy {where} has no column {', '.join(missing)} (it "
                    f"has {', '.join(data[split].column_names)}); mteb's evaluator for the task reads "
                    f"{', '.join(columns)}. Rename the columns as in the task's Hub dataset."
                )


def _task_columns(task) -> list[str]:
    """The columns mteb's evaluator reads for `task`: its `*_column_name(s)` settings (and STS's `score`)."""
    from mteb.abstasks import AbsTaskSTS

    columns = []
    for attribute in sorted(dir(type(task))):
        value = getattr(task, attribute, None) if attribute.endswith(("column_name", "column_names")) else None
        columns += [value] if isinstance(value, str) else [c for c in value or () if isinstance(c, str)]
    return list(dict.fromkeys(columns + (["score"] if isinstance(task, AbsTaskSTS) else [])))


def _subset_folder_task(task, folder: Path):
    """The task with each chosen subset read from `folder/<subset>/` (no README `configs:` needed)."""
    import datasets

    def load_data(self, num_proc=None, **kwargs):
        if self.data_loaded:
            return
        fresh = {"download_mode": "force_redownload"}  # not the cache of the files by their paths and times
        self.dataset = {subset: datasets.load_dataset(str(folder / subset), **fresh) for subset in self.hf_subsets}
        self.dataset_transform(num_proc=num_proc)
        self.data_loaded = True

    return _local_task(task, load_data=load_data)


# ---------------------------------------------------------------------------------------------------------------------
# Names -> tasks
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class LocalFolders:
    """What a data folder holds: task folders by name, and the folders passed over with the reason."""

    tasks: list[str]
    passed_over: dict[str, str]


def scan(data_dir) -> LocalFolders:
    """Every task folder in `data_dir` (stock mteb copies and retrieval/reranking folders of any name)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise LocalTaskError(f"--data-dir {data_dir} is not a folder of task copies (one folder per task).")
    tasks, passed_over = [], {}
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if is_mteb_task(folder.name) or retrieval_type(folder):
            tasks.append(folder.name)
        else:
            passed_over[folder.name] = (
                "not an mteb task name, and not in the retrieval layout (corpus/, queries/, qrels/)"
            )
    return LocalFolders(tasks, passed_over)


def unknown_task_message(name: str, data_dir=None) -> str:
    """One line for a task name that is neither an mteb task nor a task folder: close names, and the local folders."""
    found = scan(data_dir).tasks if data_dir and Path(data_dir).is_dir() else []
    close = difflib.get_close_matches(name, list(dict.fromkeys([*found, *_mteb_task_names()])), n=3, cutoff=0.6)
    hint = f"close names: {', '.join(close)}" if close else "no task has a close name"
    where = f"; task folders in {data_dir}: {', '.join(found) or 'none'}" if data_dir else ""
    return f"unknown task {name!r} ({hint}{where})."


def task_type(name: str, data_dir=None) -> str:
    """The category of task `name`: an mteb task's type, or "Retrieval"/"Reranking" for a local folder of any name.

    Raises `LocalTaskError` (one line: close names, the local task folders) for a name that is neither.
    """
    import mteb

    if is_mteb_task(name):
        return mteb.get_task(name).metadata.type
    folder = Path(data_dir) / name if data_dir else None
    if folder and folder.is_dir():
        kind = retrieval_type(folder)
        if kind:
            return kind
        raise LocalTaskError(
            f"{folder}: mteb has no task {name!r}, and the folder is not in the retrieval layout "
            "(corpus/, queries/, qrels/, README.md configs:); rename it after its mteb task or add "
            "the retrieval files."
        )
    raise LocalTaskError(unknown_task_message(name, data_dir))


def load_task(name: str, *, data_dir=None, subsets: list[str] | None = None):
    """The mteb task object for `name`: a stock task (on its local copy when `data_dir` is given), or a local
    retrieval/reranking folder of any name. A fresh object each call (mteb unloads a task's data after a run)."""
    data_dir = Path(data_dir) if data_dir else None
    kind = task_type(name, data_dir)
    if is_mteb_task(name):
        if data_dir and not (data_dir / name).is_dir():
            raise LocalTaskError(f"{name}: no local copy in {data_dir}.")
        return stock_task(name, data_dir=data_dir, subsets=subsets)
    assert kind in LOCAL_MAIN_SCORES
    return retrieval_task(data_dir / name)  # one subset: --subsets does not apply
