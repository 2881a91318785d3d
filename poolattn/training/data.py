"""Training triplets (query, positive, hard negatives) from local files, folders or the Hub; their sources; collator.

>>> from poolattn.training.data import SAMPLE_TRIPLETS, load_triplets
>>> triplets = load_triplets(str(SAMPLE_TRIPLETS))
>>> len(triplets.rows) >= 200, sorted(triplets.rows[0]), triplets.negatives_per_query
(True, ['instruction', 'negatives', 'positive', 'query', 'source'], 1)

Each file of a folder (or a Hub dataset) is a *source*, with its own count of hard negatives per query (0: in-batch
negatives only); a file whose rows hold different counts is split into one source per count. `batching.py`
draws every batch from one source (the E5/llm2vec practice), so the in-batch negatives are of the same kind as the
positive; `TripletCollator` gives every text a stable id so that the loss never takes a duplicate of a query's
positive (or of the query itself) as one of its negatives.
"""

import difflib
import functools
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .file_readers import read_rows
from .sources import (
    TripletDataError,
    data_files,
    hub_label,
    hub_source_name,
    hub_subsets,
    is_local_files,
    iter_hub_rows,
    source_names,
)

logger = logging.getLogger(__name__)


SAMPLE_TRIPLETS = Path(__file__).resolve().parents[1] / "sample_data" / "sample_triplets.jsonl"


FIELD_ALIASES = {"postive": "positive"}  # the paper's data (yixuantt/ir_data) spells it this way
READ_COLUMNS = {"query", "positive", "negative", "instruction", *FIELD_ALIASES}
# other names of a read column (sentence-transformers' `anchor`, ...); near spellings (`negatives`) are found as well
COLUMN_SYNONYMS = {"anchor": "query", "question": "query", "queries": "query", "pos": "positive", "neg": "negative"}
QUIET_COLUMNS = {"source", "id", "_id"}  # metadata many files carry (../shared/data/train: `source`): logged at info


@dataclass
class TripletSource:
    """One source of training rows (a file, or a Hub dataset split) and what it holds."""

    name: str
    examples: int = 0
    negatives_per_query: int = 0  # 0: in-batch negatives only
    skipped: int = 0
    file: str = ""  # the file (or Hub dataset) it was read from; several sources when its rows' counts differ
    instruction: str | None = None  # the query instruction of its rows that give none (`set_source_instructions`)
    weight: float | None = None  # relative sampling weight (`set_source_weights`); None: a share by size
    weight_key: str | None = None  # the --source_weights key that gave it: its own name, or its file's stem (shared)


@dataclass
class Triplets:
    """Validated rows `{query, positive, negatives, instruction, source}`: `negatives` a list (empty without hard
    negatives), `instruction` None or a string, `source` the index of the row's `TripletSource`."""

    rows: list[dict]
    source: str
    files: list[str] = field(default_factory=list)
    skipped: int = 0
    sources: list[TripletSource] = field(default_factory=list)
    stream: "torch.utils.data.IterableDataset | None" = None  # `--streaming`: rows read lazily; `rows` a first few
    fingerprint: str | None = None  # of the files as they were read (`sources.fingerprint_files`): the run's data

    @property
    def examples(self) -> int:
        return sum(source.examples for source in self.sources) if self.stream is not None else len(self.rows)

    @property
    def has_negatives(self) -> bool:
        return self.negatives_per_query > 0

    @property
    def negatives_per_query(self) -> int:
        """Hard negatives per query in the sources that have them (0 when none has)."""
        return max((source.negatives_per_query for source in self.sources), default=0)

    def source_of_rows(self) -> list[int]:
        return [row["source"] for row in self.rows]

    def keep_first(self, count: int) -> None:
        """Keep the first `count` rows as read, and each source's count of them: each file in turn, the rows of a file
        split by its count of hard negatives grouped by that count, most first (not the file's first `count` lines)."""
        self.rows = self.rows[:count]
        cut = []
        for index, source in enumerate(self.sources):
            before, source.examples = source.examples, sum(row["source"] == index for row in self.rows)
            cut += [f"{source.name} {source.examples} of {before}"] if source.examples < before else []
        if cut:
            logger.warning(
                "--max_train_samples %d keeps the first rows as read, of each source: %s", count, ", ".join(cut)
            )


