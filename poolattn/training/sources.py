"""Where training rows come from: local files and folders (JSONL, JSON, CSV, Parquet; their fingerprint) and Hub
datasets (subsets, splits), read row by row or counted, before any row is validated."""

import json
import logging
from pathlib import Path

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class TripletDataError(ValueError):
    """A training file or row that cannot be used; the message names the file and row."""


logger = logging.getLogger(__name__)


def data_files(source: str) -> list[Path]:
    path = Path(source)
    if path.is_dir():
        # names starting with "_" or "." are not data (e.g. mining's `_provenance.json`)
        files = sorted(
            p
            for p in path.rglob("*")
            if p.suffix in FILE_FORMATS and not any(part.startswith(("_", ".")) for part in p.relative_to(path).parts)
        )
        if not files:
            raise TripletDataError(f"{source}: folder holds no {', '.join(FILE_FORMATS)} files.")
        return files
    if path.suffix not in FILE_FORMATS:
        raise TripletDataError(
            f"{source}: unsupported file type {path.suffix!r}. Allowed: {', '.join(FILE_FORMATS)} files, a folder of "
            "them, or a Hugging Face Hub dataset id."
        )
    return [path]


def source_names(source: str, files: list[Path]) -> dict[str, str]:
    """Each data file's source name: its path under the folder without the suffix (`snli_triplets`, and in nested
    folders `nq/train` beside `snli/train`), or with it where two files would share a name (`a.jsonl`, `a.csv`).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> names = source_names(str(d), [d / "nq" / "train.jsonl", d / "snli" / "train.jsonl", d / "x.csv"])
    >>> list(names.values()), source_names("x.jsonl", [Path("x.jsonl")])
    (['nq/train', 'snli/train', 'x'], {'x.jsonl': 'x'})
    """
    folder = Path(source) if Path(source).is_dir() else None
    relative = [
        path.relative_to(folder) if folder and path.is_relative_to(folder) else Path(path.name) for path in files
    ]
    names = [item.with_suffix("").as_posix() for item in relative]
    if len(set(names)) < len(names):
        names = [item.as_posix() for item in relative]
    return dict(zip(map(str, files), names))


def fingerprint_files(source: str) -> str:
    """A hash of the training data's content: every data file of a local file or folder (names relative to it and
    bytes; a local dataset repository's data files alike), so an edited, added or removed file changes it; a Hub
    dataset id is its own fingerprint.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.jsonl").write_text('{"query": "q", "positive": "p"}\\n')
    >>> before = fingerprint_files(str(folder))
    >>> _ = (folder / "a.jsonl").write_text('{"query": "q2", "positive": "p"}\\n')
    >>> before != fingerprint_files(str(folder))
    True
    """
    from ..files import content_hash

    if not Path(source).exists():
        return f"hub:{source}"
    root = Path(source) if Path(source).is_dir() else Path(source).parent
    return content_hash(root, data_files(source))


def iter_file_rows(path: Path, *, streaming: bool = False):
    """(1-based row number, raw row) of one file, read lazily; `streaming` reads CSV/parquet through `datasets`
    without loading the whole file."""
    import datasets

    path = Path(path)
    if path.stat().st_size == 0:
        raise TripletDataError(f"{path}: file is empty; expected rows with query, positive and optional negative.")
    # JSONL is read directly: exact row numbers, and datasets' type inference cannot hide errors
    if path.suffix == ".jsonl":
        number = 0
        try:
            with path.open(encoding="utf-8-sig") as handle:  # a byte-order mark, as CSV files may have
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        yield number, json.loads(line)
                    except json.JSONDecodeError as error:
                        raise TripletDataError(f"{path}, row {number}: not valid JSON ({error}).") from error
        except UnicodeDecodeError as error:
            raise TripletDataError(
                f"{path}, row {number + 1}: not UTF-8 ({error.reason}); convert the file to UTF-8, "
                f"e.g. iconv -f latin1 -t utf-8 {path.name} > fixed.jsonl."
            ) from None
    else:
        if path.suffix == ".csv":
            _check_utf8(path)
        table = datasets.load_dataset(
            FILE_FORMATS[path.suffix], data_files=str(path), split="train", streaming=streaming
        )
        yield from enumerate(table, start=1)


