"""Tiny random backbones and an in-memory tokenizer, built in-process (nothing is downloaded)."""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoConfig, PreTrainedTokenizerFast

from poolattn import PoolAttnConfig, PoolAttnEmbeddingModel

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2")
VARIANTS = (1, 2, 3, 4, 5)
POOLINGS = ("eos", "mean", "latent", "multi_layer_latent")

WORDS = (
    "the a cat dog sat on mat stocks fell rose market bank river money loan water fish swim city train station "
    "query passage what is how do i find best cheap fast slow red blue green house car road rain sun moon star "
    "book read write code python model embed vector search index paper attention pooling layer token"
).split()
SENTENCES = [
    "the cat sat on the mat",
    "stocks fell",
    "how do i find a cheap loan at the bank",
    "the river bank is green after rain",
    "a dog",
    "python code to embed a vector and search the index",
    "what is attention pooling in a model layer",
    "the train station in the city",
]


def tiny_text_config(family: str = "llama", **overrides):
    """A 3-layer, 32-wide random backbone config of the given family (vocab 99)."""
    fields = dict(
        vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
        pad_token_id=0,
    )
    if family == "gemma2":
        fields.update(query_pre_attn_scalar=8, sliding_window=64)
    return AutoConfig.for_model(family, **{**fields, **overrides})


def tiny_tokenizer(padding_side: str = "right") -> PreTrainedTokenizerFast:
    """A word-level tokenizer that adds BOS like Llama's (and no EOS, like most decoder tokenizers)."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(dict.fromkeys(WORDS))}}
    assert len(vocab) <= 99
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        padding_side=padding_side,
    )


def tiny_model(family: str = "llama", variant: int | None = 5, seed: int = 0, text_overrides=None, **overrides):
    """A random `PoolAttnEmbeddingModel` in eval mode with the tiny tokenizer attached (4 latents by default)."""
    torch.manual_seed(seed)
    overrides.setdefault("num_latents", 4)
    text_config = tiny_text_config(family, **(text_overrides or {}))
    if variant is None:
        config = PoolAttnConfig(text_config=text_config.to_dict(), **overrides)
    else:
        config = PoolAttnConfig.from_variant(variant, text_config, **overrides)
    model = PoolAttnEmbeddingModel(config).eval()
    model.tokenizer = tiny_tokenizer()
    return model


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()