def load_triplets(
    source: str,
    *,
    split: str = "train",
    skip_invalid: bool = False,
    negatives_per_query: int = 1,
    line_numbers: bool = False,
) -> Triplets:
    """Read and validate triplets from a file, a folder of files (each file a source), or a Hub dataset id (or a local
    dataset repository, `is_dataset_repository`; each subset a source).

    Every row needs a non-empty string `query` and `positive` (`postive` is accepted). `negative` is optional: a
    string or a list of strings, of which the first `negatives_per_query` are used (0 drops them all). Rows of one
    file with different counts of hard negatives (e.g. SNLI rows without a contradiction) become separate sources,
    `<file> [K negatives]`, since a batch holds one count. An optional `instruction` column gives per-example query
    instructions. A bad row raises `TripletDataError` naming the file and row, or is skipped (and counted) with
    `skip_invalid=True`. With `line_numbers`, each row also holds `line`, its number in its file (or Hub subset), so
    that a file split by negative count can be put back in its own order (mining writes each file's rows so).
    """
    if negatives_per_query < 0:
        raise TripletDataError(
            f"--negatives_per_query {negatives_per_query}: give 0 (in-batch negatives only) or "
            "more hard negatives per query."
        )
    files, names, raw_rows = _raw_rows(source, split)
    if not raw_rows:
        raise TripletDataError(f"{source}: no rows found.")
    by_file: dict[str, list[tuple[int, dict]]] = {}
    for file, number, raw in raw_rows:
        by_file.setdefault(file, []).append((number, raw))
    rows, sources, skipped = [], [], 0
    for file, numbered in by_file.items():
        check_columns(file, numbered)
        parts, file_skipped = _valid_rows_by_negatives(file, numbered, negatives_per_query, skip_invalid, line_numbers)
        skipped += file_skipped
        for count in sorted(parts, reverse=True):
            label = names[file] if len(parts) == 1 else f"{names[file]} [{count} negative{'s' if count != 1 else ''}]"
            rows += [{**row, "source": len(sources)} for row in parts[count]]
            sources.append(
                TripletSource(label, len(parts[count]), count, file_skipped if count == max(parts) else 0, file)
            )
    if not rows:
        raise TripletDataError(f"{source}: every row was invalid; nothing to train on.")
    return Triplets(rows=rows, source=source, files=[str(f) for f in files], skipped=skipped, sources=sources)


def _raw_rows(source: str, split: str) -> tuple[list, dict[str, str], list[tuple[str, int, dict]]]:
    """(the files read, file or Hub subset -> its source name, (file, row number, row) of every row)."""
    if is_local_files(source):
        files = data_files(source)
        return files, source_names(source, files), read_rows(files)
    names, raw_rows = {}, []
    for subset in hub_subsets(source, split):
        label = hub_label(source, subset, split)
        names[label] = hub_source_name(source, subset)
        raw_rows += [(label, number, row) for number, row in iter_hub_rows(source, subset, split)]
    return [source], names, raw_rows


def _valid_rows_by_negatives(
    file: str, numbered: list[tuple[int, dict]], negatives_per_query: int, skip_invalid: bool, line_numbers: bool
) -> tuple[dict[int, list[dict]], int]:
    """One file's valid rows by their count of hard negatives (a batch holds one count), and how many were skipped."""
    parts: dict[int, list[dict]] = {}
    skipped = 0
    for number, raw in numbered:
        try:
            row = validate_row(raw, negatives_per_query)
        except TripletDataError as error:
            if not skip_invalid:
                raise TripletDataError(
                    f"{file}, row {number}: {error} (pass --skip_invalid_rows to skip such rows)"
                ) from None
            skipped += 1
            continue
        parts.setdefault(len(row["negatives"]), []).append({**row, "line": number} if line_numbers else row)
    if skipped:
        logger.warning("skipped %d invalid rows of %d in %s", skipped, len(numbered), file)
    if len(parts) > 1:
        logger.info(
            "%s: rows with %s hard negatives are kept as separate sources (a batch holds one count)",
            file,
            " / ".join(map(str, sorted(parts, reverse=True))),
        )
    return parts, skipped


