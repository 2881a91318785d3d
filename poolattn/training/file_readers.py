"""One local data file's rows, read directly, never through a cache: JSONL and JSON (a list of rows, or JSON Lines),
CSV, Parquet, the text formats also compressed (`sources.COMPRESSIONS`). Each row comes with its 1-based number (the
file's line for JSONL, the record for CSV, the item or table row for JSON and Parquet), and every fault a file can
have (not UTF-8, not valid JSON or CSV, a damaged archive, a cell missing) stops with the file and row named.

Read directly because `datasets`' cache of a local file is keyed by its path and modification time: a file rewritten
with the same time (`cp -p`, `rsync -a`, unpacking an archive) was served as its old rows, under its new fingerprint.
"""

import csv
import json
import lzma
import re
import zlib
from itertools import islice
from pathlib import Path

from .sources import ALLOWED_FILES, TripletDataError, data_format, opener

CSV_CELL_LIMIT = 2**31 - 1  # characters per CSV cell: passages may pass the csv module's default of 128 KiB
# what a damaged or mislabelled archive raises while it is read (gzip's BadGzipFile is an OSError)
ARCHIVE_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError, ValueError)


def iter_file_rows(path: Path):
    """(1-based row number, raw row) of one file, JSONL, CSV and Parquet read lazily (a JSON list is read whole); a
    file without rows stops with its name (`check_has_rows`)."""
    path = Path(path)
    file_format = data_format(path)
    check_has_rows(path, file_format)
    try:
        if file_format == ".parquet":
            yield from _parquet_rows(path)
            return
        if file_format == ".jsonl":
            yield from ((number, _json_row(path, number, line)) for number, line in _text_lines(path))
        elif file_format == ".csv":
            yield from _csv_rows(path)
        else:
            yield from _json_rows(path)
    except ARCHIVE_ERRORS as error:
        if isinstance(error, TripletDataError):
            raise
        raise _archive_error(path, error) from None


def count_rows(path: Path) -> int:
    """Rows of a data file as `iter_file_rows` gives them (JSONL: its non-blank lines, without parsing them;
    Parquet: its metadata)."""
    path = Path(path)
    if data_format(path) == ".jsonl":
        check_has_rows(path, ".jsonl")
        try:
            return sum(1 for _ in _text_lines(path))
        except ARCHIVE_ERRORS as error:
            if isinstance(error, TripletDataError):
                raise
            raise _archive_error(path, error) from None
    if data_format(path) == ".parquet":
        check_has_rows(path, ".parquet")
        return _parquet_file(path).metadata.num_rows
    return sum(1 for _ in iter_file_rows(path))


def read_rows(files: list[Path]) -> list[tuple[str, int, dict]]:
    """(file, 1-based row number, raw row) for every row of every file."""
    return [(str(path), number, raw) for path in files for number, raw in iter_file_rows(path)]


def check_has_rows(path: Path, file_format: str | None) -> None:
    """A data file without rows (0 bytes, blank lines, a CSV header alone, `[]`, a parquet table of 0 rows) stops
    with its name, in a folder as by itself."""
    if file_format is None:
        raise TripletDataError(f"{path}: unsupported file type {path.suffix!r}. Allowed: {ALLOWED_FILES}.")
    if path.stat().st_size == 0:
        what = "0 bytes"
    elif file_format == ".parquet":
        what = "a table of 0 rows" if _parquet_file(path).metadata.num_rows == 0 else None
    else:
        try:
            what = _empty_text(path, file_format)
        except ARCHIVE_ERRORS as error:
            raise _archive_error(path, error) from None
    if what:
        raise TripletDataError(
            f"{path}: file is empty ({what}); expected rows with query, positive and optional negative fields. "
            "Add rows, or take the file out of the training data."
        )


def _empty_text(path: Path, file_format: str) -> str | None:
    csv.field_size_limit(CSV_CELL_LIMIT)
    with opener(path)(path, "rt", encoding="utf-8-sig", errors="replace", newline="") as handle:
        if file_format == ".csv":
            records = len(list(islice((record for record in csv.reader(handle) if record), 2)))
            return "a header line alone" if records < 2 else None
        if file_format == ".jsonl":
            return None if any(line.strip() for line in handle) else "blank lines only"
        head = handle.read(4096)
        if re.fullmatch(r"\s*(\[\s*\])?\s*", head) and not handle.read(1):
            return "no rows" if head.strip() else "blank lines only"
    return None