def is_dataset_repository(path) -> bool:
    """A local folder laid out as a Hub dataset repository: a README.md whose YAML header declares `configs:` (its
    subsets). Such a folder (e.g. a `git clone` of a Hub dataset) loads as its Hub id would: one source per subset."""
    from huggingface_hub.repocard import metadata_load

    readme = Path(path) / "README.md"
    return readme.is_file() and "configs" in (metadata_load(readme) or {})


def is_local_files(source: str) -> bool:
    """A local file, or a folder of files (each a source) that is not a dataset repository."""
    return Path(source).exists() and not is_dataset_repository(source)


def hub_subsets(dataset: str, split: str) -> list[str]:
    """The subsets (configs) of a Hub dataset id or a local dataset repository that have `split`, each one source."""
    import datasets

    try:
        subsets = list(datasets.get_dataset_config_names(dataset))
        splits = {subset: datasets.get_dataset_split_names(dataset, subset) for subset in subsets}
    except Exception as error:
        raise TripletDataError(
            f"{dataset}: not a local file or folder, and loading it as a Hub dataset failed ({error}). Give a .jsonl, "
            ".csv or .parquet file, a folder of them, or a Hub dataset id (with network access or a local cache)."
        ) from error
    having = [subset for subset in subsets if split in splits[subset]]
    if not having:
        raise TripletDataError(
            f"{dataset}: no subset has a {split!r} split (subsets and their splits: "
            f"{'; '.join(name + ': ' + ', '.join(splits[name]) for name in subsets)}); give one "
            "with --data_split."
        )
    if len(having) < len(subsets):
        logger.info(
            "%s: subsets without a %r split are left out: %s",
            dataset,
            split,
            ", ".join(sorted(set(subsets) - set(having))),
        )
    return having


def hub_source_name(dataset: str, subset: str) -> str:
    """A Hub subset's source name: the subset's, or the dataset's when it declares none (datasets' "default")."""
    return dataset if subset == "default" else subset


def hub_label(dataset: str, subset: str, split: str) -> str:
    """Where a Hub subset's rows come from, as errors and the manifest name it."""
    return f"{dataset}[{split}]" if subset == "default" else f"{dataset}/{subset}[{split}]"


def iter_hub_rows(dataset: str, subset: str, split: str, *, streaming: bool = False):
    """(1-based row number, raw row) of one subset and split of a Hub dataset; `streaming` reads it lazily."""
    import datasets

    try:
        table = datasets.load_dataset(dataset, subset, split=split, streaming=streaming)
    except Exception as error:
        raise TripletDataError(
            f"{dataset}, subset {subset!r}, split {split!r}: could not be loaded ({error})."
        ) from error
    yield from enumerate(table, start=1)


def count_hub_rows(dataset: str, subset: str, split: str) -> int:
    """Rows of a Hub subset's split: from the dataset's metadata, else counted in one streamed pass."""
    import datasets

    try:
        splits = datasets.load_dataset_builder(dataset, subset).info.splits or {}
        if split in splits and splits[split].num_examples:
            return int(splits[split].num_examples)
    except Exception:  # metadata is optional; counting below gives the number (or the error)
        pass
    logger.info(
        "%s/%s[%s]: no row count in the dataset's metadata; counting it in one streamed pass", dataset, subset, split
    )
    return sum(1 for _ in iter_hub_rows(dataset, subset, split, streaming=True))


def _check_utf8(path: Path) -> None:
    """A text file that is not UTF-8 (Latin-1, UTF-16, ...) stops with its name and line, not a bare decode error."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise TripletDataError(
                    f"{path}, line {number}: not UTF-8 ({error.reason} at byte {error.start}); convert the file to "
                    f"UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}."
                ) from None


def count_rows(path: Path) -> int:
    """Rows of a data file without parsing them (JSONL: non-empty lines; parquet: its metadata)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())
    if path.suffix == ".parquet":
        import pyarrow.parquet

        return pyarrow.parquet.ParquetFile(path).metadata.num_rows
    return sum(1 for _ in iter_file_rows(path, streaming=True))


def _read_rows(files: list[Path]) -> list[tuple[str, int, dict]]:
    """(file, 1-based row number, raw row) for every row of every file."""
    return [(str(path), number, raw) for path in files for number, raw in iter_file_rows(path)]
