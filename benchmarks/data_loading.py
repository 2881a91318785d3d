"""Training data in memory vs streamed: time to the first batches and peak memory on synthetic triplet files.

    python benchmarks/data_loading.py                       # 1,000,000 rows in 2 sources, 20 batches of 32
    python benchmarks/data_loading.py --rows 200000 --batches 100 --buffer 10000

Each contender runs in a fresh process (peak resident set, VmHWM, of that process alone), on the same files:
- `in-memory`: what `train.py` does without `--streaming`: `load_triplets` (every row read, validated, kept) and the
  `datasets.Dataset` the Trainer receives, then the first batches through `SourceBatchSampler`;
- `streaming`: what `train.py --streaming` does: `stream_triplets` (files counted, not parsed) and the first batches
  of `SourceBatchStream` through a shuffle buffer of `--buffer` rows per source;
- `hub-streaming`: `train.py --streaming` on a Hub dataset, here the same files as a local dataset repository (a
  README.md declaring the two subsets and their sizes, as a Hub card does): each subset streamed through `datasets`.
Rows are ~300 characters of text (query, positive, negative), like sentence-level training data. Times include
starting Python and importing the package (about 6 s on the 2-core machine), the same for both.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = [
    "the",
    "a",
    "of",
    "model",
    "query",
    "passage",
    "answer",
    "question",
    "search",
    "vector",
    "index",
    "layer",
    "token",
    "train",
    "data",
    "river",
    "bank",
    "city",
    "market",
    "light",
    "water",
    "cell",
    "star",
    "paper",
    "code",
    "fast",
    "slow",
    "green",
    "blue",
    "book",
    "road",
    "house",
    "car",
    "fish",
    "rain",
    "sky",
]

CHILD = r"""
import json, sys, time
started = time.perf_counter()
mode, folder, batch, batches, buffer = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
if mode == "in-memory":
    import datasets
    from poolattn.training.batching import SourceBatchSampler
    from poolattn.training.data import load_triplets
    triplets = load_triplets(folder)
    dataset = datasets.Dataset.from_list(triplets.rows)
    loaded = time.perf_counter() - started
    order = iter(SourceBatchSampler(triplets.source_of_rows(), batch, seed=42))
    first = [[dataset[next(order)] for _ in range(batch)] for _ in range(batches)]
else:  # "streaming" reads the files of data/; "hub-streaming" the dataset repository around them, as a Hub id
    from poolattn.training.batching import stream_triplets
    triplets = stream_triplets(folder, batch_size=batch, seed=42, buffer_size=buffer)
    loaded = time.perf_counter() - started
    rows = iter(triplets.stream)
    first = [[next(rows) for _ in range(batch)] for _ in range(batches)]
total = time.perf_counter() - started
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"ready_s": loaded, "first_batches_s": total, "peak_mib": peak / 1024,
                  "examples": triplets.examples}))
"""


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def write_sources(folder: Path, rows: int) -> None:
    """`folder/data/`: the two sources' files; `folder/README.md`: the card that makes `folder` a dataset repo."""
    rng = random.Random(0)
    (folder / "data").mkdir()
    configs, infos = [], []
    for name, share in (("with_negatives", 0.6), ("pairs", 0.4)):
        with (folder / "data" / f"{name}.jsonl").open("w") as handle:
            for _ in range(int(rows * share)):
                row = {"query": sentence(rng, 10), "positive": sentence(rng, 20)}
                if name == "with_negatives":
                    row["negative"] = sentence(rng, 20)
                handle.write(json.dumps(row) + "\n")
        size = (folder / "data" / f"{name}.jsonl").stat().st_size
        configs.append(f"- config_name: {name}\n  data_files:\n  - split: train\n    path: data/{name}.jsonl\n")
        infos.append(
            f"- config_name: {name}\n  splits:\n  - name: train\n    num_bytes: {size}\n"
            f"    num_examples: {int(rows * share)}\n"
        )
    (folder / "README.md").write_text(f"---\nconfigs:\n{''.join(configs)}dataset_info:\n{''.join(infos)}---\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--buffer", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        write_sources(Path(folder), args.rows)
        size = sum(path.stat().st_size for path in (Path(folder) / "data").iterdir()) / 2**20
        written = time.perf_counter() - started
        print(
            f"{args.rows:,} rows in 2 sources, {size:.0f} MiB of JSONL (written in {written:.0f} s); "
            f"{args.batches} batches of {args.batch}; shuffle buffer {args.buffer:,} rows per source"
        )
        print(f"{'contender':<13} {'ready (s)':>10} {'first batches (s)':>18} {'peak RSS (MiB)':>15}")
        for mode in ("in-memory", "streaming", "hub-streaming"):
            source = folder if mode == "hub-streaming" else str(Path(folder) / "data")
            result = subprocess.run(
                [sys.executable, "-c", CHILD, mode, source, str(args.batch), str(args.batches), str(args.buffer)],
                capture_output=True,
                text=True,
                env={**os.environ, "TQDM_DISABLE": "1"},
            )
            if result.returncode:
                sys.exit(result.stderr[-3000:])
            figures = json.loads(result.stdout.strip().splitlines()[-1])
            print(
                f"{mode:<13} {figures['ready_s']:>10.1f} {figures['first_batches_s']:>18.1f} "
                f"{figures['peak_mib']:>15.0f}"
            )


if __name__ == "__main__":
    main()
