"""Encode throughput and peak memory of the five variants against the limit (a bare backbone forward) and
sentence-transformers, on the same real texts and the same backbone.

    python benchmarks/encode_throughput.py                                # SmolLM2-135M, short and long texts
    python benchmarks/encode_throughput.py --texts short --rounds 5 --json results.json
    python benchmarks/encode_throughput.py --device cuda --dtype bfloat16 --attn-implementation sdpa   # on a GPU

Contenders (every one sorts texts by length and batches them the same way; all append EOS):
- `bare`: the limit, a few lines: tokenizer -> backbone forward -> the last real token's state, L2-normalised;
- `sentence-transformers`: the stock pipeline on the same backbone (`Transformer` + `Pooling("lasttoken")`,
  normalised), on plain text (ST 6 would otherwise wrap each text in SmolLM2-Instruct's chat template, 3x the tokens);
- `v1` ... `v5`: `PoolAttnEmbeddingModel.encode` for each paper variant (fresh heads: cost, not quality);
- `v5 via ST`: variant 5 through `SentenceTransformer(folder, trust_remote_code=True)` as `publish.py` ships it.

Throughput: contenders are timed in interleaved rounds in one process (this machine is noisy), best round each, and
reported as ratios to `bare` and to sentence-transformers measured in the same rounds. Peak memory: each contender
in a fresh process, the process's peak resident set (VmHWM) over one encode, in total and above the level after
loading, with glibc told to return large blocks at once (`DETERMINISTIC_MALLOC`) so that peaks repeat exactly.
Text sets: `short` = STSBenchmark sentences, `long` = ArguAna passages (up to --max-length tokens).

On a GPU (`--device cuda`, `--dtype float16|bfloat16`, `--attn-implementation sdpa|flash_attention_2|eager`): every
contender loads its backbone in that dtype and kernel (sentence-transformers' is cast to the dtype and keeps its
default kernel), returns its embeddings on the CPU (so each timing includes the device's work), and peak memory is
the CUDA allocator's peak (`torch.cuda.max_memory_allocated`) instead of the resident set. `v5 via ST` runs on CPU
only.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from peak_memory import DETERMINISTIC_MALLOC, peak_rss_mib, reset_peak_rss, rss_mib

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CONTENDERS = ("bare", "sentence-transformers", "v1", "v2", "v3", "v4", "v5", "v5 via ST")


def load_texts(kind: str, count: int) -> list[str]:
    if kind == "short":
        rows = [json.loads(line) for line in (DATA / "STSBenchmark" / "test.jsonl").read_text().splitlines()]
        return [row[key] for row in rows for key in ("sentence1", "sentence2")][:count]
    rows = [json.loads(line) for line in (DATA / "ArguAna" / "corpus" / "corpus.jsonl").read_text().splitlines()]
    return [f"{row['title']} {row['text']}".strip() for row in rows[:count]]


class BareBackbone:
    """The limit: the backbone's own forward on length-sorted batches, last-token pooling, nothing else."""

    def __init__(self, path: str, device: str = "cpu", **load_kwargs):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.pad_token = self.tokenizer.pad_token or self.tokenizer.eos_token
        self.model = AutoModel.from_pretrained(path, **load_kwargs).to(device).eval()
        self.device = device

    @torch.inference_mode()
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
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch, use_cache=False).last_hidden_state  # (batch, seq, hidden)
            last = batch["attention_mask"].cumsum(1).argmax(1)  # last real token (right or left padding)
            pooled = torch.nn.functional.normalize(hidden[torch.arange(len(chunk)), last], dim=-1)
            for i, row in zip(chunk, pooled.float().cpu()):
                embeddings[i] = row
        return torch.stack(embeddings)


def build(
    name: str,
    path: str,
    workdir: Path,
    max_length: int,
    device: str = "cpu",
    dtype: str = "float32",
    attn_implementation: str | None = None,
):
    """An object with `encode(texts, batch_size=, max_length=)` for one contender, on `device` in `dtype`."""
    load_kwargs = {"dtype": getattr(torch, dtype)}
    if attn_implementation:
        load_kwargs["attn_implementation"] = attn_implementation
    if name == "bare":
        return BareBackbone(path, device, **load_kwargs)
    if name == "sentence-transformers":
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.base.modules.normalize import Normalize
        from sentence_transformers.base.modules.transformer import Transformer
        from sentence_transformers.sentence_transformer.modules.pooling import Pooling

        # The plain text modality: by default ST 6 renders texts through an instruct model's chat template (3x the
        # tokens of a short sentence on SmolLM2-Instruct), which would compare different inputs.
        text_modality = {"method": "forward", "method_output_name": "last_hidden_state"}
        transformer = Transformer(
            path,
            max_seq_length=max_length,
            module_output_name="token_embeddings",
            modality_config={"text": text_modality},
        )
        tokenizer = transformer.tokenizer
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
        pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken")
        model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device=device)
        model = model.to(getattr(torch, dtype))
        eos = tokenizer.eos_token
        return _Adapter(lambda texts, batch_size: model.encode([t + eos for t in texts], batch_size=batch_size))
    from poolattn import PoolAttnEmbeddingModel

    variant = int(name[1])
    model = PoolAttnEmbeddingModel.from_backbone(path, variant=variant, max_length=max_length, **load_kwargs)
    model = model.to(device).eval()
    if name.endswith("via ST"):
        from sentence_transformers import SentenceTransformer

        from poolattn.export import write_sentence_transformers_files
        from poolattn.model_folder import ExportedModel

        folder = workdir / name.replace(" ", "-")
        model.save_pretrained(folder)
        exported = ExportedModel.read(folder)
        write_sentence_transformers_files(
            folder, max_length=exported.config.max_length, query_prompt=exported.query_prompt
        )
        st = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
        return _Adapter(lambda texts, batch_size: st.encode(texts, batch_size=batch_size))
    return _Adapter(lambda texts, batch_size: model.encode(texts, batch_size=batch_size))


