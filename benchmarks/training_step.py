"""Throughput and peak memory of one contrastive training step, plain vs GradCache, on real SmolLM2-135M + LoRA, and
against sentence-transformers' `CachedMultipleNegativesRankingLoss` (its GradCache) on the same backbone and data.

    python benchmarks/training_step.py                     # B = 32, 128, 512 queries (+B hard negatives), chunk 32
    python benchmarks/training_step.py --batches 32 64 --plain-batches 32 64 --chunk 32 --json steps.json
    python benchmarks/training_step.py --device cuda --bf16 --batches 512 2048 --plain-batches 32 --st-batches

B is the contrastive batch: B queries, each scored against B positives + B hard negatives (3B texts per step).
Each (mode, B) runs in a fresh process: its peak resident set (VmHWM) over the step, in total and above the level
just before the step (activations and gradients; no optimizer step). Plain training keeps every activation of the
3B texts, so it runs only for `--plain-batches` (a batch that fits: B = 128 would need about 28 GB here); GradCache
runs for every B. Texts are real training triplets (`../shared/data/train/snli_triplets.jsonl`). The targets:
GradCache's peak at B = 512 within 1.5x its peak at B = 32, and its step time within 1.35x plain's at a batch that
fits; and no slower than sentence-transformers' cached loss at the same B and chunk, peak no higher (compare with
`--variant 1`, last-token pooling as ST's `Pooling("lasttoken")`).

On a GPU (`--device cuda`, `--bf16` for bf16 weights and autocast as `--preset paper` trains): the step is timed to
the device's end (synchronised), and peak memory is the CUDA allocator's peak over the step; the
sentence-transformers peer runs on CPU only (pass `--st-batches` with no value there).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from peak_memory import DETERMINISTIC_MALLOC, peak_rss_mib, reset_peak_rss, rss_mib

TRIPLETS = Path(__file__).resolve().parents[2] / "shared" / "data" / "train" / "snli_triplets.jsonl"


def one_step(args) -> dict:
    import torch

    from poolattn import training
    from poolattn.backbones import resolve_backbone
    from poolattn.training.collator import TripletCollator
    from poolattn.training.trainer import ContrastiveTrainer, ContrastiveTrainingArguments

    cuda = args.device.startswith("cuda")
    path = resolve_backbone("smollm2-135m")
    model_args = training.ModelArguments(
        variant=str(args.variant), backbone=path, model_dtype="bfloat16" if args.bf16 else "float32"
    )
    model, tokenizer = training.build_model(model_args, path, args.variant)
    rows = [json.loads(line) for line in TRIPLETS.read_text().splitlines()[: args.batch]]
    collator = TripletCollator(
        tokenizer, query_max_length=args.max_length, document_max_length=args.max_length, add_eos=True
    )
    batch = collator(rows)
    trainer = ContrastiveTrainer(
        model=model,
        args=ContrastiveTrainingArguments(
            output_dir="/tmp/gradcache-bench",
            use_cpu=not cuda,
            report_to="none",
            remove_unused_columns=False,
            gradcache_chunk_size=args.chunk,
            bf16=args.bf16,
        ),
    )
    trainer.current_gradient_accumulation_steps = 1
    tokens = int(batch["queries"]["attention_mask"].sum() + batch["documents"]["attention_mask"].sum())
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        before = rss_mib()
        reset_peak_rss()
    start = time.perf_counter()
    loss = trainer.training_step(trainer.model, batch)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mib()
    return {
        "mode": f"gradcache chunk {args.chunk}" if args.chunk else "plain",
        "batch": args.batch,
        "texts": args.batch * 3,
        "tokens": tokens,
        "loss": round(loss.item(), 4),
        "step_s": round(seconds, 1),
        "texts_per_s": round(args.batch * 3 / seconds, 1),
        "tokens_per_s": round(tokens / seconds),
        "peak_mib": round(peak, 1),
        "peak_above_start_mib": round(peak - before, 1),
        "torch_threads": torch.get_num_threads(),
        "device": args.device,
        "bf16": args.bf16,
    }


def st_cached_step(args) -> dict:
    """One step of sentence-transformers' `CachedMultipleNegativesRankingLoss` (its GradCache) on the same backbone,
    LoRA, triplets, texts (+ EOS), candidates (B positives + B hard negatives), temperature and chunk: the tool a user
    would pick instead. The model is `Transformer` + `Pooling("lasttoken")` + `Normalize`, i.e. variant 1."""
    import torch
    from peft import LoraConfig, get_peft_model
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.normalize import Normalize
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.modules.pooling import Pooling

    from poolattn.backbones import resolve_backbone
    from poolattn.training.arguments import ModelArguments
    from poolattn.training.presets import LORA_TARGETS
    from poolattn.training.trainer import ContrastiveTrainingArguments

    path = resolve_backbone("smollm2-135m")
    plain_text = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}  # no chat template
    transformer = Transformer(
        path, max_seq_length=args.max_length, module_output_name="token_embeddings", modality_config=plain_text
    )
    tokenizer = transformer.tokenizer
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    defaults = ModelArguments()
    # peft directly, as poolattn does (transformers' `add_adapter` route asks for a newer peft than training pins)
    transformer.model = get_peft_model(
        transformer.model,
        LoraConfig(
            r=defaults.lora_r,
            lora_alpha=defaults.lora_alpha,
            lora_dropout=defaults.lora_dropout,
            target_modules=LORA_TARGETS.split(","),
        ),
    )
    model = SentenceTransformer(
        modules=[transformer, Pooling(transformer.get_embedding_dimension(), "lasttoken"), Normalize()], device="cpu"
    )
    model.train()
    loss_function = CachedMultipleNegativesRankingLoss(
        model, scale=1 / ContrastiveTrainingArguments.temperature, mini_batch_size=args.chunk
    )
    rows = [json.loads(line) for line in TRIPLETS.read_text().splitlines()[: args.batch]]
    features = [
        model.preprocess([row[key] + tokenizer.eos_token for row in rows]) for key in ("query", "positive", "negative")
    ]
    tokens = int(sum(feature["attention_mask"].sum() for feature in features))
    before = rss_mib()
    reset_peak_rss()
    start = time.perf_counter()
    loss = loss_function(features, labels=None)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    return {
        "mode": f"ST cached chunk {args.chunk}",
        "batch": args.batch,
        "texts": args.batch * 3,
        "tokens": tokens,
        "loss": round(loss.item(), 4),
        "step_s": round(seconds, 1),
        "texts_per_s": round(args.batch * 3 / seconds, 1),
        "tokens_per_s": round(tokens / seconds),
        "peak_mib": round(peak, 1),
        "peak_above_start_mib": round(peak - before, 1),
        "torch_threads": torch.get_num_threads(),
    }


def run_one(batch: int, chunk: int, args, *, st_cached: bool = False) -> dict:
    command = [
        sys.executable,
        __file__,
        "--one",
        "--batch",
        str(batch),
        "--chunk",
        str(chunk),
        "--variant",
        str(args.variant),
        "--max-length",
        str(args.max_length),
        "--device",
        args.device,
    ]
    command += (["--st-one"] * st_cached) + (["--bf16"] * args.bf16)
    output = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[1],
        env={**os.environ, **DETERMINISTIC_MALLOC},
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128, 512], help="contrastive batches B")
    parser.add_argument("--plain-batches", type=int, nargs="*", default=[32], help="B that plain training runs at")
    parser.add_argument("--chunk", type=int, default=32, help="GradCache chunk, in texts")
    parser.add_argument("--variant", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--st-batches",
        type=int,
        nargs="*",
        default=[32, 128],
        help="B that sentence-transformers' CachedMultipleNegativesRankingLoss runs at (same chunk)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (peak memory: CUDA's allocator)")
    parser.add_argument("--bf16", action="store_true", help="bf16 weights and autocast (the paper preset's)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # run a single mode in this process
    parser.add_argument("--st-one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if (args.device != "cpu" or args.bf16) and args.st_batches:
        parser.error(
            f"--device {args.device}{' --bf16' if args.bf16 else ''}: the sentence-transformers peer runs "
            "on CPU in fp32 only here; pass --st-batches with no value."
        )
    if args.one:
        print(json.dumps(st_cached_step(args) if args.st_one else one_step(args)))
        return
    results = [run_one(batch, 0, args) for batch in args.plain_batches]
    results += [run_one(batch, args.chunk, args) for batch in args.batches]
    peers = [run_one(batch, args.chunk, args, st_cached=True) for batch in args.st_batches]
    results += peers
    print(
        f"variant {args.variant} + LoRA, SNLI triplets, max length {args.max_length}, {args.device}"
        f"{' bf16' if args.bf16 else ''}, "
        f"{results[0]['torch_threads']} threads, one step each in a fresh process"
    )
    print(
        f"{'mode':<20}{'B':>5}{'texts':>7}{'tokens':>8}{'step s':>8}{'texts/s':>9}{'peak MiB':>10}{'+MiB':>8}"
        f"{'loss':>8}"
    )
    for row in results:
        print(
            f"{row['mode']:<20}{row['batch']:>5}{row['texts']:>7}{row['tokens']:>8}{row['step_s']:>8}"
            f"{row['texts_per_s']:>9}{row['peak_mib']:>10}{row['peak_above_start_mib']:>8}{row['loss']:>8}"
        )
    cached = {row["batch"]: row for row in results if row["mode"].startswith("gradcache")}
    for peer in peers:
        if peer["batch"] in cached:
            ours = cached[peer["batch"]]
            print(
                f"B={peer['batch']}: poolattn GradCache (v{args.variant}) step time x"
                f"{ours['step_s'] / peer['step_s']:.2f} of sentence-transformers' cached loss, peak x"
                f"{ours['peak_mib'] / peer['peak_mib']:.2f} (+MiB x"
                f"{ours['peak_above_start_mib'] / peer['peak_above_start_mib']:.2f})"
            )
    for plain in (row for row in results if row["mode"] == "plain"):
        if plain["batch"] in cached:
            other = cached[plain["batch"]]
            print(
                f"B={plain['batch']}: GradCache step time x{other['step_s'] / plain['step_s']:.2f} of plain, "
                f"peak x{other['peak_mib'] / plain['peak_mib']:.2f} (+MiB x"
                f"{other['peak_above_start_mib'] / plain['peak_above_start_mib']:.2f})"
            )
    smallest, largest = min(cached), max(cached)
    if smallest != largest:
        low, high = cached[smallest], cached[largest]
        print(
            f"GradCache B={largest} vs B={smallest}: peak x{high['peak_mib'] / low['peak_mib']:.2f} "
            f"(+MiB x{high['peak_above_start_mib'] / low['peak_above_start_mib']:.2f}), "
            f"texts/s x{high['texts_per_s'] / low['texts_per_s']:.2f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
