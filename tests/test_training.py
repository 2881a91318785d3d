"""Training: the loss by hand, GradCache vs plain gradients, kill-and-resume, export, data errors, --variant all."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import SENTENCES, TRIPLETS
from safetensors.torch import load_file

from poolattn import training
from poolattn.export import export_model
from poolattn.files import atomic_save
from poolattn.manifest import TrainingManifest
from poolattn.training.collator import TripletCollator
from poolattn.training.data import load_triplets
from poolattn.training.losses import info_nce_loss
from poolattn.training.sources import TripletDataError
from poolattn.training.trainer import (
    ContrastiveTrainer,
    ContrastiveTrainingArguments,
    RandomStateReplay,
    length_grouped_chunks,
)

TINY_RUN = [
    "--max_steps",
    "4",
    "--per_device_train_batch_size",
    "4",
    "--save_steps",
    "2",
    "--learning_rate",
    "1e-2",
    "--warmup_steps",
    "0",
    "--logging_steps",
    "1",
    "--use_cpu",
    "true",
    "--lora_r",
    "4",
    "--lora_alpha",
    "8",
]


# -- the loss --------------------------------------------------------------------------------------------------------


def test_info_nce_equals_a_hand_computation():
    queries = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    documents = torch.tensor([[1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])  # positives for q0, q1, then a hard negative
    cosine = [[1 / math.sqrt(2), 0.0, -1.0], [1 / math.sqrt(2), 1.0, 0.0]]
    for temperature in (1.0, 0.05):
        expected = (
            sum(
                -cosine[i][i] / temperature + math.log(sum(math.exp(c / temperature) for c in cosine[i]))
                for i in range(2)
            )
            / 2
        )
        actual = info_nce_loss(queries, documents, temperature=temperature).item()
        assert actual == pytest.approx(expected, rel=1e-5, abs=1e-6)  # fp32 scores of up to 1/0.05 = 20


def test_temperature_and_hard_negatives_move_the_loss_as_expected():
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(8, 16, generator=generator)
    positives = queries + 0.3 * torch.randn(8, 16, generator=generator)  # each positive near its query
    sharp, soft = (info_nce_loss(queries, positives, temperature=t) for t in (0.05, 1.0))
    assert sharp < soft  # aligned pairs: a lower temperature makes the right answer more certain
    easy_negatives = -queries
    hard_negatives = queries + 0.5 * torch.randn(8, 16, generator=generator)
    in_batch = info_nce_loss(queries, positives)
    with_easy = info_nce_loss(queries, torch.cat([positives, easy_negatives]))
    with_hard = info_nce_loss(queries, torch.cat([positives, hard_negatives]))
    assert in_batch < with_easy < with_hard


def test_label_smoothing_spreads_over_the_documents_left_in_each_softmax():
    """Smoothing e on a query whose duplicate is excluded equals F.cross_entropy(label_smoothing=e) over the
    documents that stay; e = 0 is the plain loss; the smoothed loss is finite (no mass on an excluded -inf)."""
    generator = torch.Generator().manual_seed(0)
    queries, documents = torch.randn(3, 8, generator=generator), torch.randn(5, 8, generator=generator)
    excluded = torch.zeros(3, 5, dtype=torch.bool)
    excluded[0, 3] = excluded[2, 1] = True
    smoothed = info_nce_loss(queries, documents, temperature=0.1, excluded=excluded, label_smoothing=0.2)
    by_query = []
    for i in range(3):
        kept = (~excluded[i]).nonzero().squeeze(1)
        scores = F.normalize(queries[i : i + 1], dim=-1) @ F.normalize(documents[kept], dim=-1).T / 0.1
        target = (kept == i).nonzero().squeeze(1)
        by_query.append(F.cross_entropy(scores, target, label_smoothing=0.2))
    assert torch.isfinite(smoothed)
    torch.testing.assert_close(smoothed, torch.stack(by_query).mean(), rtol=0, atol=1e-6)
    plain = info_nce_loss(queries, documents, temperature=0.1, excluded=excluded)
    assert info_nce_loss(queries, documents, temperature=0.1, excluded=excluded, label_smoothing=0.0) == plain
    assert smoothed != plain


def test_label_smoothing_factor_reaches_the_trainer_loss_and_gradcache(tiny_backbone_folder, tmp_path):
    """--label_smoothing_factor 0.1: the trainer's loss is the smoothed contrastive loss (1e-6), and GradCache gives
    the loss and gradients of plain training with it (1e-5); a factor outside [0, 1) is refused."""
    from poolattn.training.losses import contrastive_loss

    trainer, batch = tiny_peft_trainer(tiny_backbone_folder, tmp_path, label_smoothing=0.1)
    with torch.no_grad():
        queries = trainer.model(**batch["queries"]).embeddings
        documents = trainer.model(**batch["documents"]).embeddings
        kwargs = dict(temperature=0.05, gather=False, text_ids=batch["text_ids"])
        smoothed = contrastive_loss(queries, documents, label_smoothing=0.1, **kwargs)
        assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(smoothed.item(), abs=1e-6)
        assert smoothed.item() != pytest.approx(contrastive_loss(queries, documents, **kwargs).item(), abs=1e-4)
    results = {}
    for chunk in (0, 3):
        trainer, batch = tiny_peft_trainer(tiny_backbone_folder, tmp_path, chunk=chunk, label_smoothing=0.1)
        loss = trainer.training_step(trainer.model, batch)
        results[chunk] = loss, {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert results[3][0].item() == pytest.approx(results[0][0].item(), abs=1e-5)
    for name, gradient in results[0][1].items():
        torch.testing.assert_close(results[3][1][name], gradient, rtol=0, atol=1e-5, msg=name)
    with pytest.raises(ValueError, match=r"--label_smoothing_factor 1.0 must be in \[0, 1\)"):
        ContrastiveTrainingArguments(output_dir=str(tmp_path / "x"), label_smoothing_factor=1.0)


# -- GradCache --------------------------------------------------------------------------------------------------------


def tiny_peft_trainer(
    backbone_folder,
    tmp_path,
    *,
    variant=5,
    chunk=0,
    lora_dropout=0.0,
    matryoshka_dims=None,
    use_cpu=True,
    label_smoothing=0.0,
):
    torch.manual_seed(0)
    model_args = training.ModelArguments(
        variant=str(variant),
        backbone=backbone_folder,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=lora_dropout,
        matryoshka_dims=matryoshka_dims,
    )
    model, tokenizer = training.build_model(model_args, backbone_folder, variant)
    torch.manual_seed(1)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # B starts at zero, which would make every LoRA A gradient zero
            torch.nn.init.normal_(parameter, std=0.1)
    args = ContrastiveTrainingArguments(
        output_dir=str(tmp_path / "unused"),
        use_cpu=use_cpu,
        report_to="none",
        remove_unused_columns=False,
        max_grad_norm=0.0,
        gradcache_chunk_size=chunk,
        temperature=0.05,
        label_smoothing_factor=label_smoothing,
    )
    trainer = ContrastiveTrainer(model=model, args=args)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop in real runs
    collator = TripletCollator(tokenizer, query_max_length=32, document_max_length=32, add_eos=True)
    return trainer, collator(TRIPLETS[:8])


@pytest.mark.parametrize("variant", [1, 3, 5])
@pytest.mark.parametrize("chunk", [1, 3])
def test_gradcache_gives_the_loss_and_gradients_of_plain_training(tiny_backbone_folder, tmp_path, variant, chunk):
    gradients = {}
    for mode in ("plain", "gradcache"):
        trainer, batch = tiny_peft_trainer(
            tiny_backbone_folder, tmp_path, variant=variant, chunk=chunk if mode == "gradcache" else 0
        )
        loss = trainer.training_step(trainer.model, batch)
        gradients[mode] = (loss, {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad})
    (plain_loss, plain), (cached_loss, cached) = gradients["plain"], gradients["gradcache"]
    assert cached_loss.item() == pytest.approx(plain_loss.item(), abs=1e-5)
    assert plain.keys() == cached.keys() and any("lora_A" in n for n in plain)
    assert any("pooler" in n for n in plain) == (variant != 1)
    for name in plain:
        assert plain[name].abs().max() > 0, f"{name} got no gradient"
        torch.testing.assert_close(cached[name], plain[name], rtol=0, atol=1e-5, msg=name)


def test_the_matryoshka_loss_is_the_mean_over_sizes_and_gradcache_gives_its_gradients(tiny_backbone_folder, tmp_path):
    """--matryoshka_dims 8,16 on a 32-wide model: the trainer's loss is the mean of the full size's and each prefix's
    InfoNCE (prefixes renormalised), and GradCache gives the loss and gradients of plain training (1e-5)."""
    from poolattn.training.losses import contrastive_loss

    trainer, batch = tiny_peft_trainer(tiny_backbone_folder, tmp_path, matryoshka_dims="8,16")
    assert trainer.matryoshka_dims == (8, 16) and trainer.model.get_base_model().config.matryoshka_dims == [8, 16]
    with torch.no_grad():
        queries = trainer.model(**batch["queries"]).embeddings
        documents = trainer.model(**batch["documents"]).embeddings
        by_hand = (
            sum(
                contrastive_loss(
                    queries[:, :size], documents[:, :size], temperature=0.05, gather=False, text_ids=batch["text_ids"]
                )
                for size in (32, 8, 16)
            )
            / 3
        )
        assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(by_hand.item(), abs=1e-6)
    results = {}
    for chunk in (0, 3):
        trainer, batch = tiny_peft_trainer(tiny_backbone_folder, tmp_path, chunk=chunk, matryoshka_dims="8,16")
        loss = trainer.training_step(trainer.model, batch)
        results[chunk] = loss, {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert results[3][0].item() == pytest.approx(results[0][0].item(), abs=1e-5)
    for name, gradient in results[0][1].items():
        torch.testing.assert_close(results[3][1][name], gradient, rtol=0, atol=1e-5, msg=name)


def test_gradcache_replays_the_random_state_of_each_chunk(tiny_backbone_folder, tmp_path):
    trainer, batch = tiny_peft_trainer(tiny_backbone_folder, tmp_path, lora_dropout=0.5)
    model = trainer.model.train()
    state = RandomStateReplay()
    first = model(**batch["queries"]).embeddings
    second = model(**batch["queries"]).embeddings
    with state.replay():
        replayed = model(**batch["queries"]).embeddings
    assert not torch.equal(first, second)  # dropout is active
    assert torch.equal(first, replayed)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_length_grouped_chunks_drop_padding_and_keep_every_embedding(padding_side):
    from conftest import tiny_model, tiny_tokenizer

    model = tiny_model("llama", 5)
    tokenizer = tiny_tokenizer(padding_side)
    collator = TripletCollator(tokenizer, query_max_length=32, document_max_length=32, add_eos=True)
    documents = collator(TRIPLETS)["documents"]  # 24 texts of 3 to 10 tokens
    chunks, order = length_grouped_chunks(documents, 5)
    lengths = documents["attention_mask"].sum(dim=1)
    assert sorted(order.tolist()) == list(range(24)) and [len(c["input_ids"]) for c in chunks] == [5, 5, 5, 5, 4]
    widths = [chunk["input_ids"].shape[1] for chunk in chunks]
    assert widths == [lengths[rows].max() for rows in order.split(5)]  # each chunk cut to its own longest text
    assert widths == sorted(widths, reverse=True) and widths[-1] < documents["input_ids"].shape[1]
    for chunk, rows in zip(chunks, order.split(5)):
        assert chunk["attention_mask"].sum() == lengths[rows].sum()  # no real token was cut
    with torch.no_grad():
        whole = model(**documents).embeddings
        chunked = torch.cat([model(**chunk).embeddings for chunk in chunks])[torch.argsort(order)]
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)


# -- cross-device negatives: 2 processes vs 1 -------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [0, 2])
def test_two_processes_with_gathered_negatives_match_one_process(tiny_backbone_folder, tmp_path, chunk):
    worker = Path(__file__).with_name("ddp_worker.py")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(worker),
        tiny_backbone_folder,
        str(tmp_path),
        str(chunk),
    ]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(worker.parents[1]), str(worker.parent)])}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-4000:]
    dumped = torch.load(tmp_path / "ddp_gradients.pt")
    assert dumped["rows_per_rank"] == [[0, 1, 2, 3], [4, 5, 6, 7]]

    trainer, _ = tiny_peft_trainer(tiny_backbone_folder, tmp_path)  # one process, the combined batch
    model = trainer.model.train()
    collator = TripletCollator(
        trainer.model.get_base_model().get_tokenizer(), query_max_length=32, document_max_length=32, add_eos=True
    )
    rank_batches = [collator([TRIPLETS[i] for i in rows]) for rows in dumped["rows_per_rank"]]
    queries = torch.cat([model(**b["queries"]).embeddings for b in rank_batches])  # (8, hidden)
    documents = torch.cat([model(**b["documents"]).embeddings for b in rank_batches])  # rank 0's 8, then rank 1's 8
    labels = torch.tensor([0, 1, 2, 3, 8, 9, 10, 11])
    scores = torch.nn.functional.normalize(queries, dim=-1) @ torch.nn.functional.normalize(documents, dim=-1).T / 0.05
    torch.nn.functional.cross_entropy(scores, labels).backward()
    reference = {n.removeprefix("module."): p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert dumped["gradients"].keys() == reference.keys()
    for name, gradient in dumped["gradients"].items():
        torch.testing.assert_close(gradient, reference[name], rtol=0, atol=1e-5, msg=name)


# -- train.py end to end: resume, export, data errors, --variant all --------------------------------------------------


def test_kill_and_resume_ends_where_an_uninterrupted_run_ends(
    tiny_backbone_folder, triplets_file, tmp_path, monkeypatch
):
    common = ["--variant", "5", "--backbone", tiny_backbone_folder, "--train_data", triplets_file, *TINY_RUN]
    straight = training.main([*common, "--output_dir", str(tmp_path / "straight")])[0]

    original_step = ContrastiveTrainer.training_step

    def crash_after_two_steps(self, *args, **kwargs):
        if self.state.global_step == 2:
            raise KeyboardInterrupt("simulated kill after checkpoint-2")
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(ContrastiveTrainer, "training_step", crash_after_two_steps)
    with pytest.raises(KeyboardInterrupt):
        training.main([*common, "--output_dir", str(tmp_path / "resumed")])
    assert (tmp_path / "resumed" / "checkpoint-2").is_dir() and not (tmp_path / "resumed" / "model").exists()
    monkeypatch.setattr(ContrastiveTrainer, "training_step", original_step)
    resumed = training.main([*common, "--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint", "true"])[
        0
    ]

    expected, actual = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6, msg=name)
    manifest = json.loads((resumed / "training_manifest.json").read_text())
    assert manifest["global_steps"] == 4 and manifest["contrastive_batch"]["candidates_per_query"] == 8

    # Killed after the last checkpoint, before the export: resuming exports that step, with no step more.
    shutil.rmtree(resumed)
    again = training.main([*common, "--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint", "true"])[0]
    for name, value in load_file(again / "model.safetensors").items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)
    manifest = json.loads((again / "training_manifest.json").read_text())
    assert manifest["global_steps"] == 4 and [step for step, _ in manifest["loss_history"]] == [1, 2, 3, 4]


FRESH_LOAD = r"""
import json, sys
import numpy as np
sys.modules["peft"] = None  # the export must load without peft
sys.modules["poolattn"] = None
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
np.save(sys.argv[1] + "/fresh.npy", model.encode(json.loads(sys.argv[2])))
"""


def test_export_merges_lora_and_loads_without_peft_in_a_fresh_process(tiny_backbone_folder, tmp_path):
    import numpy as np

    trainer, _ = tiny_peft_trainer(tiny_backbone_folder, tmp_path)
    model = trainer.model.eval()
    base = model.get_base_model()
    adapter = base.encode(SENTENCES)
    destination = export_model(
        model,
        base.get_tokenizer(),
        tmp_path / "export",
        check_texts=SENTENCES[:4],
        manifest=TrainingManifest(variant=5, backbone=tiny_backbone_folder),
    )
    assert (
        json.loads((destination / "training_manifest.json").read_text())["export_check"]["max_abs_difference"] < 1e-5
    )
    result = subprocess.run(
        [sys.executable, "-c", FRESH_LOAD, str(destination), json.dumps(SENTENCES)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trust_remote_code" not in result.stdout + result.stderr
    assert abs(np.load(destination / "fresh.npy") - adapter).max() < 1e-5
    assert not any("lora" in key for key in load_file(destination / "model.safetensors"))


def test_export_refuses_a_merge_that_changes_the_embeddings(tiny_backbone_folder, tmp_path, monkeypatch):
    trainer, _ = tiny_peft_trainer(tiny_backbone_folder, tmp_path)
    model = trainer.model.eval()
    original_merge = model.merge_and_unload

    def corrupting_merge(*args, **kwargs):
        merged = original_merge(*args, **kwargs)
        with torch.no_grad():
            merged.model.layers[0].mlp.down_proj.weight.mul_(3.0)  # what a broken merge would do
        return merged

    monkeypatch.setattr(model, "merge_and_unload", corrupting_merge, raising=False)
    with pytest.raises(RuntimeError, match=r"Merged and adapter embeddings differ by .* the export was not written"):
        export_model(
            model,
            model.get_base_model().get_tokenizer(),
            tmp_path / "export",
            check_texts=SENTENCES[:4],
            manifest=TrainingManifest(variant=5, backbone=tiny_backbone_folder),
        )
    assert not (tmp_path / "export").exists()


def test_a_crash_while_saving_never_leaves_a_half_written_model(tmp_path):
    destination = tmp_path / "model"

    def good(folder):
        (folder / "weights").write_text("v1")

    def crashing(folder):
        (folder / "weights").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_save(crashing, destination)
    assert not destination.exists() and list(tmp_path.iterdir()) == []
    atomic_save(good, destination)
    with pytest.raises(OSError):
        atomic_save(crashing, destination)
    assert (destination / "weights").read_text() == "v1" and [p.name for p in tmp_path.iterdir()] == ["model"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("", r"file is empty"),
        ('{"query": "q", "positive": "p"}\n{"query": "q2"}\n', r"row 2: field 'positive' is missing or empty"),
        ('{"query": "q", "positive": ""}\n', r"row 1: field 'positive' is missing or empty"),
        ('{"query": "q", "positive": 3}\n', r"row 1: field 'positive' must be a string, got int"),
        ('{"query": "q", "positive": "p"}\nnot json\n', r"row 2: not valid JSON"),
        ('["q", "p"]\n', r"row 1: expected an object"),
    ],
)
def test_malformed_data_gives_a_clear_error_and_writes_nothing(tiny_backbone_folder, tmp_path, content, message):
    data = tmp_path / "bad.jsonl"
    data.write_text(content)
    output = tmp_path / "out"
    with pytest.raises(TripletDataError, match=rf"{data}.*{message}" if "row" in message else message):
        training.main(["--backbone", tiny_backbone_folder, "--train_data", str(data), "--output_dir", str(output)])
    assert not output.exists()


def test_skipping_invalid_rows_counts_them(tmp_path):
    data = tmp_path / "mixed.jsonl"
    data.write_text(
        '{"query": "q", "postive": "p"}\n{"query": "", "positive": "p"}\n{"query": "q3", "positive": "p3"}\n'
    )
    triplets = load_triplets(str(data), skip_invalid=True)
    assert (len(triplets.rows), triplets.skipped, triplets.has_negatives) == (2, 1, False)
    assert triplets.rows[0]["positive"] == "p"  # the paper data's "postive" spelling is accepted


def test_csv_and_folder_sources(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.csv").write_text("query,positive,negative\nq1,p1,n1\nq2,p2,n2\n")
    (folder / "b.jsonl").write_text('{"query": "q3", "positive": "p3", "negative": "n3"}\n')
    triplets = load_triplets(str(folder))
    assert [row["query"] for row in triplets.rows] == ["q1", "q2", "q3"] and triplets.has_negatives
    with pytest.raises(TripletDataError, match=r"unsupported file type '.txt'"):
        (tmp_path / "x.txt").write_text("x")
        load_triplets(str(tmp_path / "x.txt"))


def test_instruction_tokens_are_marked_out_of_pooling(tiny_backbone_folder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone_folder)
    collator = TripletCollator(
        tokenizer, query_max_length=64, document_max_length=64, add_eos=True, query_instruction="find the passage"
    )
    rows = [{**TRIPLETS[0], "instruction": None}, {**TRIPLETS[1], "instruction": "find a car"}]
    batch = collator(rows)
    prompt_tokens = [
        len(tokenizer(f"Instruct: {i}\nQuery: ", add_special_tokens=False)["input_ids"])
        for i in ("find the passage", "find a car")
    ]
    excluded = (batch["queries"]["attention_mask"] - batch["queries"]["pooling_mask"]).sum(1).tolist()
    assert excluded == prompt_tokens
    assert torch.equal(batch["documents"]["pooling_mask"], batch["documents"]["attention_mask"])
    assert batch["documents"]["input_ids"].shape[0] == 4  # 2 positives, then 2 negatives


def test_variant_all_trains_the_five_variants_with_the_same_data_and_seed(
    tiny_backbone_folder, triplets_file, tmp_path
):
    exported = training.main(
        [
            "--variant",
            "all",
            "--backbone",
            tiny_backbone_folder,
            "--train_data",
            triplets_file,
            "--output_dir",
            str(tmp_path),
            *TINY_RUN,
            "--max_steps",
            "1",
            "--save_steps",
            "10",
        ]
    )
    assert exported == [tmp_path / f"v{n}" / "model" for n in range(1, 6)]
    manifests = [json.loads((path / "training_manifest.json").read_text()) for path in exported]
    assert [m["variant"] for m in manifests] == [1, 2, 3, 4, 5]
    assert len({json.dumps([m["seed"], m["data"]]) for m in manifests}) == 1
    assert [json.loads((p / "config.json").read_text())["variant"] for p in exported] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "flags, trains_backbone",
    [
        (["--full_finetune", "true"], True),
        (["--activation_checkpointing", "true", "--gradcache_chunk_size", "2"], False),
    ],
)
def test_full_finetuning_and_activation_checkpointing_runs(
    tiny_backbone_folder, triplets_file, tmp_path, flags, trains_backbone
):
    exported = training.main(
        [
            "--variant",
            "5",
            "--backbone",
            tiny_backbone_folder,
            "--train_data",
            triplets_file,
            "--output_dir",
            str(tmp_path),
            *TINY_RUN,
            "--max_steps",
            "2",
            "--save_steps",
            "10",
            *flags,
        ]
    )[0]
    manifest = json.loads((exported / "training_manifest.json").read_text())
    assert (manifest["trainable_parameters"]["backbone"] > 0) == trains_backbone
    assert (manifest["trainable_parameters"]["lora"] > 0) != trains_backbone
    initial = load_file(Path(tiny_backbone_folder) / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    trained = load_file(exported / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.equal(initial, trained)  # LoRA merged in, or the weight itself trained


def test_evaluate_reports_the_contrastive_loss_and_in_batch_recall(tiny_backbone_folder, tmp_path):
    import datasets

    trainer, batch = tiny_peft_trainer(tiny_backbone_folder, tmp_path)
    collator = TripletCollator(
        trainer.model.get_base_model().get_tokenizer(), query_max_length=32, document_max_length=32, add_eos=True
    )
    trainer.data_collator = collator
    metrics = trainer.evaluate(datasets.Dataset.from_list(TRIPLETS[:8]))  # one batch of 8 (eval batch size)
    model = trainer.model.eval()
    with torch.no_grad():
        expected = trainer.compute_loss(model, batch).item()
        queries, documents = model(**batch["queries"]).embeddings, model(**batch["documents"]).embeddings
    assert metrics["eval_loss"] == pytest.approx(expected, abs=1e-5)
    scores = torch.nn.functional.normalize(queries, dim=-1) @ torch.nn.functional.normalize(documents, dim=-1).T
    by_hand = (scores.argmax(dim=-1) == torch.arange(8)).float().mean().item()  # no duplicate texts in TRIPLETS
    assert metrics["eval_recall_at_1"] == pytest.approx(by_hand)


def test_holding_out_rows_leaves_the_parsed_arguments_and_the_loaded_rows_as_given(
    triplets_file, tiny_backbone_folder
):
    """`held_out_rows` returns the training rows and the held-out ones (a partition of the loaded rows); the loaded
    triplets and the parsed arguments are not changed (the Trainer's copy gets the evaluation schedule)."""
    import copy

    from poolattn.training.data import load_triplets
    from poolattn.training.preflight import held_out_rows
    from poolattn.training.trainer_arguments import trainer_arguments

    model_args, data_args, training_args = training.parse_arguments(
        [
            "--backbone",
            tiny_backbone_folder,
            "--train_data",
            triplets_file,
            "--eval_fraction",
            "0.34",
            "--per_device_eval_batch_size",
            "4",
            "--save_steps",
            "3",
            "--use_cpu",
            "true",
        ]
    )
    loaded = load_triplets(triplets_file)
    loaded_before, arguments_before = copy.deepcopy(loaded), training_args.to_dict()
    kept, held_out = held_out_rows(loaded, data_args, training_args)
    assert loaded == loaded_before and training_args.to_dict() == arguments_before
    assert len(held_out) == 4 and kept.examples == 8 and sum(source.examples for source in kept.sources) == 8
    assert sorted(map(str, kept.rows + held_out)) == sorted(map(str, loaded.rows))
    assert held_out_rows(loaded, data_args, training_args)[1] == held_out  # the same rows for the same seed
    trainer_copy = trainer_arguments(training_args, evaluating=True)
    assert (trainer_copy.eval_strategy, trainer_copy.eval_steps) == ("steps", 3)  # every --save_steps by default
    assert training_args.eval_strategy == "no"
    *_, every_two = training.parse_arguments(
        ["--backbone", tiny_backbone_folder, "--eval_fraction", "0.34", "--save_steps", "3", "--eval_steps", "2"]
    )
    assert trainer_arguments(every_two, evaluating=True).eval_steps == 2  # --eval_steps alone is enough


def test_held_out_data_is_scored_during_training_and_recorded(tiny_backbone_folder, triplets_file, tmp_path):
    exported = training.main(
        [
            "--backbone",
            tiny_backbone_folder,
            "--train_data",
            triplets_file,
            "--eval_fraction",
            "0.34",
            "--per_device_eval_batch_size",
            "4",
            "--output_dir",
            str(tmp_path / "out"),
            *TINY_RUN,
        ]
    )[0]
    manifest = json.loads((exported / "training_manifest.json").read_text())
    assert manifest["data"]["examples"] == 8  # 4 of the 12 rows held out
    assert [step for step, _, _ in manifest["eval_history"]] == [2, 4]  # every --save_steps
    assert all(loss > 0 and 0 <= recall <= 1 for _, loss, recall in manifest["eval_history"])
    # the best checkpoint by held-out recall is the one exported; early stopping as in any Trainer script
    best = training.main(
        [
            "--backbone",
            tiny_backbone_folder,
            "--train_data",
            triplets_file,
            "--eval_fraction",
            "0.34",
            "--per_device_eval_batch_size",
            "4",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "2",
            "--load_best_model_at_end",
            "true",
            "--metric_for_best_model",
            "eval_loss",
            "--early_stopping_patience",
            "1",
            "--output_dir",
            str(tmp_path / "best"),
            *TINY_RUN,
        ]
    )[0]
    history = json.loads((best / "training_manifest.json").read_text())["eval_history"]
    state = json.loads(sorted((tmp_path / "best").glob("checkpoint-*"))[-1].joinpath("trainer_state.json").read_text())
    assert state["best_metric"] == pytest.approx(min(loss for _, loss, _ in history))
    with pytest.raises(ValueError, match="4 held-out rows make no evaluation batch of 8"):
        training.main(
            [
                "--backbone",
                tiny_backbone_folder,
                "--train_data",
                triplets_file,
                "--eval_fraction",
                "0.34",
                "--output_dir",
                str(tmp_path / "never"),
            ]
        )
    with pytest.raises(ValueError, match="need evaluation data: give --eval_data FILE or --eval_fraction"):
        training.main(
            [
                "--backbone",
                tiny_backbone_folder,
                "--train_data",
                triplets_file,
                "--eval_strategy",
                "steps",
                "--output_dir",
                str(tmp_path / "never"),
            ]
        )


def test_paper_preset_sets_defaults_and_explicit_flags_win():
    arguments = ["--preset", "paper", "--max_steps", "7", "--use_cpu", "true"]  # bf16 on CPU needs use_cpu
    model_args, data_args, training_args = training.parse_arguments(arguments)
    assert (model_args.backbone, data_args.train_data) == ("mistralai/Mistral-7B-v0.1", "yixuantt/ir_data")
    assert (model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout) == (16, 32, 0.1)
    assert training_args.learning_rate == 1e-5 and training_args.warmup_steps == 100 and training_args.bf16
    assert training_args.per_device_train_batch_size == 2048 and training_args.gradcache_chunk_size == 32
    assert training_args.max_steps == 7


def test_a_preset_applies_in_every_form_and_an_unknown_or_repeated_one_is_refused(tmp_path):
    """`--preset=small` and an arguments file's "preset" were dropped (every default left as it was), a misspelled
    preset in a file ran on the defaults, and of two --preset flags the first won."""
    small = training.PRESETS["small"]
    (tmp_path / "args.json").write_text(json.dumps({"preset": "small", "seed": 3}))
    for argv in (["--preset", "small"], ["--preset=small"], [str(tmp_path / "args.json")]):
        _, data_args, training_args = training.parse_arguments(argv)
        assert (training_args.max_steps, data_args.query_max_length) == (small["max_steps"], small["query_max_length"])
    (tmp_path / "typo.json").write_text(json.dumps({"preset": "smal"}))
    for argv in (["--preset", "smal"], ["--preset=smal"], [str(tmp_path / "typo.json")]):
        with pytest.raises(ValueError, match=r"'smal' is not a preset\. Allowed values: paper, small\."):
            training.parse_arguments(argv)
    with pytest.raises(ValueError, match=r"--preset is given twice \('small', then 'paper'\); give one preset"):
        training.parse_arguments(["--preset", "small", "--preset=paper"])


def test_paper_preset_trains_a_tiny_mistral_with_its_own_bf16_gradcache_and_checkpointing_path(tmp_path):
    """`--preset paper` end to end on CPU, so its code path cannot rot where no GPU runs it: bf16 weights and autocast,
    activation checkpointing, GradCache, LoRA r16 on q/k/v/o, lr 1e-5 with warm-up; only the backbone (a tiny random
    Mistral instead of Mistral-7B), the data, the batch and the steps are overridden. The head stays fp32 beside the
    bf16 backbone in the export."""
    import json

    from conftest import tiny_text_config, tiny_tokenizer
    from safetensors import safe_open
    from transformers import MistralForCausalLM

    torch.manual_seed(0)
    MistralForCausalLM(tiny_text_config("mistral")).save_pretrained(tmp_path / "mistral")
    tiny_tokenizer().save_pretrained(tmp_path / "mistral")
    (tmp_path / "triplets.jsonl").write_text("".join(json.dumps(row) + "\n" for row in TRIPLETS))
    (exported,) = training.main(
        [
            "--preset",
            "paper",
            "--backbone",
            str(tmp_path / "mistral"),
            "--train_data",
            str(tmp_path / "triplets.jsonl"),
            "--max_steps",
            "2",
            "--contrastive_batch_size",
            "8",
            "--gradcache_chunk_size",
            "3",
            "--warmup_steps",
            "1",
            "--save_steps",
            "2",
            "--use_cpu",
            "true",
            "--output_dir",
            str(tmp_path / "run"),
        ]
    )
    manifest = TrainingManifest.read(exported)
    settings = {
        key: manifest.hyperparameters[key]
        for key in ("bf16", "model_dtype", "gradcache_chunk_size", "activation_checkpointing", "learning_rate")
    }
    assert settings == {
        "bf16": True,
        "model_dtype": "bfloat16",
        "gradcache_chunk_size": 3,
        "activation_checkpointing": True,
        "learning_rate": 1e-5,
    }
    assert manifest.global_steps == 2 and all(math.isfinite(loss) for _, loss in manifest.loss_history)
    with safe_open(exported / "model.safetensors", "pt") as weights:
        dtypes = {(name.split(".")[0], str(weights.get_slice(name).get_dtype())) for name in weights.keys()}
    assert dtypes == {("model", "BF16"), ("pooler", "F32")}


def test_small_preset_trains_on_every_shared_source_with_its_instruction(tiny_backbone_folder, tmp_path):
    from poolattn.shared_data import SHARED_DATA

    if not (SHARED_DATA / "train").is_dir():
        pytest.skip("../shared/data/train is not beside this checkout")
    exported = training.main(
        [
            "--preset",
            "small",
            "--backbone",
            tiny_backbone_folder,
            "--max_steps",
            "1",
            "--max_train_samples",
            "400",
            "--per_device_train_batch_size",
            "4",
            "--output_dir",
            str(tmp_path / "out"),
            "--use_cpu",
            "true",
        ]
    )[0]
    manifest = TrainingManifest.read(exported)
    assert manifest.hyperparameters["learning_rate"] == training.PRESETS["small"]["learning_rate"]
    sources = manifest.data.sources
    assert manifest.data.batch_sampling == "one_source_per_batch" and len(sources) >= 6
    assert all(
        source["instruction"] == training.SMALL_RECIPE_INSTRUCTIONS[Path(source["file"]).stem] for source in sources
    )


def test_help_lists_the_packages_own_flags_first_in_groups(capsys):
    with pytest.raises(SystemExit):
        training.parse_arguments(["--help"])
    text = capsys.readouterr().out
    headings = [
        "model (poolattn):",
        "data (poolattn):",
        "contrastive training and the run (poolattn",
        "every other flag of transformers' TrainingArguments:",
    ]
    positions = [text.index(heading) for heading in headings]
    assert positions == sorted(positions) and len(text.splitlines()[0]) < 120  # a one-line usage
    for flag, section in (
        ("--variant", 0),
        ("--negatives_per_query", 1),
        ("--temperature", 2),
        ("--seeds", 2),
        ("--learning_rate", 2),
        ("--adam_beta1", 3),
    ):
        at = text.index(f"  {flag} ")
        assert positions[section] < at and (section == 3 or at < positions[section + 1]), flag


def test_arguments_from_a_json_file(tmp_path):
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"variant": "3", "max_steps": 5, "temperature": 0.02, "output_dir": "somewhere"}))
    model_args, _, training_args = training.parse_arguments([str(path)])
    assert (model_args.variant, training_args.max_steps, training_args.temperature) == ("3", 5, 0.02)
    assert training_args.output_dir_was_given


