"""Peak memory and step time of one contrastive training step, plain vs GradCache, on real SmolLM2-135M + LoRA.

    python benchmarks/gradcache_memory.py                          # batch 256 (+256 hard negatives), chunk 16
    python benchmarks/gradcache_memory.py --batch 64 --chunk 16 --variant 5 --max-length 64

Each mode runs in a fresh process; peak memory is the process's peak resident set (VmHWM) above its level just
before the step, so it includes activations, gradients and the optimizer-free step only. Texts are real training
triplets (`../shared/data/train/snli_triplets.jsonl`).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

TRIPLETS = Path(__file__).resolve().parents[2] / "shared" / "data" / "train" / "snli_triplets.jsonl"


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def one_step(args) -> dict:
    import torch
    from transformers import TrainingArguments

    import train
    from poolattn.backbones import resolve_backbone
    from poolattn.data import TripletCollator
    from poolattn.trainer import ContrastiveTrainer

    path = resolve_backbone("smollm2-135m")
    model_args = train.ModelArguments(variant=str(args.variant), backbone=path)
    model, tokenizer = train.build_model(model_args, path, args.variant)
    rows = [json.loads(line) for line in TRIPLETS.read_text().splitlines()[: args.batch]]
    collator = TripletCollator(tokenizer, query_max_length=args.max_length, document_max_length=args.max_length,
                               add_eos=True)
    batch = collator(rows)
    trainer = ContrastiveTrainer(
        model=model, args=TrainingArguments(output_dir="/tmp/gradcache-bench", use_cpu=True, report_to="none",
                                            remove_unused_columns=False),
        gradcache_chunk_size=args.chunk,
    )
    trainer.current_gradient_accumulation_steps = 1
    tokens = int(batch["queries"]["attention_mask"].sum() + batch["documents"]["attention_mask"].sum())
    before = peak_rss_mib()
    reset_peak_rss()
    start = time.perf_counter()
    loss = trainer.training_step(trainer.model, batch)
    seconds = time.perf_counter() - start
    return {"mode": f"gradcache chunk {args.chunk}" if args.chunk else "plain", "batch": args.batch,
            "texts": args.batch * 3, "tokens": tokens, "loss": round(loss.item(), 4), "step_s": round(seconds, 1),
            "peak_above_start_mib": round(peak_rss_mib() - before, 1), "torch_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--variant", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--skip-plain", action="store_true", help="only GradCache (plain would not fit in memory)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # run a single mode in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_step(args)))
        return
    results = []
    for chunk in (args.chunk,) if args.skip_plain else (0, args.chunk):
        command = [sys.executable, __file__, "--one", "--batch", str(args.batch), "--chunk", str(chunk),
                   "--variant", str(args.variant), "--max-length", str(args.max_length)]
        output = subprocess.run(command, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
        results.append(json.loads(output.stdout.strip().splitlines()[-1]))
    print(f"variant {args.variant}, {args.batch} queries x {2 * args.batch} candidates, {results[0]['tokens']} tokens, "
          f"max length {args.max_length}")
    for row in results:
        print(f"  {row['mode']:<20} loss {row['loss']:<8} step {row['step_s']:>6} s   peak +{row['peak_above_start_mib']} MiB")
    if len(results) == 2:
        plain, cached = results
        print(f"  GradCache: memory x{cached['peak_above_start_mib'] / plain['peak_above_start_mib']:.2f}, "
              f"time x{cached['step_s'] / plain['step_s']:.2f}")


if __name__ == "__main__":
    main()
