"""Smaller embeddings, side by side: STS Spearman of each model's first N dimensions (renormalised), for a model
trained with `--matryoshka_dims` and one trained without, on one local STS copy.

    python train.py --variant 5 --max_steps 30 --output_dir runs/plain
    python train.py --variant 5 --max_steps 30 --output_dir runs/mrl --matryoshka_dims 64,144,288
    python benchmarks/matryoshka.py plain=runs/plain/model mrl=runs/mrl/model --sizes 64,144,288,576 \
        --task STSBenchmark --data-dir ../shared/data

Each model encodes every sentence once at its full size (the task's instruction as prompt, as `evaluate.py` gives it);
each size keeps the first N dimensions and renormalises them, so a model without Matryoshka sizes is cut the way
sentence-transformers' `truncate_dim` cuts it. Spearman's rho of the cosines against the gold scores, as mteb's STS
main score; the difference of each model from the first one at the same size comes with a 95% percentile interval
from a paired bootstrap over sentence pairs (1000 resamples, seed 0: both models scored on the same resampled pairs,
since the pairs are the units that vary).
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from transformers import AutoModel

from poolattn.evaluation.mteb_encoder import query_prompt
from poolattn.shared_data import SHARED_DATA, UNSET_DATA, require_shared_data


def read_pairs(folder: Path) -> tuple[list[str], list[str], np.ndarray]:
    rows = [json.loads(line) for line in (folder / "test.jsonl").read_text().splitlines() if line.strip()]
    gold = np.array([row["score"] for row in rows])
    return [row["sentence1"] for row in rows], [row["sentence2"] for row in rows], gold


def cosines(first: torch.Tensor, second: torch.Tensor, size: int) -> np.ndarray:
    a = torch.nn.functional.normalize(first[:, :size], dim=-1)
    b = torch.nn.functional.normalize(second[:, :size], dim=-1)
    return (a * b).sum(-1).numpy()


def bootstrap_difference(cosine_a, cosine_b, gold, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    generator = np.random.default_rng(seed)
    differences = []
    for _ in range(resamples):
        rows = generator.integers(0, len(gold), len(gold))
        differences.append(
            spearmanr(cosine_a[rows], gold[rows]).statistic - spearmanr(cosine_b[rows], gold[rows]).statistic
        )
    low, high = np.percentile(differences, [2.5, 97.5])
    return float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", metavar="NAME=FOLDER", help="the first is the reference for differences")
    parser.add_argument("--sizes", default="64,144,288,576", help="comma-separated embedding sizes")
    parser.add_argument("--task", default="STSBenchmark")
    parser.add_argument("--data-dir", default=str(SHARED_DATA) if SHARED_DATA else UNSET_DATA)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    models = dict(item.split("=", 1) for item in args.models)
    sizes = [int(size) for size in args.sizes.split(",")]
    first, second, gold = read_pairs(Path(require_shared_data(args.data_dir, "--data-dir")) / args.task)
    prompt = query_prompt(args.task, "STS", prompt_type=None)
    scores = {}
    for name, folder in models.items():
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        hidden = model.config.text_config.hidden_size
        if max(sizes) > hidden:
            raise SystemExit(f"--sizes {args.sizes}: {name} has {hidden} dimensions.")
        embed = [
            model.encode(texts, prompt=prompt, normalize=False, convert_to_numpy=False, batch_size=args.batch_size)
            for texts in (first, second)
        ]
        scores[name] = {size: cosines(*embed, size) for size in sizes}
        print(f"{name}: {folder} (trained sizes: {model.config.matryoshka_dims or 'full only'} + {hidden})")
    reference = next(iter(models))
    print(
        f"\n{args.task} ({len(gold)} pairs), Spearman of cosines; difference vs {reference} with a paired-bootstrap "
        "95% interval over pairs"
    )
    print(
        "| size | "
        + " | ".join(models)
        + " | "
        + " | ".join(f"{name} - {reference}" for name in list(models)[1:])
        + " |"
    )
    print("|---" * (1 + 2 * len(models) - 1) + "|")
    for size in sizes:
        rhos = [spearmanr(scores[name][size], gold).statistic for name in models]
        differences = []
        for name, rho in zip(list(models)[1:], rhos[1:]):
            low, high = bootstrap_difference(scores[name][size], scores[reference][size], gold)
            differences.append(f"{rho - rhos[0]:+.4f} [{low:+.4f}, {high:+.4f}]")
        print(f"| {size} | " + " | ".join(f"{rho:.4f}" for rho in rhos) + " | " + " | ".join(differences) + " |")


if __name__ == "__main__":
    main()