def _text_lines(path: Path):
    """(1-based line number, text) of every non-blank line, each decoded on its own (a byte that is not UTF-8 is
    named by its line, not by the start of the chunk a text reader was decoding); a byte-order mark is dropped."""
    with opener(path)(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise TripletDataError(
                    f"{path}, line {number}: not UTF-8 ({error.reason} at byte {error.start}); convert the file to "
                    f"UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name} > fixed{data_format(path) or path.suffix}."
                ) from None
            if line.strip():
                yield number, line


def _json_row(path: Path, number: int, line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise TripletDataError(f"{path}, row {number}: not valid JSON ({error}).") from None


def _json_rows(path: Path):
    """A .json file: a list of rows (read whole), JSON Lines (one row a line, read lazily, as `datasets` reads a .json
    file too), or one object: a row, or columns (pandas' `to_json` layouts "columns", its default, and "list")."""
    lines = _text_lines(path)
    number, first = next(lines, (0, ""))
    if not first.lstrip().startswith("["):
        try:
            row = json.loads(first)
        except json.JSONDecodeError:  # more than a line: one object written over several lines
            row = None
        second = next(lines, None)  # one object alone may be a row, or a layout named below
        if isinstance(row, dict) and not _columns(row) and (second or {"query", "positive"} & set(row)):
            yield number, row
            yield from ((number, _json_row(path, number, line)) for number, line in ([second] if second else []))
            yield from ((number, _json_row(path, number, line)) for number, line in lines)
            return
        first += second[1] if second else ""
    text = first + "".join(line for _, line in lines)
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as error:
        raise TripletDataError(f"{path}: not valid JSON, as a list of rows or one row a line ({error}).") from None
    if isinstance(rows, dict) and (columns := _columns(rows)):
        rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    elif isinstance(rows, dict) and not {"query", "positive"} & set(rows):  # a row by itself is a file of one row
        raise TripletDataError(
            f"{path}: one JSON object ({', '.join(list(rows)[:5])}); expected a list of rows, or one row a line "
            "(JSON Lines), each with query, positive and optional negative fields."
        )
    yield from enumerate(rows if isinstance(rows, list) else [rows], start=1)


def _columns(row: dict) -> dict | None:
    """`row` as columns of lists, else None: every value a list, all of one length (pandas' `orient="list"`), or
    every value an object of the same row keys (pandas' default `to_json`, `orient="columns"`: rows in its key
    order), with `query` among them. A row's own `negative` list is no column: its `query` is no list.

    >>> _columns({"query": {"0": "a", "1": "b"}, "positive": {"0": "c", "1": "d"}})
    {'query': ['a', 'b'], 'positive': ['c', 'd']}
    """
    if "query" not in row:
        return None
    if all(isinstance(value, dict) for value in row.values()) and len({tuple(v) for v in row.values()}) == 1:
        return {name: list(values.values()) for name, values in row.items()}
    lengths = {len(value) if isinstance(value, list) else -1 for value in row.values()}
    return row if len(lengths) == 1 and lengths != {-1} else None


def _csv_rows(path: Path):
    """Rows of a CSV file by its header, every cell as its text: "NA", "None", "null" and "1000" are texts (pandas
    would read them as missing values and numbers); an empty cell is "". A header that names a column twice, and a
    row with more or fewer cells than the header, stop with what to change (a cell would be lost, or read as
    absent)."""
    _check_utf8(path)
    csv.field_size_limit(CSV_CELL_LIMIT)
    with opener(path)(path, "rt", encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            header = reader.fieldnames or []
            if repeated := sorted({name for name in header if name and header.count(name) > 1}):
                raise TripletDataError(
                    f"{path}: the header names {', '.join(map(repr, repeated))} more than once, so all but the last "
                    "such column would be lost; give each column its own name (several negatives: one column holding "
                    "a JSON list, or a JSONL file with a list in 'negative')."
                )
            for number, row in enumerate(reader, start=1):
                if None in row or None in row.values():
                    cells = len(header) + len(row.get(None, [])) - sum(value is None for value in row.values())
                    raise TripletDataError(
                        f"{path}, row {number} (line {reader.line_num}): {cells} cells, but the header names "
                        f"{len(header)}; quote cells that hold commas, and write an empty cell for a missing value."
                    )
                yield number, row
        except csv.Error as error:
            raise TripletDataError(f"{path}, line {reader.line_num}: not valid CSV ({error}).") from None


def _check_utf8(path: Path) -> None:
    """A text file that is not UTF-8 (Latin-1, UTF-16, ...) stops with its name and line, not a bare decode error."""
    for _ in _text_lines(path):
        pass


def _parquet_file(path: Path):
    import pyarrow
    import pyarrow.parquet

    try:
        return pyarrow.parquet.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as error:
        raise TripletDataError(f"{path}: not a readable Parquet file ({error}).") from None


def _parquet_rows(path: Path):
    import pyarrow

    number = 0
    try:
        for batch in _parquet_file(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                number += 1
                yield number, row
    except pyarrow.ArrowException as error:  # a damaged page, found when read
        raise TripletDataError(f"{path}, after row {number}: not a readable Parquet file ({error}).") from None


def _archive_error(path: Path, error: Exception) -> TripletDataError:
    return TripletDataError(
        f"{path}: cannot be read ({type(error).__name__}: {error}); a damaged or incomplete archive, or a file whose "
        "name says it is compressed when it is not. Copy it again, or give it its real suffix."
    )
