"""Hard-negative mining: for every (query, positive) row, the documents of its own source that an embedding model ranks
closest to the query, skipping the positive and a margin band of near-positives; written as new triplet files.

    python mine.py --train_data ../shared/data/train --model path/to/all-MiniLM-L6-v2 --output mined/
    python mine.py --train_data pairs.jsonl --model outputs/smollm2-135m-v5/model --num_negatives 3 \\
        --relative_margin 0.05 --output mined/

The corpus of a source is every positive and given negative of that source (deduplicated), so a Quora question gets
another Quora question as its negative, never an SNLI caption: the one-source-per-batch sampling of training then sees
negatives of the query's own kind. A candidate is skipped when it is the query itself or one of its positives (same
text after stripping; a query repeated in several rows has all their positives, each relevant to it), when it ranks
above `range_min`, when it is not within the `range_max` nearest, or when it is too close to the positive to be a
safe negative (a likely false negative); ranks count the documents other than the query and its positives:

- `absolute_margin` m: keep only candidates with sim(query, candidate) <= sim(query, positive) - m;
- `relative_margin` r: keep only candidates with sim(query, candidate) <= sim(query, positive) * (1 - r)
  (NV-Retriever's "TopK-PercPos"; sentence-transformers' `mine_hard_negatives` uses the same two margins).

A poolattn model encodes each query with the prompt training gives it (`prompts.instruction_prompt`): its row's own
`instruction`, else its source's (`source_instructions`, keyed as train.py's `--source_instructions`), else
`query_instruction`; documents get none. Give the flags the model was trained with (`--preset small` gives each
source of the shared data its instruction: `presets.SMALL_RECIPE_INSTRUCTIONS`).

Given negatives are kept first (they are usually labelled, e.g. SNLI contradictions) unless `replace_given`; mined
ones follow, up to `num_negatives` in all (a row given more keeps them all). Every output row's `negative` is a
list; a query with no candidate left keeps what it had (its count is reported). `_provenance.json` beside the files
records the model (and its weights fingerprint), the settings and the counts per source; the folder trains as it is
(`--train_data mined/`).
"""

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from ..files import atomic_save, write_json
from ..prompts import instruction_prompt

logger = logging.getLogger(__name__)

PROVENANCE_FILE = "_provenance.json"  # "_": training's folder reader passes it over


class MiningError(ValueError):
    """Settings or inputs mining cannot use; the message says what was given and what to do."""


@dataclass
class MiningSettings:
    num_negatives: int = 1
    range_min: int = 0  # skip the nearest `range_min` candidates
    range_max: int = 50  # consider only the `range_max` nearest candidates
    absolute_margin: float | None = None
    relative_margin: float | None = 0.05
    replace_given: bool = False
    query_instruction: str | None = None  # the query prompt of a poolattn model (Instruct: ...\nQuery: )
    source_instructions: dict[str, str] | None = None  # per source (name or file stem), as train.py's flag
    batch_size: int = 64
    skip_invalid_rows: bool = False  # rows that fail validation skipped (and counted), not mined or written
    data_split: str = "train"  # of a Hub dataset or local dataset repository

    def check(self) -> None:
        if self.num_negatives < 1:
            raise MiningError(f"--num_negatives {self.num_negatives}: mine at least 1 negative per query.")
        if not 0 <= self.range_min < self.range_max:
            raise MiningError(
                f"--range_min {self.range_min} and --range_max {self.range_max}: need 0 <= range_min "
                "< range_max (the window of nearest candidates to take negatives from)."
            )
        if self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            raise MiningError(f"--relative_margin {self.relative_margin}: give a fraction in [0, 1), e.g. 0.05.")
        if self.absolute_margin is not None and self.absolute_margin < 0:
            raise MiningError(f"--absolute_margin {self.absolute_margin}: give a similarity gap >= 0, e.g. 0.1.")
        if self.batch_size < 1:
            raise MiningError(f"--batch_size {self.batch_size}: give the texts per encode batch, >= 1 (e.g. 64).")


