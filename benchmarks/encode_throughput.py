"""Encode throughput of the paper variants on the real SmolLM2-135M backbone and real STSBenchmark sentences.

    python benchmarks/encode_throughput.py                       # variants 1 and 5, 256 sentences
    python benchmarks/encode_throughput.py --variants 1 2 3 4 5 --sentences 512 --repeats 3

Variants are timed in interleaved rounds in one process and compared as ratios to variant 1 (this machine is noisy).
"""

import argparse
import json
import time
from pathlib import Path

import torch

from poolattn import PoolAttnEmbeddingModel
from poolattn.backbones import resolve_backbone

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "STSBenchmark" / "test.jsonl"


def load_sentences(count: int) -> list[str]:
    rows = [json.loads(line) for line in STSB.read_text().splitlines()]
    return [row[key] for row in rows for key in ("sentence1", "sentence2")][:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--variants", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    path = resolve_backbone(args.backbone)
    sentences = load_sentences(args.sentences)
    models = {v: PoolAttnEmbeddingModel.from_backbone(path, variant=v) for v in args.variants}
    tokenizer = models[args.variants[0]].get_tokenizer()
    tokens = sum(len(ids) + 1 for ids in tokenizer(sentences, add_special_tokens=True)["input_ids"])  # + EOS
    for model in models.values():
        model.encode(sentences[: args.batch_size], batch_size=args.batch_size)  # warm-up
    seconds = {v: [] for v in args.variants}
    for _ in range(args.repeats):
        for variant, model in models.items():
            start = time.perf_counter()
            model.encode(sentences, batch_size=args.batch_size)
            seconds[variant].append(time.perf_counter() - start)
    print(f"{len(sentences)} STSBenchmark sentences, {tokens} tokens, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"{'variant':<9}{'texts/s':>10}{'tokens/s':>11}{'vs v' + str(args.variants[0]):>9}")
    reference = min(seconds[args.variants[0]])
    for variant in args.variants:
        best = min(seconds[variant])
        print(f"{variant:<9}{len(sentences) / best:>10.1f}{tokens / best:>11.0f}{reference / best:>9.3f}")


if __name__ == "__main__":
    main()
