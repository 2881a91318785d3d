"""The Hub remote-code pair: self-contained imports; save -> fresh-process AutoModel load -> identical embeddings."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BASELINES, FAMILIES, SENTENCES, VARIANTS, tiny_model

import poolattn

PACKAGE_DIR = Path(poolattn.__file__).parent
HUB_PAIR = ("configuration_poolattn.py", "modeling_poolattn.py")


@pytest.mark.parametrize("filename", HUB_PAIR)
def test_hub_pair_imports_only_torch_transformers_stdlib_and_each_other(filename):
    tree = ast.parse((PACKAGE_DIR / filename).read_text())
    allowed_roots = {"torch", "transformers"} | set(sys.stdlib_module_names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots = {node.module.split(".")[0]}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 1 and node.module == "configuration_poolattn", ast.unparse(node)
            continue
        else:
            continue
        assert roots <= allowed_roots, f"{filename} imports {roots - allowed_roots}: {ast.unparse(node)}"


FRESH_PROCESS_LOADER = r"""
import json, sys
import numpy as np
import torch
sys.modules["poolattn"] = None  # prove the folder needs no poolattn install
from transformers import AutoModel
folders, sentences = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for folder in folders:
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    np.save(folder + "/fresh.npy", model.encode(sentences, batch_size=3))
"""

SAVED_CASES = [(family, variant) for variant in VARIANTS + BASELINES for family in ("llama",)] + [
    (family, 5) for family in FAMILIES if family != "llama"
]


def test_saved_folder_loads_in_a_fresh_process_with_bitwise_equal_embeddings(tmp_path):
    folders, expected = [], {}
    for family, variant in SAVED_CASES:
        model = tiny_model(family, variant, seed=len(folders))
        folder = tmp_path / f"{family}-{variant}"
        model.save_pretrained(folder)
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"] == {
            "AutoConfig": "configuration_poolattn.PoolAttnConfig",
            "AutoModel": "modeling_poolattn.PoolAttnEmbeddingModel",
        }
        assert {"config.json", "model.safetensors", "tokenizer.json", *HUB_PAIR} <= {p.name for p in folder.iterdir()}
        folders.append(str(folder))
        expected[str(folder)] = model.encode(SENTENCES, batch_size=3)
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_LOADER, json.dumps(folders), json.dumps(SENTENCES)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # No second trust_remote_code prompt (e.g. when loading the tokenizer).
    assert "trust_remote_code" not in result.stdout + result.stderr
    for folder in folders:
        fresh = np.load(Path(folder) / "fresh.npy")
        assert np.array_equal(fresh, expected[folder]), f"{folder}: max |diff| {abs(fresh - expected[folder]).max()}"


def test_loading_keeps_the_head_in_fp32_under_bf16(tmp_path):
    import torch
    from transformers import AutoModel

    tiny_model("qwen2", 5).save_pretrained(tmp_path)
    model = AutoModel.from_pretrained(
        tmp_path, trust_remote_code=True, dtype=torch.bfloat16, attn_implementation="eager"
    )
    assert model.model.dtype == torch.bfloat16 and model.pooler.latents.dtype == torch.float32
    assert model.model.config._attn_implementation == "eager"
    embeddings = model.encode(SENTENCES, convert_to_numpy=False)
    assert embeddings.dtype == torch.float32 and torch.isfinite(embeddings).all()


@pytest.mark.parametrize("variant", [1, 5, "mean-causal"])
def test_plain_transformers_routes_give_encodes_embeddings(variant, tmp_path):
    """The saved tokenizer appends EOS itself (as `encode` does), so `model(**tokenizer(texts))` and the
    feature-extraction pipeline equal `encode` on texts without a prompt."""
    import torch
    from transformers import AutoModel, AutoTokenizer, pipeline

    tiny_model("llama", variant).save_pretrained(tmp_path)
    model = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=True)
    expected = model.encode(SENTENCES, convert_to_numpy=False)
    with torch.no_grad():
        forward = model(**tokenizer(SENTENCES, padding=True, return_tensors="pt")).embeddings
    torch.testing.assert_close(forward, expected, rtol=0, atol=1e-5)
    extractor = pipeline("feature-extraction", model=str(tmp_path), trust_remote_code=True)
    piped = torch.tensor([extractor(text)[0] for text in SENTENCES])
    torch.testing.assert_close(piped, expected, rtol=0, atol=1e-5)


def test_the_saved_tokenizer_truncates_where_encode_does(tmp_path):
    """`tokenizer(texts, truncation=True)` of a saved folder stops at `config.max_length`, as `encode` does: the
    saved tokenizer had the backbone's own length (8192 for SmolLM2), so a long text's plain route embedded more."""
    from transformers import AutoModel, AutoTokenizer

    tiny_model("llama", 1, max_length=16).save_pretrained(tmp_path)
    model = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer.model_max_length == 16
    texts = [" ".join(["word"] * 40), "a short one"]
    with torch.no_grad():
        plain = model(**tokenizer(texts, padding=True, truncation=True, return_tensors="pt")).embeddings
    assert np.abs(plain.numpy() - model.encode(texts)).max() < 1e-5


def test_the_tokenizer_comes_from_the_revision_and_with_the_credentials_the_weights_did(tmp_path, monkeypatch):
    from poolattn import modeling_poolattn

    tiny_model("llama", 5).save_pretrained(tmp_path)
    calls = []
    load = modeling_poolattn.AutoTokenizer.from_pretrained

    def spied(*args, **kwargs):  # recorded, then loaded from the local folder as it is
        calls.append(kwargs)
        return load(*args, config=kwargs["config"])

    monkeypatch.setattr(modeling_poolattn.AutoTokenizer, "from_pretrained", spied)
    model = poolattn.PoolAttnEmbeddingModel.from_pretrained(
        tmp_path, revision="v1.0", token="hf_x", local_files_only=True
    )
    model.encode(["the cat"])
    assert {key: calls[-1].get(key) for key in ("revision", "token", "local_files_only")} == {
        "revision": "v1.0",
        "token": "hf_x",
        "local_files_only": True,
    }


def test_a_layer_summary_takes_the_layers_of_its_own_forward_when_threads_share_the_model():
    """Variant 5's per-layer summaries come from hooks on the shared layers: a forward of another thread, run while
    this one waits inside its first layer, fired them too and replaced this forward's summaries with its own."""
    import threading

    model = tiny_model("llama", 5)
    first, second = ["a cat on a mat", "two dogs"], ["rain in the hills", "a boat"]  # the same token counts
    expected = {0: model.encode(first), 1: model.encode(second)}
    inside, release, results = threading.Event(), threading.Event(), {}

    def wait_in_first_layer(module, args, output):
        if threading.current_thread().name == "paused" and not release.is_set():
            inside.set()
            release.wait(timeout=30)

    hook = model.model.layers[0].register_forward_hook(wait_in_first_layer)
    paused = threading.Thread(target=lambda: results.__setitem__(0, model.encode(first)), name="paused")
    try:
        paused.start()
        assert inside.wait(timeout=30)
        results[1] = model.encode(second)  # the whole of another forward, while the first waits in layer 1
        release.set()
        paused.join(timeout=30)
    finally:
        release.set()
        hook.remove()
    for key in (0, 1):
        assert np.abs(results[key] - expected[key]).max() < 1e-6


def test_mean_pooling_in_fp16_does_not_overflow_where_each_value_fits():
    from poolattn.modeling_poolattn import masked_mean

    hidden = torch.full((1, 512, 4), 200.0).half()  # a sum of 102,400 passes fp16's 65,504
    assert torch.equal(masked_mean(hidden, torch.ones(1, 512)), torch.full((1, 4), 200.0))
    hidden = torch.randn(2, 7, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [0, 1, 1, 1, 1, 1, 1]])
    reference = torch.stack([hidden[0, :3].mean(0), hidden[1, 1:].mean(0)])
    assert torch.allclose(masked_mean(hidden.half(), mask), reference, atol=1e-2)
