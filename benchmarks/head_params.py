"""Pooling-head parameters per paper variant, built on the meta device from backbone configs (no weights).

    python benchmarks/head_params.py            # SmolLM2-135M, Qwen2-0.5B, Mistral-7B configs
    python benchmarks/head_params.py --json

The paper's own head (yixuantt/PoolingAndAttn, `PerceiverResampler`) is hard-coded to 32 heads of width 2048 and
768 latents of width 4096 with a GEGLU x4 feed-forward: about 1.28B parameters, printed here for comparison.
"""

import argparse
import json

import torch
from transformers import LlamaConfig, MistralConfig, Qwen2Config

from poolattn import PoolAttnConfig, PoolAttnEmbeddingModel

BACKBONES = {
    "SmolLM2-135M": LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
    "Qwen2-0.5B": Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                              num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "Mistral-7B": MistralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=8),
}


def paper_head_parameters(hidden: int = 4096, heads: int = 32, head_width: int = 2048, latents: int = 768,
                          layers: int = 32) -> int:
    inner = heads * head_width
    attention = hidden * inner + hidden * 2 * inner + inner * hidden  # to_q, to_kv, to_out (no bias)
    feed_forward = hidden * 8 * hidden + 8 * hidden + 4 * hidden * hidden + hidden  # GEGLU x4 with biases
    norms = 3 * 2 * hidden  # latent, context and feed-forward LayerNorms
    return attention + feed_forward + norms + latents * hidden + layers * hidden  # + latents + layer embedding


def head_counts() -> dict:
    table = {}
    for name, text_config in BACKBONES.items():
        row = {}
        for variant in range(1, 6):
            with torch.device("meta"):
                model = PoolAttnEmbeddingModel(PoolAttnConfig.from_variant(variant, text_config))
            row[f"v{variant}"] = sum(p.numel() for p in model.pooler.parameters()) if model.pooler is not None else 0
            row["backbone"] = sum(p.numel() for p in model.model.parameters())
        table[name] = row
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    table = head_counts()
    paper = paper_head_parameters()
    if args.json:
        print(json.dumps({"poolattn": table, "paper_code_head_mistral_7b": paper}, indent=2))
        return
    print(f"{'backbone':<14}{'backbone params':>17}" + "".join(f"{'v' + str(v) + ' head':>14}" for v in range(1, 6)))
    for name, row in table.items():
        print(f"{name:<14}{row['backbone']:>17,}" + "".join(f"{row[f'v{v}']:>14,}" for v in range(1, 6)))
    print(f"\npaper code's head on Mistral-7B (hard-coded 32 x 2048 heads, 768 latents): {paper:,}")


if __name__ == "__main__":
    main()
