"""Local retrieval and reranking folders (`corpus/`, `queries/`, `qrels/`, `top_ranked/` of JSONL files): read row by
row and checked before anything is encoded, every fault named by its file and row."""

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


class LocalTaskError(ValueError):
    """A task or local folder that cannot be evaluated; the message names the file and what to do."""


def _jsonl_rows(folder: Path) -> list[tuple[Path, int, dict]]:
    return [row for path in sorted(folder.glob("*.jsonl")) for row in _jsonl_rows_of(path)]


def _jsonl_rows_of(path: Path) -> list[tuple[Path, int, dict]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append((path, number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise LocalTaskError(f"{path}, row {number}: not valid JSON ({error}).") from None
    return rows


def _ids(folder: Path, what: str) -> set[str]:
    rows = _jsonl_rows(folder)
    if not rows:
        raise LocalTaskError(
            f"{folder}: no {what} rows (*.jsonl files of objects with `_id` and `text`); a retrieval "
            f"task needs a non-empty {folder.name}/."
        )
    ids = set()
    for path, number, row in rows:
        if not isinstance(row, dict) or "_id" not in row or not isinstance(row.get("text"), str):
            raise LocalTaskError(f"{path}, row {number}: expected an object with `_id` and a string `text`.")
        ids.add(str(row["_id"]))
    return ids


def check_retrieval_folder(folder: Path, *, strict: bool = True) -> list[str]:
    """Check a retrieval/reranking folder and return its evaluation splits (the qrels files' names).

    Raises `LocalTaskError` naming the file for an empty corpus or queries, missing qrels, and qrels or top_ranked
    rows naming unknown documents or queries. With `strict=False` (copies of stock mteb tasks, whose published data
    has a few such rows: ArguAna's qrels name 5 documents its corpus lacks) judgements of unknown documents are
    counted in a warning instead, as mteb's loader keeps them (those documents can never be retrieved).
    """
    corpus, queries = _ids(folder / "corpus", "document"), _ids(folder / "queries", "query")
    splits = sorted(path.stem for path in (folder / "qrels").glob("*.jsonl"))
    if not splits:
        raise LocalTaskError(
            f"{folder / 'qrels'}: no qrels files; add qrels/test.jsonl with rows "
            '{"query-id": ..., "corpus-id": ..., "score": 1}.'
        )
    unknown_documents, judged = 0, {}
    for path, number, row in _jsonl_rows(folder / "qrels"):
        if not isinstance(row, dict) or not {"query-id", "corpus-id", "score"} <= set(row):
            raise LocalTaskError(f"{path}, row {number}: expected query-id, corpus-id and score.")
        score = row["score"]
        if isinstance(score, bool) or not isinstance(score, int | float) or not float(score).is_integer():
            raise LocalTaskError(f"{path}, row {number}: score {score!r}; give a whole number (relevance 0, 1, 2...).")
        judged.setdefault(path.stem, set()).add(str(row["query-id"]))
        if str(row["corpus-id"]) not in corpus:
            if strict:
                raise LocalTaskError(
                    f"{path}, row {number}: corpus-id {row['corpus-id']!r} is not in corpus/; "
                    "every judged document must be in the corpus."
                )
            unknown_documents += 1
        if str(row["query-id"]) not in queries:
            raise LocalTaskError(f"{path}, row {number}: query-id {row['query-id']!r} is not in queries/.")
    if (folder / "top_ranked").is_dir():
        _check_top_ranked(folder, corpus, judged)
    if unknown_documents:
        logger.warning(
            "%s: %d judgement(s) name documents that are not in corpus/ (kept, as mteb keeps them: they "
            "count as relevant documents never retrieved)",
            folder / "qrels",
            unknown_documents,
        )
    return splits


def _check_top_ranked(folder: Path, corpus: set, judged: dict[str, set]) -> None:
    """Every judged query of a split has exactly one row of candidates there, all in the corpus: mteb scores a judged
    query without candidates 0 (logged only), and of two rows of one query keeps the last."""
    ranked_rows: dict[tuple[str, str], int] = {}
    for path, number, row in _jsonl_rows(folder / "top_ranked"):
        ranked = row.get("corpus-ids") if isinstance(row, dict) else None
        unknown = [doc for doc in ranked or [] if str(doc) not in corpus]
        if not isinstance(ranked, list) or "query-id" not in row or unknown:
            raise LocalTaskError(
                f"{path}, row {number}: expected query-id and corpus-ids that are all in corpus/ "
                f"(unknown: {unknown[:3]})."
            )
        if (first := ranked_rows.setdefault((path.stem, str(row["query-id"])), number)) != number:
            raise LocalTaskError(
                f"{path}, rows {first} and {number}: query-id {row['query-id']!r} twice; give one row."
            )
    for split, queries in judged.items():
        if missing := sorted(query for query in queries if (split, query) not in ranked_rows):
            raise LocalTaskError(
                f"{folder / 'top_ranked' / split}.jsonl: no candidates for {len(missing)} judged quer(ies) "
                f"({', '.join(missing[:3])}); give every query of qrels/{split}.jsonl its row of corpus-ids."
            )
