"""Tiny random backbones and an in-memory tokenizer, built in-process (nothing is downloaded)."""

import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoConfig, PreTrainedTokenizerFast

from poolattn import PoolAttnConfig, PoolAttnEmbeddingModel

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    # Under pytest-xdist (the default run: -n 2): the workers share the cores instead of oversubscribing them; the
    # setting reaches the subprocesses the tests start (train.py, torchrun, fresh loaders) through the environment.
    _threads = max(1, torch.get_num_threads() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))  # torch's own count
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # the project's task copies, read-only
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2")
VARIANTS = (1, 2, 3, 4, 5)
BASELINES = ("mean-causal", "mean-bidirectional")  # baseline designs beside the paper's variants
POOLINGS = ("eos", "mean", "latent", "multi_layer_latent")

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "stocks",
    "fell",
    "rose",
    "market",
    "bank",
    "river",
    "money",
    "loan",
    "water",
    "fish",
    "swim",
    "city",
    "train",
    "station",
    "query",
    "passage",
    "what",
    "is",
    "how",
    "do",
    "i",
    "find",
    "best",
    "cheap",
    "fast",
    "slow",
    "red",
    "blue",
    "green",
    "house",
    "car",
    "road",
    "rain",
    "sun",
    "moon",
    "star",
    "book",
    "read",
    "write",
    "code",
    "python",
    "model",
    "embed",
    "vector",
    "search",
    "index",
    "paper",
    "attention",
    "pooling",
    "layer",
    "token",
]
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
        vocab_size=99,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
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
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side=padding_side,
    )


def tiny_model(family: str = "llama", variant: int | str | None = 5, seed: int = 0, text_overrides=None, **overrides):
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


TRIPLETS = [
    {"query": "what is a loan", "positive": "a loan is money from the bank", "negative": "the river bank is green"},
    {"query": "how do i find a cheap car", "positive": "find a cheap car on the road", "negative": "the car is red"},
    {
        "query": "what is attention pooling",
        "positive": "attention pooling is a model layer",
        "negative": "read a book",
    },
    {"query": "how do fish swim", "positive": "fish swim in the water of the river", "negative": "a fish in the city"},
    {"query": "best python code", "positive": "python code to embed a vector", "negative": "write a slow book"},
    {"query": "what is the market", "positive": "stocks rose on the market", "negative": "the market in the city"},
    {"query": "how do i find the station", "positive": "the train station in the city", "negative": "a blue train"},
    {"query": "what is a vector index", "positive": "search the vector index fast", "negative": "the index of a book"},
    {"query": "how do i read a paper", "positive": "read the paper on attention", "negative": "a paper house"},
    {"query": "what is rain", "positive": "rain is water from the sky", "negative": "the sun and the moon"},
    {"query": "cheap house", "positive": "a cheap house on a green road", "negative": "a red house is slow"},
    {"query": "what is a token", "positive": "a token in a model layer", "negative": "the star and the moon"},
]


@pytest.fixture(scope="session")
def tiny_backbone_folder(tmp_path_factory):
    """A saved random LlamaForCausalLM (the tiny config) with the tiny tokenizer: a stand-in for a Hub checkpoint."""
    from transformers import LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_text_config("llama")).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture
def triplets_file(tmp_path):
    import json

    path = tmp_path / "triplets.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in TRIPLETS))
    return str(path)


# pytest-xdist hands out whole files (--dist loadfile) in collection order (--no-loadscope-reorder): the longest files
# go first so that no long file starts last while the other worker idles. Seconds on 2 cores, measured with
# `pytest --junitxml`; files not named keep their order after these. This order took the suite from 594 s to 490 s.
LONGEST_FILES_FIRST = (
    "test_smollm2.py",  # ~170 s: the real SmolLM2 runs
    "test_hub.py",  # ~165 s
    "test_study.py",  # ~115 s
    "test_local_tasks.py",  # ~105 s: all-MiniLM-L6-v2 on WikiQA retrieval
    "test_onnx.py",  # ~77 s
    "test_training.py",  # ~70 s
    "test_paired.py",  # ~46 s
)


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FILES_FIRST.index(name) if name in LONGEST_FILES_FIRST else len(LONGEST_FILES_FIRST)

    items.sort(key=rank)  # stable: the order within a file and among the other files is kept


def biosses_copy(data_dir, pairs: int) -> Path:
    """`data_dir` holding a local BIOSSES copy of the shared copy's first `pairs` pairs (a task that scores in
    seconds); returns `data_dir`."""
    folder = Path(data_dir) / "BIOSSES"
    folder.mkdir(parents=True, exist_ok=True)
    lines = (SHARED_DATA / "BIOSSES" / "test.jsonl").read_text().splitlines()[:pairs]
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    return Path(data_dir)
