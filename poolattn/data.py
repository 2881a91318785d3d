"""Training triplets (query, positive, optional hard negative) from local files, folders or the Hub; their collator.

>>> from poolattn.data import SAMPLE_TRIPLETS, load_triplets
>>> triplets = load_triplets(str(SAMPLE_TRIPLETS))
>>> len(triplets.rows) >= 200, sorted(triplets.rows[0])
(True, ['instruction', 'negative', 'positive', 'query'])
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .modeling_poolattn import pad_features, pad_token_id_for, tokenize_for_embedding
from .prompts import instruction_prompt

logger = logging.getLogger(__name__)

SAMPLE_TRIPLETS = Path(__file__).parent / "sample_data" / "sample_triplets.jsonl"
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
FIELD_ALIASES = {"postive": "positive"}  # the paper's data (yixuantt/ir_data) spells it this way
TEXT_FIELDS = ("query", "positive", "negative", "instruction")


class TripletDataError(ValueError):
    """A training file or row that cannot be used; the message names the file and row."""


@dataclass
class Triplets:
    """Validated rows `{query, positive, negative, instruction}` (negative/instruction may be None)."""

    rows: list[dict]
    source: str
    files: list[str] = field(default_factory=list)
    skipped: int = 0

    @property
    def has_negatives(self) -> bool:
        return bool(self.rows) and self.rows[0]["negative"] is not None


def _data_files(source: str) -> list[Path]:
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in FILE_FORMATS)
        if not files:
            raise TripletDataError(f"{source}: folder holds no {', '.join(FILE_FORMATS)} files.")
        return files
    if path.suffix not in FILE_FORMATS:
        raise TripletDataError(
            f"{source}: unsupported file type {path.suffix!r}. Allowed: {', '.join(FILE_FORMATS)} files, a folder of "
            "them, or a Hugging Face Hub dataset id."
        )
    return [path]


def _read_rows(files: list[Path]) -> list[tuple[str, int, dict]]:
    """(file, 1-based row number, raw row) for every row of every file."""
    import datasets

    rows = []
    for path in files:
        if path.stat().st_size == 0:
            raise TripletDataError(f"{path}: file is empty; expected rows with query, positive and optional negative.")
        # JSONL is read directly: exact row numbers, and datasets' type inference cannot hide errors
        if path.suffix == ".jsonl":
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    rows.append((str(path), number, json.loads(line)))
                except json.JSONDecodeError as error:
                    raise TripletDataError(f"{path}, row {number}: not valid JSON ({error}).") from error
        else:
            table = datasets.load_dataset(FILE_FORMATS[path.suffix], data_files=str(path), split="train")
            rows.extend((str(path), number, row) for number, row in enumerate(table, start=1))
    return rows


def load_triplets(source: str, *, split: str = "train", skip_invalid: bool = False) -> Triplets:
    """Read and validate triplets from a file, a folder of files, or a Hub dataset id (through `datasets`).

    Every row needs a non-empty string `query` and `positive` (`postive` is accepted). `negative` is optional for the
    whole dataset: once any row has one, every row must (the contrastive batch has one hard negative per query).
    An optional `instruction` column gives per-example query instructions. A bad row raises `TripletDataError`
    naming the file and row, or is skipped (and counted) with `skip_invalid=True`.
    """
    if Path(source).exists():
        files = _data_files(source)
        raw_rows = _read_rows(files)
    else:
        import datasets

        try:
            table = datasets.load_dataset(source, split=split)
        except Exception as error:
            raise TripletDataError(
                f"{source}: not a local file or folder, and loading it as a Hub dataset failed ({error})."
            ) from error
        files = [source]
        raw_rows = [(f"{source}[{split}]", number, row) for number, row in enumerate(table, start=1)]
    if not raw_rows:
        raise TripletDataError(f"{source}: no rows found.")

    with_negatives = any(_clean(row, "negative") for _, _, row in raw_rows)
    rows, skipped = [], 0
    for file, number, raw in raw_rows:
        try:
            rows.append(_validate(raw, with_negatives))
        except TripletDataError as error:
            if not skip_invalid:
                raise TripletDataError(
                    f"{file}, row {number}: {error} (pass --skip_invalid_rows to skip such rows)"
                ) from None
            skipped += 1
    if skipped:
        logger.warning("skipped %d invalid rows of %d in %s", skipped, len(raw_rows), source)
    if not rows:
        raise TripletDataError(f"{source}: every row was invalid; nothing to train on.")
    return Triplets(rows=rows, source=source, files=[str(f) for f in files], skipped=skipped)


def _clean(row: dict, name: str):
    if not isinstance(row, dict):
        return None
    for alias, canonical in FIELD_ALIASES.items():
        if canonical == name and name not in row and alias in row:
            name = alias
    value = row.get(name)
    return value.strip() if isinstance(value, str) else value


def _validate(raw, with_negatives: bool) -> dict:
    if not isinstance(raw, dict):
        raise TripletDataError(f"expected an object with query/positive/negative fields, got {type(raw).__name__}")
    row = {}
    for name in TEXT_FIELDS:
        value = _clean(raw, name)
        required = name in ("query", "positive") or (name == "negative" and with_negatives)
        if value is None or value == "":
            if required:
                raise TripletDataError(f"field {name!r} is missing or empty")
            value = None
        elif not isinstance(value, str):
            raise TripletDataError(f"field {name!r} must be a string, got {type(value).__name__} {value!r:.60}")
        row[name] = value
    return row


class TripletCollator:
    """Rows -> {"queries": batch, "documents": batch}; documents are the positives, then the hard negatives.

    Each batch holds `input_ids`, `attention_mask` and `pooling_mask` (query instruction tokens excluded from pooling).
    A row's own `instruction` wins over `query_instruction`.
    """

    def __init__(self, tokenizer, *, query_max_length: int, document_max_length: int, add_eos: bool,
                 query_instruction: str | None = None):
        self.tokenizer = tokenizer
        self.query_max_length, self.document_max_length = query_max_length, document_max_length
        self.add_eos, self.query_instruction = add_eos, query_instruction
        self.pad_token_id = pad_token_id_for(tokenizer)

    def _batch(self, texts, *, prompt, max_length) -> dict[str, torch.Tensor]:
        features = tokenize_for_embedding(self.tokenizer, texts, prompt=prompt, max_length=max_length,
                                          add_eos=self.add_eos)
        return pad_features(features, pad_token_id=self.pad_token_id, padding_side=self.tokenizer.padding_side)

    def __call__(self, rows: list[dict]) -> dict[str, dict[str, torch.Tensor]]:
        prompts = [instruction_prompt(row.get("instruction") or self.query_instruction) for row in rows]
        documents = [row["positive"] for row in rows] + [row["negative"] for row in rows if row.get("negative")]
        return {
            "queries": self._batch([row["query"] for row in rows], prompt=prompts, max_length=self.query_max_length),
            "documents": self._batch(documents, prompt=None, max_length=self.document_max_length),
        }
