"""poolattn in mteb: a tiny random model scored on a small local STS task through mteb's own evaluator."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import tiny_model

mteb = pytest.importorskip("mteb")
from poolattn.evaluation.mteb_encoder import PoolAttnEncoder, query_prompt  # noqa: E402

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "STSBenchmark" / "test.jsonl"


def local_sts_task(folder: Path, rows: int = 40):
    folder.mkdir(parents=True)
    (folder / "test.jsonl").write_text("\n".join(STSB.read_text().splitlines()[:rows]) + "\n")
    task = mteb.get_task("STSBenchmark")
    task.metadata = task.metadata.model_copy(update={"dataset": {**task.metadata.dataset, "path": str(folder)}})
    return task


def test_mteb_sts_score_equals_our_own_spearman_and_instructions_reach_the_model(tmp_path, monkeypatch):
    from scipy.stats import pearsonr

    model_dir = tmp_path / "tiny-v5"
    tiny_model("llama", 5).save_pretrained(model_dir)
    encoder = PoolAttnEncoder(str(model_dir), name="poolattn/tiny-v5", revision="r1", batch_size=8)
    prompts = []
    original_encode = encoder.model.encode
    monkeypatch.setattr(
        encoder.model, "encode", lambda texts, **kw: prompts.append(kw["prompt"]) or original_encode(texts, **kw)
    )

    result = mteb.evaluate(
        encoder,
        [local_sts_task(tmp_path / "STSBenchmark")],
        cache=mteb.ResultCache(tmp_path / "r"),
        overwrite_strategy="always",
        show_progress_bar=False,
    )
    scores = result.task_results[0].scores["test"][0]
    assert scores["main_score"] == scores["cosine_spearman"]

    rows = [json.loads(line) for line in STSB.read_text().splitlines()[:40]]
    prompt = query_prompt("STSBenchmark", "STS", prompt_type=None)
    first = original_encode([r["sentence1"] for r in rows], prompt=prompt)
    second = original_encode([r["sentence2"] for r in rows], prompt=prompt)
    cosine = (first * second).sum(1) / (np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1))
    # Pearson, not Spearman: a random model's cosines differ only in the 5th decimal, so float rounding reorders them
    assert scores["cosine_pearson"] == pytest.approx(pearsonr(cosine, [r["score"] for r in rows]).statistic, abs=1e-5)
    assert prompts == [prompt, prompt] and prompt.startswith("Instruct: Retrieve semantically similar text.")
    meta = encoder.mteb_model_meta
    saved = list((tmp_path / "r").rglob("STSBenchmark.json"))
    assert len(saved) == 1 and f"poolattn__tiny-v5/{meta.revision}" in str(saved[0])


def test_folders_exported_before_matryoshka_sizes_still_score(tmp_path, monkeypatch):
    """The remote code written into an older export has an `encode` without `truncate_dim`: scoring it at full size
    must not pass one (it failed with "unexpected keyword argument 'truncate_dim'")."""
    model_dir = tmp_path / "tiny-v5"
    tiny_model("llama", 5).save_pretrained(model_dir)
    encoder = PoolAttnEncoder(str(model_dir), name="poolattn/tiny-v5", revision="r1", batch_size=8)
    current = encoder.model.encode

    def older_encode(texts, *, prompt=None, batch_size=32, max_length=None, show_progress_bar=False):
        return current(texts, prompt=prompt, batch_size=batch_size, max_length=max_length)

    task, texts = local_sts_task(tmp_path / "STSBenchmark"), [{"text": ["a cat sits", "a dog runs"]}]
    expected = encoder.encode(texts, task_metadata=task.metadata, hf_split="test", hf_subset="default")
    monkeypatch.setattr(encoder.model, "encode", older_encode)
    older = encoder.encode(texts, task_metadata=task.metadata, hf_split="test", hf_subset="default")
    np.testing.assert_allclose(older, expected, rtol=0, atol=1e-6)


def test_get_model_loads_a_folder_that_mtebs_get_model_cannot_and_scores_what_evaluate_scores(tmp_path, capsys):
    from poolattn import cli
    from poolattn.evaluation import get_model
    from poolattn.evaluation.results import read_runs

    model_dir = tmp_path / "tiny-v5"
    tiny_model("llama", 5).save_pretrained(model_dir)
    with pytest.raises(Exception, match="No model implementation"):  # mteb 2.x: registry or Hub names only
        mteb.get_model(str(model_dir))
    local_sts_task(tmp_path / "data" / "STSBenchmark")
    assert (
        cli.evaluate(
            [
                "run",
                "--model",
                str(model_dir),
                "--tasks",
                "STSBenchmark",
                "--data-dir",
                str(tmp_path / "data"),
                "--output",
                str(tmp_path / "ours"),
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    (ours,) = read_runs(next((tmp_path / "ours" / "results").iterdir()))
    encoder = get_model(str(model_dir), batch_size=8)
    (result,) = mteb.evaluate(
        encoder, [local_sts_task(tmp_path / "again" / "STSBenchmark")], cache=None, show_progress_bar=False
    ).task_results
    assert result.get_score() == pytest.approx(ours.scores["STSBenchmark"], abs=6e-6)  # stored: 6 decimals
    assert encoder.mteb_model_meta.revision == ours.revision
    assert get_model(str(model_dir), instructions=False).mteb_model_meta.revision.endswith("-no-instructions")


@pytest.mark.parametrize(
    "encode_kwargs, expected",
    [
        (None, 4),  # mteb fills batch_size 32 itself: get_model's 4 (chosen to fit memory) stays
        ({"batch_size": 16}, 16),  # the caller of mteb.evaluate asked for another
        ({"batch_size": 32}, 4),  # cannot be told from mteb's default: get_model's wins (documented)
    ],
)
def test_get_models_batch_size_is_kept_through_mteb_evaluate(tmp_path, monkeypatch, encode_kwargs, expected):
    from poolattn.evaluation import get_model

    tiny_model("llama", 5).save_pretrained(tmp_path / "tiny-v5")
    encoder, batch_sizes = get_model(str(tmp_path / "tiny-v5"), batch_size=4), []
    encode = encoder.model.encode
    monkeypatch.setattr(
        encoder.model, "encode", lambda texts, **kw: batch_sizes.append(kw["batch_size"]) or encode(texts, **kw)
    )
    task = local_sts_task(tmp_path / "STSBenchmark", rows=10)
    (result,) = mteb.evaluate(
        encoder, [task], cache=None, encode_kwargs=encode_kwargs, show_progress_bar=False
    ).task_results
    assert batch_sizes == [expected, expected] and np.isfinite(result.get_score())


def test_documents_get_no_instruction_and_queries_do():
    assert query_prompt("ArguAna", "Retrieval", prompt_type="document") is None
    assert query_prompt("ArguAna", "Retrieval", prompt_type="query") == (
        "Instruct: Given a claim, find documents that refute the claim\nQuery: "
    )
    assert query_prompt("SomeNewRetrieval", "Retrieval", prompt_type="query").startswith("Instruct: Given a query")
    assert query_prompt("X", "Unknown", prompt_type=None, instructions={}) is None


def test_every_task_type_gets_the_prompt_mteb_stock_sentence_transformers_route_reads_from_the_folder(tmp_path):
    """evaluate.py's encoder and mteb's stock route (a `SentenceTransformer` of the folder, prompts looked up in its
    `config_sentence_transformers.json`) give the same prompt for every mteb task type, task name and text kind: a
    task type without an instruction (instruction retrieval, ...) gets the model's own query prompt on queries in
    both, not the trained prompt in one and none in the other."""
    from typing import get_args

    from mteb.abstasks.task_metadata import TaskType
    from mteb.models.abs_encoder import get_prompt_name
    from mteb.types import PromptType

    from poolattn.export import write_sentence_transformers_prompts

    folder = tmp_path / "tiny-v5"
    tiny_model("llama", 5).save_pretrained(folder)
    write_sentence_transformers_prompts(folder, "Instruct: Find the answer\nQuery: ")
    folder_prompts = json.loads((folder / "config_sentence_transformers.json").read_text())["prompts"]
    encoder = PoolAttnEncoder(str(folder), name="poolattn/tiny-v5", revision="r1", batch_size=8)
    given = []
    encoder.model.encode = lambda texts, **kw: given.append(kw["prompt"]) or np.zeros((len(texts), 4))
    differ = []
    for task_type in get_args(TaskType):
        for name in ("STSBenchmark", "ArguAna", "SomeNewTask"):
            metadata = SimpleNamespace(name=name, type=task_type)
            for kind in (None, PromptType.query, PromptType.document):
                encoder.encode(
                    [{"text": ["a text"]}],
                    task_metadata=metadata,
                    hf_split="test",
                    hf_subset="default",
                    prompt_type=kind,
                )
                key = get_prompt_name(folder_prompts, metadata, kind)
                if given[-1] != ((folder_prompts[key] or None) if key else None):
                    differ.append((task_type, name, kind, given[-1], key))
    assert differ == []
    assert any(prompt == "Instruct: Find the answer\nQuery: " for prompt in given)  # the instruction-less query types
