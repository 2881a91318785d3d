"""Serving speed: poolattn's ONNX export in ONNX Runtime (fp32 and int8) against PyTorch `encode`, the bare backbone
and sentence-transformers, on the same real texts and the same backbone (SmolLM2-135M).

    python benchmarks/onnx_runtime.py                                     # variants 1-5, short and long texts
    python benchmarks/onnx_runtime.py --variants 5 --texts short --json onnx.json

Contenders (every one sorts texts by length and batches them the same way; all append EOS):
- `bare`, `sentence-transformers`: as in `encode_throughput.py` (the backbone's own forward with last-token pooling;
  the stock ST pipeline `Transformer` + `Pooling("lasttoken")`);
- `bare ORT`: the backbone alone exported with the same exporter (`torch.onnx.export(dynamo=True)`) and run by ONNX
  Runtime, last-token pooling after it: what ST's ONNX backend would run (that backend needs Optimum, whose
  releases pin transformers < 4.58 and cannot be installed beside transformers 5);
- `vN`: `PoolAttnEmbeddingModel.encode`; `vN ORT`: `PoolAttnOnnxModel.encode` on `poolattn-export-onnx`'s graph;
  `v5 ORT int8`: the dynamic int8 copy. Heads are fresh (seeded): cost, not quality.

Exports are written once into --workdir and reused. Throughput: interleaved rounds in one process, best round each,
one group of contenders loaded at a time (`bare` and a variant in PyTorch, ORT, int8), ratios to `bare` and to the
same variant in PyTorch measured in the same rounds; max |difference| of each ORT
contender's unit-norm embeddings from its PyTorch twin. Peak memory: the --memory contenders, each in a fresh process
(peak resident set over one encode, in total and above the level after loading; `DETERMINISTIC_MALLOC`).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from encode_throughput import BareBackbone, _Adapter, count_tokens, load_texts
from peak_memory import DETERMINISTIC_MALLOC, peak_rss_mib, reset_peak_rss, rss_mib

DEFAULT_WORKDIR = Path.home() / ".cache" / "poolattn" / "bench-onnx"
MEMORY_DEFAULT = ("bare", "bare ORT", "v5", "v5 ORT", "v5 ORT int8")


def variant_folder(variant: int, args) -> Path:
    """A seeded fresh-head model of `variant`, saved and exported (fp32, and int8 for variant 5) once."""
    from poolattn import PoolAttnEmbeddingModel, export_onnx
    from poolattn.onnx_poolattn import ONNX_FILE

    folder = Path(args.workdir) / f"v{variant}"
    if not (folder / ONNX_FILE).is_file():
        torch.manual_seed(0)
        model = PoolAttnEmbeddingModel.from_backbone(args.path, variant=variant, max_length=args.max_length)
        model.save_pretrained(folder)
        started = time.perf_counter()
        record = export_onnx(folder, quantize=variant == 5)
        print(
            f"v{variant}: exported in {time.perf_counter() - started:.0f} s (max difference from PyTorch "
            f"{record.max_abs_diff:.2g})",
            file=sys.stderr,
        )
    return folder


class BareOrt:
    """The backbone alone in ONNX Runtime (same exporter), last real token pooled and L2-normalised after it."""

    def __init__(self, args):
        import onnxruntime
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(args.path)
        self.tokenizer.pad_token = self.tokenizer.pad_token or self.tokenizer.eos_token
        path = Path(args.workdir) / "bare" / "model.onnx"
        if not path.is_file():
            model = AutoModel.from_pretrained(args.path).eval()

            class Backbone(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.model = model

                def forward(self, input_ids, attention_mask):
                    return self.model(
                        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
                    ).last_hidden_state

            example = self.tokenizer(["a b c", "a longer example text"], padding=True, return_tensors="pt")
            batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
            path.parent.mkdir(parents=True, exist_ok=True)
            program = torch.onnx.export(
                Backbone(),
                (example["input_ids"], example["attention_mask"]),
                dynamo=True,
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
            )
            program.save(str(path), external_data=True)
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def encode(self, texts, *, batch_size: int, max_length: int):
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        embeddings = [None] * len(texts)
        for start in range(0, len(texts), batch_size):
            chunk = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] + self.tokenizer.eos_token for i in chunk],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="np",
            )
            hidden = torch.from_numpy(
                self.session.run(None, {key: batch[key] for key in ("input_ids", "attention_mask")})[0]
            )
            last = torch.from_numpy(batch["attention_mask"]).cumsum(1).argmax(1)
            pooled = torch.nn.functional.normalize(hidden[torch.arange(len(chunk)), last], dim=-1)
            for i, row in zip(chunk, pooled):
                embeddings[i] = row
        return torch.stack(embeddings)


def build(name: str, args):
    """An object with `encode(texts, batch_size=, max_length=)` for one contender."""
    if name == "bare":
        return BareBackbone(args.path)
    if name == "bare ORT":
        return BareOrt(args)
    if name == "sentence-transformers":
        from encode_throughput import build as build_peer

        return build_peer(name, args.path, Path(args.workdir), args.max_length)
    variant, runtime = int(name[1]), name[2:].strip()
    folder = variant_folder(variant, args)
    if not runtime:
        from poolattn import PoolAttnEmbeddingModel

        model = PoolAttnEmbeddingModel.from_pretrained(folder).eval()
    else:
        from poolattn import PoolAttnOnnxModel
        from poolattn.onnx_poolattn import ONNX_FILE, ONNX_INT8_FILE

        model = PoolAttnOnnxModel.from_pretrained(folder, file_name=ONNX_INT8_FILE if "int8" in runtime else ONNX_FILE)
    return _Adapter(lambda texts, batch_size: model.encode(texts, batch_size=batch_size, convert_to_numpy=False))


def contender_groups(variants) -> list[list[str]]:
    """Contenders timed together. One group at a time is loaded (all fourteen at once need more than 24 GB here:
    every ONNX Runtime session keeps its own arena at its peak); `bare` is in every group, so each ratio is measured
    within one set of interleaved rounds."""
    groups = [["bare", "bare ORT", "sentence-transformers"]]
    for variant in variants:
        groups.append(["bare", f"v{variant}", f"v{variant} ORT"] + (["v5 ORT int8"] if variant == 5 else []))
    return groups


def measure_memory(name: str, args) -> dict:
    contender = build(name, args)
    texts = load_texts(args.texts_kind, args.count)
    contender.encode(texts[: args.batch_size], batch_size=args.batch_size, max_length=args.max_length)
    loaded = rss_mib()
    reset_peak_rss()
    contender.encode(texts, batch_size=args.batch_size, max_length=args.max_length)
    peak = peak_rss_mib()
    return {"contender": name, "peak_mib": round(peak, 1), "above_loaded_mib": round(peak - loaded, 1)}


def time_group(names, texts, args) -> tuple[dict, dict]:
    """Best seconds per contender over interleaved rounds, and each one's embeddings (from the warm-up pass)."""
    import gc

    contenders = {name: build(name, args) for name in names}
    outputs = {
        name: torch.as_tensor(contender.encode(texts, batch_size=args.batch_size, max_length=args.max_length))
        for name, contender in contenders.items()
    }
    seconds = {name: [] for name in names}
    for _ in range(args.rounds):
        for name, contender in contenders.items():
            start = time.perf_counter()
            contender.encode(texts, batch_size=args.batch_size, max_length=args.max_length)
            seconds[name].append(time.perf_counter() - start)
    del contenders
    gc.collect()
    return {name: min(values) for name, values in seconds.items()}, outputs