def file_source_name(name: str) -> str:
    """The name of the file (or Hub subset) a source comes from: its name without the `[k negatives]` part.

    >>> file_source_name("snli_triplets [1 negative]")
    'snli_triplets'
    """
    return re.sub(r" \[\d+ negatives?\]$", "", name)


def sources_named(triplets: Triplets, keys, flag: str) -> dict[str, list[int]]:
    """Key -> the indices of the sources it names: a source's name (e.g. `snli_triplets [1 negative]`) or its file's
    stem or Hub subset (e.g. `snli_triplets`, every source of that file). A key that names no source is an error
    listing the sources there are."""
    known: dict[str, list[int]] = {}
    for index, item in enumerate(triplets.sources):
        for key in {item.name, file_source_name(item.name)}:  # + the file's (or subset's)
            known.setdefault(key, []).append(index)
    unknown = sorted(set(keys) - set(known))
    if unknown:
        raise TripletDataError(
            f"{flag} names {', '.join(map(repr, unknown))}, which is no source of {triplets.source}. "
            f"Sources there: {', '.join(sorted(known))} (a file's stem covers all its sources)."
        )
    return {key: known[key] for key in keys}


def set_source_instructions(triplets: Triplets, instructions: dict[str, str]) -> None:
    """Give each source named in `instructions` (`sources_named`) a query instruction, used for its rows that carry
    no `instruction` of their own; a source's own name wins over its file's stem."""
    for key, indices in sources_named(triplets, instructions, "--source_instructions").items():
        instruction = instructions[key]
        if not isinstance(instruction, str) or not instruction.strip():
            raise TripletDataError(
                f"--source_instructions[{key!r}]: give a non-empty instruction string, got {instruction!r}."
            )
        for index in indices:
            if triplets.sources[index].instruction is None or key == triplets.sources[index].name:
                triplets.sources[index].instruction = instruction.strip()


def set_source_weights(triplets: Triplets, weights: dict[str, float]) -> None:
    """Relative sampling weights per source (`sources_named`; a source's own name wins over its file's stem). Every
    source needs one (0 leaves a source out), so that no share is implied. A file stem's weight is the whole file's
    share, which its `[k negatives]` parts divide by their full batches (`batching.weighted_blocks`)."""
    named = sources_named(triplets, weights, "--source_weights")
    for key, indices in sorted(named.items(), key=lambda item: item[0] in {s.name for s in triplets.sources}):
        weight = weights[key]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
            raise TripletDataError(f"--source_weights[{key!r}]: give a number >= 0, got {weight!r}.")
        for index in indices:
            triplets.sources[index].weight, triplets.sources[index].weight_key = float(weight), key
    missing = [item.name for item in triplets.sources if item.weight is None]
    if missing:
        raise TripletDataError(
            f"--source_weights gives no weight for {', '.join(missing)}; give every source one "
            "(0 leaves a source out), or leave the flag out for shares that follow the sizes."
        )
    if not any(item.weight and item.examples for item in triplets.sources):
        raise TripletDataError("--source_weights: every source with rows has weight 0; nothing would train.")


def _clean(row: dict, name: str):
    if not isinstance(row, dict):
        return None
    for alias, canonical in FIELD_ALIASES.items():
        if canonical == name and name not in row and alias in row:
            name = alias
    value = row.get(name)
    return value.strip() if isinstance(value, str) else value


def raw_negatives(raw) -> list:
    """The row's hard negatives as given: `negative` as a string or a list ("" and [] mean none); a string that is
    a JSON list (a CSV cell's or a Hub CSV's several negatives, `["n1", "n2"]`) is that list.

    >>> raw_negatives({"negative": '["n1", "n2"]'}), raw_negatives({"negative": "[1] is cited"})
    (['n1', 'n2'], ['[1] is cited'])
    """
    value = _clean(raw, "negative")
    if value is None or value == "":
        return []
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        try:
            listed = json.loads(value)
        except json.JSONDecodeError:  # a text in brackets, not a list
            listed = None
        value = listed if isinstance(listed, list) else value
    return value if isinstance(value, list) else [value]


