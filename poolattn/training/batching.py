"""Which rows form each batch: every loss call's batch from one source (the E5/llm2vec practice), in memory or
streamed from files, in the same order for the same seed.

- `SourceBatchSampler`: row indices for the Trainer's sampler, over rows loaded in memory (`data.load_triplets`);
- `SourceBatchStream`: the rows themselves, read lazily from each source's files (`train.py --streaming`), for data
  larger than memory; with a shuffle buffer at least as large as a source it gives exactly the sampler's order.

Per epoch (seed + epoch), each source's rows go through a buffered shuffle (the full shuffle when the buffer holds the
whole source) and are cut into blocks of `batch_size` rows (a source's remainder waits for the next epoch); the blocks
of every source are then interleaved at random, so a source's share of batches follows its size. Give `batch_size`
= queries per loss call across devices (per-device batch x processes): the Trainer cuts the stream into per-device
batches, and under DDP process r takes the r-th of each block's parts, so the processes of one step share a source.
"""

import logging
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch

from .data import Triplets, TripletSource, check_columns, misnamed_column, raw_negatives, validate_row
from .file_readers import count_rows, iter_file_rows
from .sources import (
    TripletDataError,
    count_hub_rows,
    data_files,
    hub_label,
    hub_source_name,
    hub_subsets,
    is_local_files,
    iter_hub_rows,
    source_names,
)

logger = logging.getLogger(__name__)

PEEK_ROWS = 1000  # rows read ahead to decide whether a streamed source has hard negatives


def buffered_shuffle(items: Iterable, buffer_size: int, rng: random.Random) -> Iterator:
    """`items` in a random order through a buffer of `buffer_size` (as streaming shuffles do): each item read
    replaces a random one of the buffer, which is yielded. A buffer holding every item gives `rng.shuffle`'s order.

    >>> order = list(range(5)); random.Random(0).shuffle(order)
    >>> list(buffered_shuffle(range(5), 10, random.Random(0))) == order
    True
    """
    buffer = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        index = rng.randrange(buffer_size)
        yield buffer[index]
        buffer[index] = item
    rng.shuffle(buffer)
    yield from buffer


def block_order(blocks_per_source: dict[int, int], rng: random.Random) -> list[int]:
    """The source of every block of an epoch: each source as often as it has full blocks, interleaved at random."""
    order = [source for source, blocks in sorted(blocks_per_source.items()) for _ in range(blocks)]
    rng.shuffle(order)
    return order


def _epoch_rng(seed: int, epoch: int, source: int | None = None) -> random.Random:
    return random.Random(f"{seed}/{epoch}" if source is None else f"{seed}/{epoch}/{source}")


