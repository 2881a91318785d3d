"""Where training rows come from: local files and folders (JSONL, JSON, CSV, Parquet: their names, formats and
fingerprint; each file is read by `file_readers`) and Hub datasets (subsets, splits), before any row is validated."""

import bz2
import gzip
import hashlib
import logging
import lzma
from pathlib import Path

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}  # of the text formats; parquet compresses inside
ALLOWED_FILES = (
    ".jsonl, .json, .csv and .parquet files (suffixes in any case; .jsonl, .json and .csv also compressed as "
    ".gz, .bz2 or .xz)"
)
# a file of a folder named like one of these (`a.tsv`, `a.jsonl.zip`, `a.parquet.gz`) is data the reader cannot take
DATA_LIKE_PARTS = {"jsonl", "json", "csv", "parquet", "tsv", "arrow"}
PACKED_SUFFIXES = {"gz", "bz2", "xz", "zst", "zstd", "lz4", "zip", "tar", "tgz", "7z"}


def opener(path: Path):
    """`open`, or the decompressing `open` of a .gz, .bz2 or .xz file."""
    return next((opened for suffix, opened in COMPRESSIONS.items() if path.name.lower().endswith(suffix)), open)


class TripletDataError(ValueError):
    """A training file or row that cannot be used; the message names the file and row."""


logger = logging.getLogger(__name__)


def data_suffix(path) -> str | None:
    """The data suffix of a file name as written, in any case and with its compression (`.jsonl`, `.JSONL`,
    `.csv.gz`), or None where the reader takes no such file.

    >>> data_suffix("a/B.JSONL"), data_suffix("x.jsonl.gz"), data_suffix("x.parquet.gz"), data_suffix("README.md")
    ('.JSONL', '.jsonl.gz', None, None)
    """
    name = Path(path).name
    for file_format in FILE_FORMATS:
        for compression in ("",) if file_format == ".parquet" else ("", *COMPRESSIONS):
            suffix = file_format + compression
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                return name[-len(suffix) :]
    return None


def data_format(path) -> str | None:
    """The format of a data file, a key of `FILE_FORMATS` (`x.CSV.gz` -> `.csv`), or None (`data_suffix`)."""
    suffix = data_suffix(path)
    return "." + suffix.lower().split(".")[1] if suffix else None


def data_stem(path) -> str:
    """A data file's name without its data suffix (`nq.jsonl.gz` -> `nq`)."""
    path = Path(path)
    suffix = data_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.stem


def data_files(source: str) -> list[Path]:
    """The data files of a file or folder (`ALLOWED_FILES`); a file given by itself must be one of them."""
    path = Path(source)
    if path.is_dir():
        return _folder_files(path, source)
    if data_suffix(path) is None:
        raise TripletDataError(
            f"{source}: unsupported file type {path.suffix!r}. Allowed: {ALLOWED_FILES}, a folder of them, or a "
            "Hugging Face Hub dataset id."
        )
    return [path]