def validate_row(raw, negatives_per_query: int) -> dict:
    """The row with its first `negatives_per_query` hard negatives (fewer where it has fewer)."""
    if not isinstance(raw, dict):
        raise TripletDataError(f"expected an object with query/positive/negative fields, got {type(raw).__name__}")
    row = {}
    for name in ("query", "positive", "instruction"):
        value = _clean(raw, name)
        if value is None or value == "":
            if name != "instruction":
                raise TripletDataError(f"field {name!r} is missing or empty")
            value = None
        elif not isinstance(value, str):
            raise TripletDataError(f"field {name!r} must be a string, got {type(value).__name__} {value!r:.60}")
        row[name] = value
    negatives = raw_negatives(raw)
    if any(not isinstance(text, str) or not text.strip() for text in negatives):
        raise TripletDataError(
            f"field 'negative' must be a string or a list of non-empty strings, got {negatives!r:.80}"
        )
    row["negatives"] = [text.strip() for text in negatives[:negatives_per_query]]
    return row


@functools.cache
def near_miss(column) -> str | None:
    """The read column that a column not read seems meant to be (`negatives`, `Negative`, `hard_negatives` ->
    `negative`; `anchor` -> `query`), else None.

    >>> near_miss("negatives"), near_miss("anchor"), near_miss("Positives"), near_miss("negative_id")
    ('negative', 'query', 'positive', None)
    """
    name = str(column).strip().lower().removeprefix("hard_")
    if name in COLUMN_SYNONYMS:
        return COLUMN_SYNONYMS[name]
    close = difflib.get_close_matches(name, sorted(READ_COLUMNS), n=1, cutoff=0.8)
    if not close or abs(len(close[0]) - len(name)) > 2:  # `negative_id` is another column, not a misspelling
        return None
    return FIELD_ALIASES.get(close[0], close[0])


def misnamed_column(raw) -> str | None:
    """Why a row cannot be read as meant: it lacks a read column and holds a near miss of it (`negatives` without
    `negative`, whose hard negatives would be dropped unsaid), else None."""
    if not isinstance(raw, dict):
        return None
    for column in raw.keys() - READ_COLUMNS:
        meant = near_miss(column)
        if meant and not ({meant} | {alias for alias, name in FIELD_ALIASES.items() if name == meant}) & raw.keys():
            return (
                f"column {column!r} is not read; rename it to {meant!r}. Columns read: query, positive (or postive), "
                "negative (a string or a list of strings), instruction."
            )
    return None


def check_columns(label: str, numbered) -> None:
    """Refuse a source (file, Hub subset) whose rows hold a misnamed column (`misnamed_column`), with or without
    --skip_invalid_rows, and name its columns that are not read in one warning."""
    unread: dict = {}
    for number, raw in numbered:
        if problem := misnamed_column(raw):
            raise TripletDataError(f"{label}, row {number}: {problem}")
        if isinstance(raw, dict):
            unread.update(dict.fromkeys(raw.keys() - READ_COLUMNS))
    quiet = sorted(map(str, QUIET_COLUMNS & unread.keys()))
    loud = sorted(map(str, unread.keys() - QUIET_COLUMNS))
    if loud:
        logger.warning(
            "%s: columns not read (training reads query, positive, negative, instruction): %s", label, ", ".join(loud)
        )
    if quiet:
        logger.info("%s: columns not read: %s", label, ", ".join(quiet))


def text_id(text: str) -> int:
    """A stable 63-bit id of a text (the same in every process, unlike `hash`), to find duplicates in a batch."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def row_negatives(row: dict) -> list[str]:
    """A row's hard negatives: `negatives` (validated rows) or `negative` (a raw row's string), else none."""
    if "negatives" in row:
        return list(row["negatives"] or [])
    return [row["negative"]] if row.get("negative") else []