def test_bad_arguments_name_what_is_allowed(tiny_backbone_folder):
    allowed = r"Allowed values: 1, 2, 3, 4, 5 \(the paper's variants\), mean-causal, mean-bidirectional \(baseline"
    with pytest.raises(ValueError, match=r"--variant '6' is not supported. " + allowed):
        training.main(["--variant", "6", "--backbone", tiny_backbone_folder])
    with pytest.raises(ValueError, match=r"--temperature 0.0 must be > 0"):
        training.main(["--backbone", tiny_backbone_folder, "--temperature", "0", "--output_dir", "/tmp/never"])


def test_a_checkpoint_loads_as_the_model_it_holds(tiny_backbone_folder, triplets_file, tmp_path):
    """`poolattn.load_checkpoint` (the recorded backbone and config, then peft's adapter and head) gives the weights of
    that step: the last checkpoint equals the export of the same run."""
    import poolattn

    exported = training.main(
        [
            "--backbone",
            tiny_backbone_folder,
            "--train_data",
            triplets_file,
            "--output_dir",
            str(tmp_path / "out"),
            *TINY_RUN,
        ]
    )[0]
    checkpoint = tmp_path / "out" / "checkpoint-4"
    record = json.loads((checkpoint / training.CHECKPOINT_RECORD).read_text())
    assert record["backbone"] == tiny_backbone_folder and record["poolattn_config"]["variant"] == 5
    from poolattn import PoolAttnEmbeddingModel

    merged = poolattn.load_checkpoint(checkpoint)
    export = PoolAttnEmbeddingModel.from_pretrained(exported).eval()
    assert isinstance(merged, PoolAttnEmbeddingModel) and merged.config.variant == 5
    np = pytest.importorskip("numpy")
    np.testing.assert_allclose(merged.encode(SENTENCES), export.encode(SENTENCES), atol=1e-5)
    adapter = poolattn.load_checkpoint(checkpoint, merge=False)
    assert type(adapter).__name__ == "PeftModel"
    with pytest.raises(training.TrainingSetupError, match=r"no poolattn_checkpoint.json here"):
        poolattn.load_checkpoint(tmp_path / "out")