def run_set(kind: str, count: int, args) -> dict:
    texts = load_texts(kind, count)
    tokens = count_tokens(args.path, texts, args.max_length)
    rows = []
    for group in contender_groups(args.variants):
        best, outputs = time_group(group, texts, args)
        for name in group[1:] if rows else group:  # `bare` once, from the first group
            twin = {"bare ORT": "bare", "sentence-transformers": "sentence-transformers"}.get(name, name.split()[0])
            rows.append(
                {
                    "contender": name,
                    "texts_per_s": round(len(texts) / best[name], 1),
                    "tokens_per_s": round(tokens / best[name]),
                    "vs_bare": round(best["bare"] / best[name], 3),
                    "vs_pytorch": round(best[twin] / best[name], 3),
                    "max_abs_diff": (outputs[name] - outputs[twin]).abs().max().item(),
                }
            )
        print(
            f"{kind}: " + ", ".join(f"{name} {len(texts) / best[name]:.1f} texts/s" for name in group), file=sys.stderr
        )
    for row in rows:
        if row["contender"] in args.memory:
            command = [
                sys.executable,
                __file__,
                "--memory-of",
                row["contender"],
                "--texts",
                kind,
                "--count",
                str(count),
                "--batch-size",
                str(args.batch_size),
                "--max-length",
                str(args.max_length),
                "--backbone",
                args.backbone,
                "--workdir",
                str(args.workdir),
            ]
            output = subprocess.run(
                command,
                capture_output=True,
                text=True,
                check=True,
                cwd=Path(__file__).parents[1],
                env={**os.environ, **DETERMINISTIC_MALLOC},
            )
            row.update(json.loads(output.stdout.strip().splitlines()[-1]))
    return {
        "texts": kind,
        "count": len(texts),
        "tokens": tokens,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }


def print_table(result: dict) -> None:
    print(
        f"\n{result['texts']} texts: {result['count']} texts, {result['tokens']} tokens, "
        f"batch {result['batch_size']}, max length {result['max_length']}, {result['threads']} threads, "
        f"best of {result['rounds']} interleaved rounds"
    )
    print(
        f"{'contender':<24}{'texts/s':>9}{'vs bare':>9}{'vs PyTorch':>12}{'max diff':>10}{'peak MiB':>10}{'+MiB':>8}"
    )
    for row in result["rows"]:
        print(
            f"{row['contender']:<24}{row['texts_per_s']:>9}{row['vs_bare']:>9}{row['vs_pytorch']:>12}"
            f"{row['max_abs_diff']:>10.1e}{row.get('peak_mib', '-'):>10}{row.get('above_loaded_mib', '-'):>8}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--variants", nargs="+", type=int, default=[1, 2, 3, 4, 5], choices=[1, 2, 3, 4, 5])
    parser.add_argument("--texts", choices=["short", "long", "both"], default="both")
    parser.add_argument("--short-count", type=int, default=512)
    parser.add_argument("--long-count", type=int, default=32)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--memory",
        nargs="*",
        default=list(MEMORY_DEFAULT),
        help="contenders whose peak memory is measured, each in a fresh process",
    )
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help="where the exports are written and reused")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # one contender's memory, in a fresh process
    args = parser.parse_args()

    from poolattn.backbones import resolve_backbone

    args.path = resolve_backbone(args.backbone)
    if args.memory_of:
        args.texts_kind = args.texts
        print(json.dumps(measure_memory(args.memory_of, args)))
        return
    kinds = ["short", "long"] if args.texts == "both" else [args.texts]
    results = [run_set(kind, args.short_count if kind == "short" else args.long_count, args) for kind in kinds]
    for result in results:
        print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