class _Adapter:
    def __init__(self, encode):
        self._encode = encode

    def encode(self, texts, *, batch_size: int, max_length: int):
        return self._encode(texts, batch_size)


def measure_memory(name: str, args) -> dict:
    """In this (fresh) process: load, warm up, reset the peak, encode once, read the peak (CUDA's allocator on a
    GPU, the resident set on CPU)."""
    cuda = args.device.startswith("cuda")
    with tempfile.TemporaryDirectory() as workdir:
        contender = build(
            name, args.path, Path(workdir), args.max_length, args.device, args.dtype, args.attn_implementation
        )
        texts = load_texts(args.texts_kind, args.count)
        contender.encode(texts[: args.batch_size], batch_size=args.batch_size, max_length=args.max_length)
        loaded = torch.cuda.memory_allocated() / 2**20 if cuda else rss_mib()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_peak_rss()
        contender.encode(texts, batch_size=args.batch_size, max_length=args.max_length)
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mib()
    return {"contender": name, "peak_mib": round(peak, 1), "above_loaded_mib": round(peak - loaded, 1)}


def time_contenders(names, texts, args) -> dict[str, float]:
    """Best seconds per contender over interleaved rounds, after one warm-up batch each."""
    with tempfile.TemporaryDirectory() as workdir:
        contenders = {
            name: build(
                name, args.path, Path(workdir), args.max_length, args.device, args.dtype, args.attn_implementation
            )
            for name in names
        }
        for contender in contenders.values():
            contender.encode(texts[: args.batch_size], batch_size=args.batch_size, max_length=args.max_length)
        seconds = {name: [] for name in names}
        for _ in range(args.rounds):
            for name, contender in contenders.items():
                start = time.perf_counter()
                contender.encode(texts, batch_size=args.batch_size, max_length=args.max_length)
                seconds[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in seconds.items()}


def count_tokens(path: str, texts, max_length: int) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    return sum(min(len(ids) + 1, max_length) for ids in tokenizer(texts)["input_ids"])  # + EOS


def run_set(kind: str, count: int, args) -> dict:
    texts = load_texts(kind, count)
    tokens = count_tokens(args.path, texts, args.max_length)
    best = time_contenders(args.contenders, texts, args)
    memory = {}
    for name in args.contenders:
        command = [
            sys.executable,
            __file__,
            "--memory-of",
            name,
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
            "--device",
            args.device,
            "--dtype",
            args.dtype,
        ]
        command += ["--attn-implementation", args.attn_implementation] if args.attn_implementation else []
        output = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parents[1],
            env={**os.environ, **DETERMINISTIC_MALLOC},
        )
        memory[name] = json.loads(output.stdout.strip().splitlines()[-1])
    rows = []
    for name in args.contenders:
        rows.append(
            {
                "contender": name,
                "texts_per_s": round(len(texts) / best[name], 1),
                "tokens_per_s": round(tokens / best[name]),
                "vs_bare": round(best["bare"] / best[name], 3) if "bare" in best else None,
                "vs_sentence_transformers": round(best["sentence-transformers"] / best[name], 3)
                if "sentence-transformers" in best
                else None,
                "peak_mib": memory[name]["peak_mib"],
                "above_loaded_mib": memory[name]["above_loaded_mib"],
            }
        )
    return {
        "texts": kind,
        "count": len(texts),
        "tokens": tokens,
        "batch_size": args.batch_size,
        "device": args.device,
        "dtype": args.dtype,
        "attn_implementation": args.attn_implementation,
        "max_length": args.max_length,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }


def print_table(result: dict) -> None:
    print(
        f"\n{result['texts']} texts: {result['count']} texts, {result['tokens']} tokens, "
        f"{result['device']} {result['dtype']} {result['attn_implementation'] or 'default kernel'}, "
        f"batch {result['batch_size']}, max length {result['max_length']}, {result['threads']} threads, "
        f"best of {result['rounds']} interleaved rounds"
    )
    print(
        f"{'contender':<24}{'texts/s':>9}{'tokens/s':>10}{'vs bare':>9}{'vs ST':>8}{'peak MiB':>10}{'+MiB':>8}"
        f"{'peak vs v1':>12}"
    )
    v1_peak = next((row["peak_mib"] for row in result["rows"] if row["contender"] == "v1"), None)
    for row in result["rows"]:
        versus_v1 = f"{row['peak_mib'] / v1_peak:.3f}" if v1_peak else "-"
        print(
            f"{row['contender']:<24}{row['texts_per_s']:>9}{row['tokens_per_s']:>10}{row['vs_bare'] or '-':>9}"
            f"{row['vs_sentence_transformers'] or '-':>8}{row['peak_mib']:>10}{row['above_loaded_mib']:>8}"
            f"{versus_v1:>12}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--texts", choices=["short", "long", "both"], default="both")
    parser.add_argument("--short-count", type=int, default=512)
    parser.add_argument("--long-count", type=int, default=64)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (peak memory: CUDA's allocator)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--attn-implementation",
        choices=["eager", "sdpa", "flash_attention_2"],
        help="the backbones' attention kernel (default: transformers' choice)",
    )
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # one contender's memory, in a fresh process
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here; use --device cpu.")
    if args.device != "cpu" and "v5 via ST" in args.contenders:
        args.contenders.remove("v5 via ST")
        print("v5 via ST left out: it runs on CPU only in this benchmark", file=sys.stderr)

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