def _folder_files(folder: Path, source: str) -> list[Path]:
    """Every data file under a folder. Hidden files (`.git/`) are passed over; names starting with "_" (mining's
    `_provenance.json`) and files that are not data (README.md) are left out and logged; a file that looks like data
    but cannot be read (`a.tsv`, `a.jsonl.zip`, `a.parquet.gz`) is refused, so no data is dropped unsaid."""
    files, unreadable, left_out = [], [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        parts = path.relative_to(folder).parts
        if any(part.startswith(".") for part in parts):
            continue
        if any(part.startswith("_") for part in parts) or (data_suffix(path) is None and not _looks_like_data(path)):
            left_out.append(path.relative_to(folder).as_posix())
        elif data_suffix(path) is None:
            unreadable.append(path.relative_to(folder).as_posix())
        else:
            files.append(path)
    if unreadable:
        raise TripletDataError(
            f"{source}: files that look like data but cannot be read: {', '.join(unreadable)}. "
            f"Allowed: {ALLOWED_FILES}. Convert or unpack them, or move them out of the folder (or rename them to "
            "start with '_')."
        )
    if not files:
        raise TripletDataError(f"{source}: folder holds no data files. Allowed: {ALLOWED_FILES}.")
    if left_out:
        logger.info("%s: files that are not training data, left out: %s", source, ", ".join(left_out))
    _refuse_compressed_copies(files, folder, source)
    return files


def _refuse_compressed_copies(files: list[Path], folder: Path, source: str) -> None:
    """A file beside its compressed copy (`x.jsonl` and `x.jsonl.gz` from `gzip -k`) would train every row twice:
    refused, naming both (files of one name and format that hold different data are kept, each a source)."""
    by_name: dict[tuple, list[Path]] = {}
    for path in files:
        by_name.setdefault((path.parent, data_stem(path), data_format(path)), []).append(path)
    for same_name in (group for group in by_name.values() if len(group) > 1):
        contents = {}
        for path in same_name:
            with opener(path)(path, "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()
            if digest in contents:
                first, copy = (item.relative_to(folder).as_posix() for item in (contents[digest], path))
                raise TripletDataError(
                    f"{source}: {copy} holds the data of {first} (a compressed copy), so its rows would be trained "
                    "on twice; move one of them out of the folder (or rename it to start with '_')."
                )
            contents[digest] = path


def _looks_like_data(path: Path) -> bool:
    parts = path.name.lower().split(".")[1:]
    return bool(DATA_LIKE_PARTS.intersection(parts)) or bool(parts and parts[-1] in PACKED_SUFFIXES)


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
    names = [(item.parent / data_stem(item)).as_posix() for item in relative]
    if len(set(names)) < len(names):
        names = [item.as_posix() for item in relative]
    return dict(zip(map(str, files), names))


def fingerprint_files(source: str) -> str:
    """A hash of the training data's content: every data file of a local file or folder (names relative to it and
    bytes; every file of a local dataset repository but its hidden ones, `.git/`), so an edited, added or removed
    file changes it; a Hub dataset id is its own fingerprint.

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
    if is_dataset_repository(source):  # read by `datasets` from what its configs name (.tsv too): every file counts
        root = Path(source)
        files = (p for p in root.rglob("*") if p.is_file() and not p.relative_to(root).parts[0].startswith("."))
        return content_hash(root, sorted(files))
    root = Path(source) if Path(source).is_dir() else Path(source).parent
    return content_hash(root, data_files(source))


def is_dataset_repository(path) -> bool:
    """A local folder laid out as a Hub dataset repository: a README.md whose YAML header declares `configs:` (its
    subsets). Such a folder (e.g. a `git clone` of a Hub dataset) loads as its Hub id would: one source per subset."""
    from huggingface_hub.repocard import metadata_load

    readme = Path(path) / "README.md"
    if not readme.is_file():
        return False
    try:
        return "configs" in (metadata_load(readme) or {})
    except Exception as error:  # YAML front matter of other tools, or not a mapping: not a dataset card
        logger.info("%s: its front matter is not a dataset card's (%s); read as a folder of files", readme, error)
        return False


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
    """(1-based row number, raw row) of one subset and split of a Hub dataset; `streaming` reads it lazily. A local
    dataset repository is always read from its files (streamed): `datasets` (5.x) caches it under a key its files'
    contents are not part of, and served an edited repository's old rows (and old split sizes) from that cache."""
    import datasets

    streaming = streaming or Path(dataset).exists()
    try:
        table = datasets.load_dataset(
            dataset, subset, split=split, streaming=streaming, **_hub_read_options(dataset, subset)
        )
    except Exception as error:
        raise TripletDataError(
            f"{dataset}, subset {subset!r}, split {split!r}: could not be loaded ({error})."
        ) from error
    yield from enumerate(table, start=1)


def _hub_read_options(dataset: str, subset: str) -> dict:
    """Read a Hub subset's CSV files as local ones are read: cells are the texts they hold (pandas, which `datasets`
    reads CSV with, would turn `NA`, `None`, `null`, `nan` into missing values and drop the row as invalid)."""
    import datasets

    try:
        builder = datasets.load_dataset_builder(dataset, subset)
    except Exception:  # loading reports the problem itself, with the dataset's name
        return {}
    return {"keep_default_na": False} if builder.name == "csv" else {}


def count_hub_rows(dataset: str, subset: str, split: str) -> int:
    """Rows of a Hub subset's split: from the dataset's metadata, else counted in one streamed pass."""
    import datasets

    try:
        # a local repository's split sizes come from the same stale cache as its rows (`iter_hub_rows`)
        splits = {} if Path(dataset).exists() else datasets.load_dataset_builder(dataset, subset).info.splits or {}
        if split in splits and splits[split].num_examples:
            return int(splits[split].num_examples)
    except Exception:  # metadata is optional; counting below gives the number (or the error)
        pass
    logger.info(
        "%s/%s[%s]: no row count in the dataset's metadata; counting it in one streamed pass", dataset, subset, split
    )
    return sum(1 for _ in iter_hub_rows(dataset, subset, split, streaming=True))