def test_torchrun_on_a_cpu_machine_trains_one_model_and_writes_one_export(
    tiny_backbone_folder, triplets_file, tmp_path
):
    """The README's torchrun line without --use_cpu on a machine without CUDA: the processes join (gloo) and train
    one model (the manifest's batch spans both), and only the main process writes the export."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine takes the NCCL path")
    script = Path(__file__).resolve().parents[1] / "train.py"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        "--variant",
        "5",
        "--backbone",
        tiny_backbone_folder,
        "--train_data",
        triplets_file,
        "--output_dir",
        str(tmp_path / "run"),
        "--max_steps",
        "2",
        "--contrastive_batch_size",
        "4",
        "--save_steps",
        "2",
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    manifest = json.loads((tmp_path / "run" / "model" / "training_manifest.json").read_text())
    batch = manifest["contrastive_batch"]
    assert (batch["world_size"], batch["queries_per_device"], batch["queries_per_loss_call"]) == (2, 2, 4)
    assert sorted(path.name for path in (tmp_path / "run").iterdir() if not path.name.startswith("checkpoint-")) == [
        "model"
    ]  # one export, no second rank's folder or temp folder
    assert "parallel_mode != ParallelMode.DISTRIBUTED" not in result.stderr
    assert result.stderr.count("contrastive batch per loss call") == 1  # one main process, not two of their own
    assert result.stderr.count("model written to") == 1