@dataclass
class SourceMined:
    """What mining did to one source."""

    name: str
    rows: int
    corpus: int
    mined: int = 0  # negatives added
    queries_short: int = 0  # queries left with fewer than num_negatives negatives
    skipped_by_margin: int = 0  # candidates inside the window dropped as too close to the positive
    output: str = ""


@dataclass
class MiningRun:
    model: str
    model_fingerprint: str
    data: str
    settings: MiningSettings
    sources: list[SourceMined] = field(default_factory=list)
    seconds: float = 0.0
    skipped_rows: int = 0  # invalid rows skipped (`MiningSettings.skip_invalid_rows`): not in the output


class TextEncoder:
    """Normalised embeddings from a poolattn folder (queries with their prompts) or a sentence-transformers model."""

    def __init__(self, model: str, *, batch_size: int, query_instruction: str | None, trust_remote_code: bool = False):
        from ..model_folder import is_poolattn_folder

        self.batch_size = batch_size
        if is_poolattn_folder(model):
            from ..modeling_poolattn import PoolAttnEmbeddingModel

            self.poolattn = PoolAttnEmbeddingModel.from_pretrained(model, trust_remote_code=trust_remote_code).eval()
            self.query_instruction = query_instruction
        else:
            from sentence_transformers import SentenceTransformer

            try:
                self.transformer = SentenceTransformer(model, trust_remote_code=trust_remote_code)
            except OSError as error:
                raise MiningError(
                    f"--model {model}: not a poolattn folder, and sentence-transformers could not load "
                    f"it ({str(error).splitlines()[0]})."
                ) from None
            self.poolattn = None

    def __call__(self, texts: list[str], *, queries: bool, instructions: list[str | None] | None = None) -> np.ndarray:
        """Unit-norm embeddings of `texts`. A poolattn model's queries get one prompt each, formatted as training
        formats it (`instruction_prompt`): the row's own instruction (`instructions`, one per text), else
        `query_instruction`; documents, and every text of a sentence-transformers model, get none."""
        if self.poolattn is not None:
            import torch

            prompts = None
            if queries:
                own = instructions if instructions is not None else [None] * len(texts)
                prompts = [instruction_prompt(instruction or self.query_instruction) for instruction in own]
            with torch.inference_mode():  # encode batches texts of different prompts together, each pooled alone
                embeddings = self.poolattn.encode(texts, prompt=prompts, batch_size=self.batch_size, normalize=False)
        else:
            embeddings = self.transformer.encode(texts, batch_size=self.batch_size)
        embeddings = np.asarray(embeddings, dtype=np.float32)
        return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def nearest(query_embeddings: np.ndarray, corpus_embeddings: np.ndarray, count: int, chunk: int = 1024):
    """(indices, scores) of the `count` most similar corpus rows for every query, best first (cosine)."""
    count = min(count, len(corpus_embeddings))
    indices, scores = [], []
    for start in range(0, len(query_embeddings), chunk):
        similarity = query_embeddings[start : start + chunk] @ corpus_embeddings.T
        top = np.argpartition(-similarity, count - 1, axis=1)[:, :count]
        top_scores = np.take_along_axis(similarity, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        indices.append(np.take_along_axis(top, order, axis=1))
        scores.append(np.take_along_axis(top_scores, order, axis=1))
    return np.concatenate(indices), np.concatenate(scores)


def mine_source(
    rows: list[dict], encoder, settings: MiningSettings, name: str, instructions: list[str | None] | None = None
) -> tuple[list[dict], SourceMined]:
    """Mined rows of one source (`negative` a list) and the counts. `encoder(texts, queries=..., instructions=...)`
    returns normalised embeddings (`TextEncoder`); each query is encoded with its entry of `instructions` (the row's
    own, else its source's, as training gives them), by default its row's own instruction."""
    texts = [row["positive"] for row in rows] + [text for row in rows for text in row["negatives"]]
    corpus = list(dict.fromkeys(texts))
    report = SourceMined(name, len(rows), len(corpus))
    if instructions is None:
        instructions = [row.get("instruction") for row in rows]
    query_embeddings = encoder([row["query"] for row in rows], queries=True, instructions=instructions)
    corpus_embeddings = encoder(corpus, queries=False)
    position = {text: index for index, text in enumerate(corpus)}
    positive_scores = np.einsum(
        "ij,ij->i", query_embeddings, corpus_embeddings[[position[row["positive"]] for row in rows]]
    )
    # every positive of a query (rows that repeat it) is relevant to it: none is a negative of any of its rows
    positives: dict[str, set[str]] = {}
    for row in rows:
        positives.setdefault(row["query"], set()).add(row["positive"])
    excluded_most = 1 + max(map(len, positives.values()))  # the query itself and its positives
    indices, scores = nearest(query_embeddings, corpus_embeddings, settings.range_max + excluded_most)
    mined_rows = []
    for row, candidates, candidate_scores, positive_score in zip(rows, indices, scores, positive_scores):
        excluded = positives[row["query"]] | {row["query"]}
        ranked = [
            (corpus[index], score)
            for index, score in zip(candidates, candidate_scores)
            if corpus[index] not in excluded
        ][: settings.range_max]  # ranks among the documents other than the query and its positives
        negatives = _pick(row, ranked[settings.range_min :], _ceiling(positive_score, settings), settings, report)
        mined_rows.append(
            {
                "query": row["query"],
                "positive": row["positive"],
                "negative": negatives,
                **({"instruction": row["instruction"]} if row.get("instruction") else {}),
            }
        )
    return mined_rows, report


def _ceiling(positive_score: float, settings: MiningSettings) -> float:
    """The highest similarity a negative may have: the margins below the positive's similarity."""
    ceiling = float("inf")  # without a margin, even a document closer than the positive is taken
    if settings.absolute_margin is not None:
        ceiling = min(ceiling, positive_score - settings.absolute_margin)
    if settings.relative_margin is not None:
        ceiling = min(ceiling, positive_score * (1 - settings.relative_margin))
    return ceiling


def _pick(row: dict, ranked: list, ceiling: float, settings: MiningSettings, report: SourceMined) -> list[str]:
    """The row's negatives: its given ones (unless `replace_given`), then the `ranked` candidates (best first) at or
    below `ceiling`, up to `num_negatives` in all; counts what was mined, skipped and short in `report`."""
    negatives = [] if settings.replace_given else list(row["negatives"])
    for text, score in ranked:
        if len(negatives) >= settings.num_negatives:
            break
        if text in negatives:
            continue
        if score > ceiling:
            report.skipped_by_margin += 1
            continue
        negatives.append(text)
        report.mined += 1
    report.queries_short += len(negatives) < settings.num_negatives
    return negatives


def _check_instruction_is_used(settings: MiningSettings, model: str) -> None:
    """Query instructions (`query_instruction`, `source_instructions`) only with a model that prompts its queries
    (`TextEncoder`: a poolattn folder)."""
    from ..model_folder import is_poolattn_folder

    for flag, value in (
        ("--query_instruction", settings.query_instruction),
        ("--source_instructions", settings.source_instructions),
    ):
        if value and not is_poolattn_folder(model):
            raise MiningError(
                f"{flag}: {model} is not a poolattn folder, and a sentence-transformers model encodes the queries "
                "as given (the instruction would be left out unsaid); leave the flag out, or mine with a poolattn "
                "model."
            )


def mine_hard_negatives(
    train_data: str, model: str, *, output, settings: MiningSettings | None = None, trust_remote_code: bool = False
) -> MiningRun:
    """Mine every source of `train_data` (a file, a folder, or a Hub dataset) with `model`; write one JSONL per source
    and `_provenance.json` into `output`. Raises `MiningError` (or `TripletDataError`) before encoding on bad input."""
    from ..model_folder import (
        model_fingerprint,  # the model stack, when mining runs (the parser only needs the settings)
    )
    from .data import load_triplets, set_source_instructions

    if not str(train_data).strip():
        raise MiningError(f"--train_data {train_data!r}: empty; give a file, a folder of files or a Hub dataset id.")
    settings = settings or MiningSettings()
    settings.check()
    _check_instruction_is_used(settings, model)
    output = Path(output)
    if output.exists() and (output.is_file() or any(output.iterdir())):
        raise MiningError(f"--output {output} exists and is not an empty folder; give a new folder.")
    reading = dict(split=settings.data_split, skip_invalid=settings.skip_invalid_rows, line_numbers=True)
    triplets = load_triplets(train_data, negatives_per_query=10**6, **reading)  # every given negative
    set_source_instructions(triplets, settings.source_instructions or {})  # as training's --source_instructions
    started = time.time()
    encoder = TextEncoder(
        model,
        batch_size=settings.batch_size,
        query_instruction=settings.query_instruction,
        trust_remote_code=trust_remote_code,
    )
    run = MiningRun(model, model_fingerprint(model) if Path(model).exists() else model, train_data, settings)
    run.skipped_rows = triplets.skipped

    def save(folder: Path) -> None:  # into a temp folder: a mining run killed midway leaves no partial training data
        for name, rows in _rows_by_file(triplets).items():
            # each query's instruction as training's collator gives it: its row's own, else its source's
            instructions = [row["instruction"] or triplets.sources[row["source"]].instruction for row in rows]
            mined, report = mine_source(rows, encoder, settings, name, instructions)
            path = folder / f"{name}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in mined), encoding="utf-8")
            report.output = path.relative_to(folder).as_posix()
            run.sources.append(report)
            logger.info(
                "%s: %d rows, corpus %d, %d negatives mined, %d queries short of %d, %d candidates inside "
                "the margin skipped",
                name,
                report.rows,
                report.corpus,
                report.mined,
                report.queries_short,
                settings.num_negatives,
                report.skipped_by_margin,
            )
        run.seconds = round(time.time() - started, 1)
        write_json(folder / PROVENANCE_FILE, asdict(run))

    atomic_save(save, output)
    return run


def _rows_by_file(triplets) -> dict[str, list[dict]]:
    """Each file's (or Hub subset's) output name and rows: a file split by negative count is mined as one source
    again, its rows in the file's own order (`line`), named as training names its file (`nq/train` in nested folders,
    a Hub subset's name) without the `[k negatives]` part (`output_name`)."""
    from .data import file_source_name

    by_file: dict[str, list[dict]] = {}
    for row in triplets.rows:
        by_file.setdefault(triplets.sources[row["source"]].file, []).append(row)
    file_names = {source.file: file_source_name(source.name) for source in triplets.sources}
    named: dict[str, list[dict]] = {}
    for file, rows in by_file.items():
        name = base = output_name(file_names[file])
        for number in range(2, len(by_file) + 2):  # names made safe may meet: `a` and `_a`
            if name not in named:
                break
            name = f"{base}-{number}"
        named[name] = sorted(rows, key=lambda row: row["line"])
    return named


def output_name(name: str) -> str:
    """A source name as a path inside the output folder that training's folder reader reads back under the same name
    where it can: no part starting with `_` (left out, as `_provenance.json`) or `.` (hidden), none above the folder
    (a local dataset repository's default subset is named by its path: its last part).

    >>> output_name("nq/train"), output_name("_private"), output_name("/data/repo"), output_name("../repo")
    ('nq/train', 'private', 'repo', 'repo')
    """
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        path = PurePosixPath(path.name)
    parts = [part.lstrip("._") for part in path.parts]
    return "/".join(part for part in parts if part) or "data"
