"""The Hub remote-code pair: self-contained imports; save -> fresh-process AutoModel load -> identical embeddings."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
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