class SourceBatchSampler(torch.utils.data.Sampler):
    """Row indices in an order where every `batch_size` consecutive rows come from one source (module doc).

    `weights` (source index -> relative weight) replaces the size-proportional shares: an epoch keeps its number of
    blocks, source s gets round(blocks x w_s / sum(w)) of them, a source asked for more rows than it has goes through
    them again (reshuffled), and weight 0 leaves a source out. Sources of one `weight_groups` key (one file's parts,
    weighted by the file's stem) share that weight (`weighted_blocks`)."""

    def __init__(
        self,
        source_of_rows: list[int],
        batch_size: int,
        *,
        seed: int,
        weights: dict[int, float] | None = None,
        weight_groups: dict[int, str] | None = None,
    ):
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0
        self.rows_by_source: dict[int, list[int]] = {}
        for index, source in enumerate(source_of_rows):
            self.rows_by_source.setdefault(source, []).append(index)
        self.blocks = {source: len(rows) // batch_size for source, rows in self.rows_by_source.items()}
        if weights is not None:
            self.blocks = weighted_blocks(self.blocks, weights, weight_groups)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        shuffled = {
            source: _reshuffling(rows, self.seed, self.epoch, source) for source, rows in self.rows_by_source.items()
        }
        for source in block_order(self.blocks, _epoch_rng(self.seed, self.epoch)):
            for _ in range(self.batch_size):
                yield next(shuffled[source])

    def __len__(self) -> int:
        return sum(self.blocks.values()) * self.batch_size


def weighted_blocks(
    blocks: dict[int, int], weights: dict[int, float], groups: dict[int, str] | None = None
) -> dict[int, int]:
    """Blocks per source for given relative weights, the epoch's total kept (largest remainders). Sources of one
    group share its weight (given on each of them) in proportion to their own blocks: a part smaller than one batch
    gets none, as without weights.

    >>> weighted_blocks({0: 90, 1: 10}, {0: 1, 1: 1})
    {0: 50, 1: 50}
    >>> weighted_blocks({0: 60, 1: 20, 2: 0, 3: 20}, {0: 1, 1: 1, 2: 1, 3: 1}, {0: "a", 1: "a", 2: "a"})
    {0: 38, 1: 12, 2: 0, 3: 50}
    """
    groups = groups or {}
    group_blocks: dict = {}
    for source, count in blocks.items():
        group_blocks[groups.get(source, source)] = group_blocks.get(groups.get(source, source), 0) + count
    shares = {
        source: weights.get(source, 0) * count / group_blocks[groups.get(source, source)] if count else 0
        for source, count in blocks.items()
    }
    total, weight_sum = sum(blocks.values()), sum(shares.values())
    if weight_sum <= 0:
        raise ValueError("source weights: at least one source with a full batch needs a weight above 0.")
    exact = {source: total * share / weight_sum for source, share in shares.items()}
    chosen = {source: int(share) for source, share in exact.items()}
    for source in sorted(exact, key=lambda s: chosen[s] - exact[s])[: total - sum(chosen.values())]:
        chosen[source] += 1
    return chosen


def _reshuffling(rows: list[int], seed: int, epoch: int, source: int) -> Iterator[int]:
    """A source's rows in the epoch's shuffled order, then (when weights ask for more) reshuffled passes again."""
    yield from buffered_shuffle(rows, len(rows), _epoch_rng(seed, epoch, source))
    repeat = 1
    while True:
        yield from buffered_shuffle(rows, len(rows), random.Random(f"{seed}/{epoch}/{source}/{repeat}"))
        repeat += 1


@dataclass
class StreamedSource:
    """One file, or one subset of a Hub dataset, read lazily: its row count (counted up front, not parsed) and hard
    negatives per query."""

    name: str
    file: str  # a local file, or the Hub dataset id (or local dataset repository) when `subset` is given
    rows: int
    negatives_per_query: int = 0
    subset: str | None = None
    split: str = "train"

    @property
    def label(self) -> str:
        """Where its rows come from, as errors and the manifest name it."""
        return self.file if self.subset is None else hub_label(self.file, self.subset, self.split)

    def raw_rows(self) -> Iterator[tuple[int, dict]]:
        """(1-based row number, raw row), read lazily."""
        if self.subset is None:
            return iter_file_rows(Path(self.file))
        return iter_hub_rows(self.file, self.subset, self.split, streaming=True)


class SourceBatchStream(torch.utils.data.IterableDataset):
    """Validated rows `{query, positive, negatives, instruction, source}`, read lazily from each source's file, every
    `batch_size` consecutive rows from one source (module doc). A row that fails validation stops the run naming its
    file and row, or with `skip_invalid` is skipped (a source that runs short gives fewer blocks that epoch)."""

    def __init__(
        self,
        sources: list[StreamedSource],
        batch_size: int,
        *,
        seed: int,
        buffer_size: int,
        negatives_per_query: int,
        skip_invalid: bool = False,
    ):
        self.sources, self.batch_size, self.seed, self.epoch = sources, batch_size, seed, 0
        self.buffer_size, self.negatives_per_query, self.skip_invalid = buffer_size, negatives_per_query, skip_invalid
        self.warned: set[int] = set()  # sources whose later rows carry negatives their first rows did not

    @classmethod
    def of_files(
        cls,
        files: list[Path],
        batch_size: int,
        *,
        seed: int,
        buffer_size: int,
        negatives_per_query: int,
        skip_invalid: bool = False,
        names: dict[str, str] | None = None,
    ) -> "SourceBatchStream":
        """One source per file (named by `names`, default its stem); each counted, and its first rows read to see
        whether it has hard negatives."""
        names = names or {}
        sources = [
            StreamedSource(names.get(str(path), Path(path).stem), str(path), count_rows(path)) for path in files
        ]
        return cls(
            _with_negatives(sources, negatives_per_query, skip_invalid),
            batch_size,
            seed=seed,
            buffer_size=buffer_size,
            negatives_per_query=negatives_per_query,
            skip_invalid=skip_invalid,
        )

    @classmethod
    def of_hub(
        cls,
        dataset: str,
        split: str,
        batch_size: int,
        *,
        seed: int,
        buffer_size: int,
        negatives_per_query: int,
        skip_invalid: bool = False,
    ) -> "SourceBatchStream":
        """One source per subset of a Hub dataset (or local dataset repository); each counted from the dataset's
        metadata (else in one streamed pass), and its first rows read to see whether it has hard negatives."""
        subsets = hub_subsets(dataset, split)
        sources = [
            StreamedSource(
                hub_source_name(dataset, subset),
                dataset,
                count_hub_rows(dataset, subset, split),
                subset=subset,
                split=split,
            )
            for subset in subsets
        ]
        return cls(
            _with_negatives(sources, negatives_per_query, skip_invalid),
            batch_size,
            seed=seed,
            buffer_size=buffer_size,
            negatives_per_query=negatives_per_query,
            skip_invalid=skip_invalid,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rows_of(self, index: int) -> Iterator[dict]:
        source = self.sources[index]
        for number, raw in source.raw_rows():
            if problem := misnamed_column(raw):  # not a bad row: the source's column, even with skip_invalid
                raise TripletDataError(f"{source.label}, row {number}: {problem}")
            try:
                row = validate_row(raw, source.negatives_per_query)
                if len(row["negatives"]) < source.negatives_per_query:
                    raise TripletDataError(_short_of_negatives(len(row["negatives"]), source.negatives_per_query))
            except TripletDataError as error:
                if self.skip_invalid:
                    continue
                raise TripletDataError(
                    f"{source.label}, row {number}: {error} (pass --skip_invalid_rows to skip such rows)"
                ) from None
            self._warn_of_negatives_left(index, number, raw)
            yield {**row, "source": index}

    def _warn_of_negatives_left(self, index: int, number: int, raw: dict) -> None:
        """Once per source: a row with more hard negatives than the source trains with (as many as its first rows
        had), which the in-memory route would have used."""
        source, carried = self.sources[index], len(raw_negatives(raw))
        if index in self.warned or source.negatives_per_query >= min(carried, self.negatives_per_query):
            return
        self.warned.add(index)
        logger.warning(
            "%s, row %d: %d hard negative(s), but the source's first %d rows had %d, so this streamed source trains "
            "with %d per query; put the rows with more in a file of their own to use them",
            *(source.label, number, carried, PEEK_ROWS, source.negatives_per_query, source.negatives_per_query),
        )

    def __iter__(self):
        return self.pass_rows(self.epoch)

    def passes(self) -> Iterator[dict]:
        """Pass `epoch`, then `epoch + 1`, ... as one endless iteration, as training reads the stream (`Passes`);
        it ends only if a pass gives no row."""
        epoch = self.epoch
        while True:
            rows = self.pass_rows(epoch)
            first = next(rows, None)
            if first is None:
                return
            yield first
            yield from rows
            epoch += 1

    def pass_rows(self, epoch: int) -> Iterator[dict]:
        """One pass over every source, shuffled for `seed` + `epoch` (module doc)."""
        shuffled = {
            index: buffered_shuffle(self.rows_of(index), self.buffer_size, _epoch_rng(self.seed, epoch, index))
            for index in range(len(self.sources))
        }
        blocks = {index: source.rows // self.batch_size for index, source in enumerate(self.sources)}
        dry = set()
        for index in block_order(blocks, _epoch_rng(self.seed, epoch)):
            if index in dry:
                continue
            block = [row for _, row in zip(range(self.batch_size), shuffled[index])]
            if len(block) < self.batch_size:  # skipped rows: this source has no full block left this epoch
                dry.add(index)
                continue
            yield from block


def _short_of_negatives(have: int, want: int) -> str:
    return (
        f"field 'negative' has {have} hard negative(s), and a streamed source's rows all have as many as its first "
        f"{PEEK_ROWS} rows do ({want}); put the rows of each count in a file of their own, train without --streaming "
        f"(rows are grouped by count there), or give --negatives_per_query {have}"
    )


def _with_negatives(sources: list[StreamedSource], negatives_per_query: int, skip: bool) -> list[StreamedSource]:
    """Each source's hard negatives per query: as many as its first rows carry, at most `negatives_per_query` (every
    row of a streamed source must have that many: `SourceBatchStream.rows_of`); their columns checked
    (`data.check_columns`). A first row with fewer is refused now, not when training reaches it (with `skip`, the
    skipping is said now, since the rows are only counted as a pass reads them)."""
    for source in sources:
        numbered = [item for _, item in zip(range(PEEK_ROWS), source.raw_rows())]
        check_columns(source.label, numbered)
        counts = [(number, len(raw_negatives(raw))) for number, raw in numbered if isinstance(raw, dict)]
        source.negatives_per_query = min(negatives_per_query, max((count for _, count in counts), default=0))
        short = next(((n, count) for n, count in counts if count < source.negatives_per_query), None)
        if short and not skip:
            message = _short_of_negatives(short[1], source.negatives_per_query)
            raise TripletDataError(f"{source.label}, row {short[0]}: {message} (or pass --skip_invalid_rows)")
        if short:
            logger.warning(
                "%s: rows short of %d hard negative(s) (row %d on) are skipped",
                source.label,
                source.negatives_per_query,
                short[0],
            )
    return sources


def stream_triplets(
    source: str,
    *,
    batch_size: int,
    seed: int,
    buffer_size: int,
    negatives_per_query: int = 1,
    skip_invalid: bool = False,
    split: str = "train",
) -> Triplets:
    """`Triplets` whose rows are read lazily from the files of `source` (one source per file) or the subsets of a Hub
    dataset (one source per subset, `split`), every `batch_size` consecutive rows from one source
    (`batching.SourceBatchStream`); sources are counted, not loaded."""
    common = dict(
        seed=seed, buffer_size=buffer_size, negatives_per_query=negatives_per_query, skip_invalid=skip_invalid
    )
    if is_local_files(source):
        paths = data_files(source)
        files = [str(path) for path in paths]
        stream = SourceBatchStream.of_files(paths, batch_size, names=source_names(source, paths), **common)
    else:
        files = [source]
        stream = SourceBatchStream.of_hub(source, split, batch_size, **common)
    # the first valid rows (the export's check texts, the collator's probe): of the first source that has any
    first = []
    for index in range(len(stream.sources)):
        if first := list(islice(stream.rows_of(index), 64)):
            break
    if not first:
        raise TripletDataError(f"{source}: no source has a valid row (--skip_invalid_rows skipped them all).")
    sources = [
        TripletSource(
            item.name,
            item.rows,
            item.negatives_per_query,
            file=item.file if item.subset is None else hub_label(item.file, item.subset, item.split),
        )
        for item in stream.sources
    ]
    return Triplets(rows=first, source=source, files=files, sources=sources, stream=stream)
