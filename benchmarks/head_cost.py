"""Pooling-head cost per paper variant: parameters and FLOPs, built on the meta device from backbone configs (no
weights).

    python benchmarks/head_cost.py                   # SmolLM2-135M, Qwen2-0.5B, Mistral-7B configs, 128-token texts
    python benchmarks/head_cost.py --tokens 512 --json

Head FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on the head itself (meta tensors of the shape
it sees: 1 last token for v2, every token for v4, one summary per layer for v3/v5), per text. The backbone's forward
FLOPs per text are the usual estimate 2 x non-embedding parameters x tokens + 4 x layers x tokens^2 x hidden
(attention scores and values), so the head's share of an encode is their ratio.

The paper's own head (yixuantt/PoolingAndAttn, `PerceiverResampler`) is hard-coded to 32 heads of width 2048 and
768 latents of width 4096 with a GEGLU x4 feed-forward: about 1.28B parameters, printed here for comparison.
"""

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, MistralConfig, Qwen2Config

from poolattn import PoolAttnConfig, PoolAttnEmbeddingModel

BACKBONES = {
    "SmolLM2-135M": LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    ),
    "Qwen2-0.5B": Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "Mistral-7B": MistralConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
    ),
}


def paper_head_parameters(
    hidden: int = 4096, heads: int = 32, head_width: int = 2048, latents: int = 768, layers: int = 32
) -> int:
    inner = heads * head_width
    attention = hidden * inner + hidden * 2 * inner + inner * hidden  # to_q, to_kv, to_out (no bias)
    feed_forward = hidden * 8 * hidden + 8 * hidden + 4 * hidden * hidden + hidden  # GEGLU x4 with biases
    norms = 3 * 2 * hidden  # latent, context and feed-forward LayerNorms
    return attention + feed_forward + norms + latents * hidden + layers * hidden  # + latents + layer embedding


def head_flops(model: PoolAttnEmbeddingModel, tokens: int) -> int:
    """FLOPs of the pooling head for one text of `tokens` tokens (0 without a head)."""
    config = model.config
    if model.pooler is None:
        return 0
    if config.pooling == "latent":
        inputs = 1 if config.head_input == "last_token" else tokens
    else:
        inputs = len(config.layer_indices)
    hidden = config.text_config.hidden_size
    features = torch.empty(1, inputs, hidden, device="meta")
    mask = torch.ones(1, inputs, device="meta") if inputs == tokens else None
    with FlopCounterMode(display=False) as counter:
        model.pooler(features, mask)
    return counter.get_total_flops()


def backbone_flops(model: PoolAttnEmbeddingModel, tokens: int) -> int:
    """Forward FLOPs of the backbone for one text: 2 x non-embedding parameters x tokens + attention."""
    text_config = model.config.text_config
    embedding = model.model.get_input_embeddings().weight.numel()
    non_embedding = sum(p.numel() for p in model.model.parameters()) - embedding
    return 2 * non_embedding * tokens + 4 * text_config.num_hidden_layers * tokens**2 * text_config.hidden_size


def paper_head_flops(tokens: int) -> int:
    """FLOPs per text of a v5 head with the paper code's sizes (768 latents, 32 heads of 2048) on Mistral-7B."""
    with torch.device("meta"):
        model = PoolAttnEmbeddingModel(
            PoolAttnConfig.from_variant(5, BACKBONES["Mistral-7B"], num_latents=768, num_heads=32, head_dim=2048)
        )
    return head_flops(model, tokens)


def head_costs(tokens: int) -> dict:
    table = {}
    for name, text_config in BACKBONES.items():
        row = {}
        for variant in range(1, 6):
            with torch.device("meta"):
                model = PoolAttnEmbeddingModel(PoolAttnConfig.from_variant(variant, text_config))
            row[f"v{variant}"] = {
                "head_parameters": sum(p.numel() for p in model.pooler.parameters()) if model.pooler else 0,
                "head_flops": head_flops(model, tokens),
            }
            row["backbone_parameters"] = sum(p.numel() for p in model.model.parameters())
            row["backbone_flops"] = backbone_flops(model, tokens)
        table[name] = row
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128, help="tokens per text for the FLOP counts")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    table = head_costs(args.tokens)
    paper = paper_head_parameters()
    if args.json:
        print(
            json.dumps(
                {
                    "tokens": args.tokens,
                    "poolattn": table,
                    "paper_code_head_mistral_7b": paper,
                    "paper_code_head_mistral_7b_flops": paper_head_flops(args.tokens),
                },
                indent=2,
            )
        )
        return
    print(f"head parameters, and head FLOPs per {args.tokens}-token text as a share of the backbone's forward FLOPs")
    print(f"{'backbone':<14}{'params':>15}{'GFLOPs/text':>13}" + "".join(f"{'v' + str(v):>22}" for v in range(2, 6)))
    for name, row in table.items():
        heads = [row[f"v{v}"] for v in range(2, 6)]
        cells = "".join(
            f"{head['head_parameters'] / 1e6:>11.2f}M {100 * head['head_flops'] / row['backbone_flops']:>8.2f}%"
            for head in heads
        )
        print(f"{name:<14}{row['backbone_parameters']:>15,}{row['backbone_flops'] / 1e9:>13.1f}{cells}")
    print("(v1 has no head: 0 parameters, 0 FLOPs)")
    paper_flops = paper_head_flops(args.tokens)
    print(
        f"\npaper code's head on Mistral-7B (hard-coded 32 x 2048 heads, 768 latents): {paper:,} parameters; "
        f"as our head with those sizes (v5), {paper_flops / 1e9:.0f} GFLOPs per text = "
        f"{100 * paper_flops / table['Mistral-7B']['backbone_flops']:.1f}% of the backbone's"
    )


if __name__ == "__main__":
    main()
