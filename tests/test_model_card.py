"""The model card: rendered from the template with the typed training manifest (a poolattn 0.1.0 manifest, upgraded
on read; a current one; one without settings; none at all), and the evaluation tables against the other variants."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import tiny_model
from huggingface_hub import ModelCard

from poolattn import records
from poolattn.evaluation.results import ModelResults, TaskInfo
from poolattn.hub.card_tables import describe_data_source, evaluation_tables
from poolattn.hub.model_card import build_model_card, card_metadata, render_card
from poolattn.manifest import TrainingManifest
from poolattn.model_folder import ExportedModel

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "training_manifest_poolattn_0.1.0.json"


def exported(folder: Path, manifest: dict | TrainingManifest | None, variant: int = 5) -> ExportedModel:
    """A tiny model saved to `folder` with `manifest` (raw JSON, a typed record, or none) as its training manifest."""
    tiny_model("llama", variant).save_pretrained(folder)
    if isinstance(manifest, TrainingManifest):
        manifest.write(folder)
    elif manifest is not None:
        (folder / "training_manifest.json").write_text(json.dumps(manifest))
    return ExportedModel.read(folder)


def rendered(model: ExportedModel, repo_id: str = "me/tiny-v5") -> tuple[dict, str]:
    """(the card's YAML metadata as huggingface_hub parses it back, the card's Markdown body)."""
    card = ModelCard(str(build_model_card(model, repo_id=repo_id)))
    return card.data.to_dict(), card.text


def table_row(body: str, name: str) -> str:
    """The value cell of the training table's row `name`."""
    (row,) = [line for line in body.splitlines() if line.startswith(f"| {name} |")]
    return row.removeprefix(f"| {name} | ").removesuffix(" |")


def test_card_of_a_poolattn_0_1_0_manifest_carries_its_recorded_run(tmp_path):
    folder = tmp_path / "model"
    tiny_model("llama", 5).save_pretrained(folder)
    shutil.copy(FIXTURE, folder / "training_manifest.json")
    metadata, body = rendered(ExportedModel.read(folder))

    assert table_row(body, "steps") == "2 (lr 0.0002, linear schedule, 3 warmup steps, adamw_torch_fused)"
    # gradient accumulation and the GradCache chunk were raw arguments in 0.1.0: the upgrade moves them to the batch
    assert table_row(body, "contrastive batch per loss call") == (
        "4 queries x 8 candidates (4 per device x 1 device(s); hard negatives: True; cross-device negatives: False; "
        "GradCache chunk: off; gradient accumulation: 1)"
    )
    assert table_row(body, "tuning") == (
        "LoRA r=4, alpha=8, dropout=0.1 on q_proj,k_proj,v_proj,o_proj,gate_proj,"
        "up_proj,down_proj, merged into the weights; the head trained fully"
    )
    assert table_row(body, "query instruction") == '"Find the passage"'
    assert 'QUERY_PROMPT = "Instruct: Find the passage\\nQuery: "' in body  # the usage snippet, a Python literal
    assert table_row(body, "data") == "local data `triplets.jsonl`: 12 query/positive/hard-negative examples"
    assert table_row(body, "loss") == (
        "InfoNCE over cosine similarities, temperature 0.05; 1.812 at the first step, 1.716 at the last"
    )
    assert table_row(body, "trainable parameters") == "LoRA 6,144, head 16,992, backbone 0"
    assert table_row(body, "max tokens") == "queries 512, documents 512"
    assert table_row(body, "precision") == "float32"
    assert table_row(body, "seed") == "42" and table_row(body, "run time") == "1.3 s"
    assert table_row(body, "export check") == (
        "merged vs adapter embeddings on 8 texts: largest difference 6e-08 (tolerance 0.0001)"
    )
    assert table_row(body, "libraries").startswith("poolattn 0.1.0, torch 2.13.0+cpu, transformers 5.24.0")
    # a local backbone: named as given, never linked as if it were a Hub id, and its licence is unknown
    assert table_row(body, "backbone") == "`/tmp/pytest-of-root/pytest-0/tiny-llama0`"
    assert "built from `/tmp/pytest-of-root/pytest-0/tiny-llama0` with variant 5 of" in body
    assert "https://huggingface.co//" not in body
    assert metadata["license"] == "other" and "base model's licence could not be determined" in body
    assert "base_model" not in metadata and "datasets" not in metadata and "model-index" not in metadata
    assert {"poolattn-variant-5", "bidirectional-attention", "multi-layer-trainable-pooling"} <= set(metadata["tags"])
    assert "Parameters: 48,128 in all, 17,088 in the pooling head." in body  # the tiny v5's safetensors
    assert "Not evaluated yet." in body and "@article{tang2024pooling" in body


def test_card_of_a_current_manifest_with_a_named_backbone_and_full_fine_tuning(tmp_path):
    manifest = TrainingManifest(
        variant=5,
        backbone="smollm2-135m",
        seed=7,
        global_steps=300,
        train_runtime_s=812.5,
        data=records.DataRecord(
            source="sentence-transformers/all-nli",
            examples=5000,
            skipped_rows=3,
            hard_negatives=False,
            query_instruction=None,
        ),
        settings=records.TrainingSettings(
            learning_rate=1e-4,
            lr_scheduler_type="cosine",
            warmup_steps=30,
            optimizer="adamw_torch",
            temperature=0.02,
            query_max_length=64,
            document_max_length=256,
            precision="bf16 mixed",
            full_finetune=True,
        ),
        contrastive_batch=records.ContrastiveBatch.of_run(
            per_device_batch=16,
            world_size=2,
            negatives_per_query=0,
            gather=True,
            gradcache_chunk_size=4,
            gradient_accumulation_steps=2,
        ),
        trainable_parameters=records.TrainableParameters(lora=0, head=1000, backbone=134_000_000),
        loss_history=[[1, 3.25], [150, 1.0], [300, 0.5]],
    )
    metadata, body = rendered(exported(tmp_path / "model", manifest))

    assert metadata["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and metadata["license"] == "apache-2.0"
    assert metadata["datasets"] == ["sentence-transformers/all-nli"]
    assert "licence could not be determined" not in body
    assert "built from [HuggingFaceTB/SmolLM2-135M-Instruct](https://huggingface.co/HuggingFaceTB/SmolLM2-135M" in body
    assert table_row(body, "backbone") == "`smollm2-135m` (HuggingFaceTB/SmolLM2-135M-Instruct)"
    assert table_row(body, "data") == (
        "[sentence-transformers/all-nli](https://huggingface.co/datasets/sentence-"
        "transformers/all-nli): 5000 query/positive examples, 3 invalid rows skipped"
    )
    assert table_row(body, "query instruction") == "none" and "QUERY_PROMPT = None" in body
    assert table_row(body, "steps") == "300 (lr 0.0001, cosine schedule, 30 warmup steps, adamw_torch)"
    assert table_row(body, "contrastive batch per loss call") == (
        "32 queries x 32 candidates (16 per device x 2 device(s); hard negatives: 0 per query; cross-device "
        "negatives: True; GradCache chunk: 4; gradient accumulation: 2)"
    )
    assert table_row(body, "tuning") == "full fine-tuning of every weight"
    assert table_row(body, "loss") == (
        "InfoNCE over cosine similarities, temperature 0.02; 3.250 at the first step, 0.500 at the last"
    )
    assert table_row(body, "precision") == "bf16 mixed" and table_row(body, "seed") == "7"
    assert table_row(body, "run time") == "812.5 s"
    assert table_row(body, "trainable parameters") == "LoRA 0, head 1,000, backbone 134,000,000"
    assert "| export check |" not in body and "| libraries |" not in body  # not recorded: left out, not invented


def test_card_of_a_manifest_without_settings_leaves_out_what_it_does_not_know(tmp_path):
    raw = json.loads(FIXTURE.read_text())
    del raw["hyperparameters"]  # a 0.1.0 manifest's settings come from these: without them there are none
    model = exported(tmp_path / "model", raw)
    assert model.manifest.settings is None
    _, body = rendered(model)

    assert table_row(body, "steps") == "2"
    assert table_row(body, "loss") == "InfoNCE over cosine similarities; 1.812 at the first step, 1.716 at the last"
    assert table_row(body, "contrastive batch per loss call").startswith("4 queries x 8 candidates")
    assert table_row(body, "query instruction") == '"Find the passage"'
    for unknown in ("tuning", "max tokens", "precision"):
        assert f"| {unknown} |" not in body


def test_card_of_a_model_without_a_manifest_says_so(tmp_path):
    model = exported(tmp_path / "model", None, variant=2)
    metadata, body = rendered(model, repo_id="me/tiny-v2")

    assert "No training manifest was saved with this model" in body
    assert "| steps |" not in body and "Fine-tuned with" not in body
    assert "built from a decoder LLM with variant 2 of" in body
    assert "QUERY_PROMPT = None" in body and 'SentenceTransformer("me/tiny-v2", trust_remote_code=True)' in body
    assert "trained without query instructions" not in body  # unknown without a manifest, not "none"
    assert metadata["model_name"] == "me/tiny-v2" and "poolattn-variant-2" in metadata["tags"]
    assert "| pooling | latent (last-layer trainable pooling) |" in body


def test_a_template_variable_the_code_does_not_give_is_refused_not_rendered_empty(tmp_path):
    model = exported(tmp_path / "model", None)
    metadata = card_metadata(model, repo_id="me/tiny-v5", results=None, license=None)
    with pytest.raises(TypeError, match="design_table"):
        render_card(metadata, name="tiny-v5")


@pytest.mark.parametrize(
    "source, described",
    [
        ("/elsewhere/poolattn/sample_data/sample_triplets.jsonl", "poolattn's bundled sample triplets"),
        ("/home/me/data/pairs.jsonl", "local data `pairs.jsonl`:"),
        ("org/dataset", "[org/dataset](https://huggingface.co/datasets/org/dataset):"),
    ],
)
def test_data_sources_are_described_as_a_reader_can_find_them(source, described):
    assert describe_data_source(source).startswith(described)


MAIN_SCORES = {
    "STS": "cosine_spearman",
    "Classification": "accuracy",
    "Retrieval": "ndcg_at_10",
    "Clustering": "v_measure",
}


def fake_results(name: str, scores: dict[str, float], categories: dict[str, str]) -> ModelResults:
    """`ModelResults` over stand-ins for mteb `TaskResult`s (what the tables read: name and score), with each task's
    category and main score recorded as a run records them for local tasks."""
    task_results = [
        SimpleNamespace(task_name=task, get_score=lambda score=score: score) for task, score in scores.items()
    ]
    recorded = {
        task: TaskInfo(task, categories[task], MAIN_SCORES[categories[task]], f"local/{task}", local=True)
        for task in scores
    }
    return ModelResults(name, "rev", Path("."), task_results, recorded_tasks=recorded)


def test_evaluation_tables_compare_over_this_models_tasks_only():
    categories = {"STS12": "STS", "STS13": "STS", "Banking77Classification": "Classification", "ArguAna": "Retrieval"}
    this = fake_results("me/x-v5", {"STS12": 0.5, "STS13": 0.7, "Banking77Classification": 0.6}, categories)
    wider = fake_results("me/x-v1", {"STS12": 0.3, "STS13": 0.4, "ArguAna": 0.9}, categories)  # ArguAna: not ours
    disjoint = fake_results("me/x-v3", {"ArguAna": 0.2}, categories)
    tables = evaluation_tables(this, [wider, disjoint])

    assert tables["scores"].splitlines()[2:] == [  # Classification before STS, as results tables order categories
        "| Banking77Classification | Classification | accuracy | 0.6000 |",
        "| STS12 | STS | cosine_spearman | 0.5000 |",
        "| STS13 | STS | cosine_spearman | 0.7000 |",
    ]
    assert tables["means"].splitlines() == [
        "| model | Classification | STS |",
        "|---|---|---|",
        "| me/x-v5 (this model) | 0.6000 | 0.6000 |",
        "| me/x-v1 | — | 0.3500 |",  # no Classification score, and its ArguAna never enters
    ]
    tests = tables["tests"].splitlines()[2:]
    assert [row.split(" | ")[:3] for row in tests] == [["| me/x-v1", "STS", "2"]]  # x-v3 shares no task: left out
    assert tests[0].endswith("| too few datasets (< 5) for the test to mean much |")


def test_evaluation_tables_without_a_shared_task_hold_only_the_scores():
    this = fake_results("me/x-v5", {"STS12": 0.5}, {"STS12": "STS"})
    other = fake_results("me/x-v1", {"ArguAna": 0.2}, {"ArguAna": "Retrieval"})
    tables = evaluation_tables(this, [other])
    assert tables["means"] is None and tables["tests"] is None
    assert tables["scores"].endswith("| STS12 | STS | cosine_spearman | 0.5000 |")


def test_a_card_names_the_core_categories_its_results_do_not_cover(tmp_path):
    from poolattn.evaluation.results import unscored_categories

    model = exported(tmp_path / "model", None)
    results = fake_results("me/tiny-v5", {"STS12": 0.5, "ArguAna": 0.3}, {"STS12": "STS", "ArguAna": "Retrieval"})
    assert unscored_categories(results) == ["Classification", "Clustering"]
    card = ModelCard(str(build_model_card(model, repo_id="me/tiny-v5", results=results)))
    assert "Not scored on Classification, Clustering: of the four categories" in card.text
    assert "--categories Classification,Clustering" in card.text
    full = {"STS12": "STS", "ArguAna": "Retrieval", "Banking77Classification": "Classification", "X": "Clustering"}
    covered = fake_results("me/tiny-v5", dict.fromkeys(full, 0.5), full)
    assert "Not scored on" not in ModelCard(str(build_model_card(model, repo_id="me/tiny-v5", results=covered))).text


def test_card_says_whose_step_the_weights_are_when_the_best_checkpoint_was_exported(tmp_path):
    manifest = TrainingManifest(
        variant=5,
        backbone="smollm2-135m",
        global_steps=300,
        stop=records.StopRecord(reason="max_steps", step=300, cap=300, best_step=100, exported_step=100),
    )
    _, body = rendered(exported(tmp_path / "model", manifest))
    assert table_row(body, "steps") == (
        "300; the weights are those of step 100 (the best checkpoint), not of the last step"
    )
    last = TrainingManifest(
        variant=5, backbone="smollm2-135m", global_steps=300, stop=records.StopRecord(reason="max_steps", step=300)
    )
    assert table_row(rendered(exported(tmp_path / "last", last))[1], "steps") == "300"
    early = TrainingManifest(
        variant=5,
        backbone="smollm2-135m",
        global_steps=80,
        stop=records.StopRecord(reason="early_stopping", step=80, cap=300, best_step=40, exported_step=40),
    )
    assert table_row(rendered(exported(tmp_path / "early", early))[1], "steps") == (
        "80, stopped early by the Trainer's early stopping on the held-out metric (of 300 steps planned); the weights "
        "are those of step 40 (the best checkpoint), not of the last step"
    )


def test_card_of_an_untrained_control_does_not_claim_fine_tuning(tmp_path):
    manifest = TrainingManifest(  # as train.py writes a study's step-0 control
        variant=5,
        backbone="smollm2-135m",
        seed=42,
        global_steps=0,
        stop=records.StopRecord(reason="untrained", step=0),
        trainable_parameters=records.TrainableParameters(head=1000, backbone=134_000_000),
    )
    _, body = rendered(exported(tmp_path / "model", manifest))
    assert "Fine-tuned with" not in body and "Not fine-tuned: an untrained control" in body
    assert table_row(body, "loss") == "none (untrained control)" and "| trainable parameters |" not in body


def test_evaluation_means_of_a_peer_lacking_one_of_this_models_tasks_are_left_blank():
    categories = {"STS12": "STS", "STS13": "STS", "Banking77Classification": "Classification"}
    this = fake_results("me/x-v5", {"STS12": 0.5, "STS13": 0.7, "Banking77Classification": 0.6}, categories)
    partial = fake_results("me/x-v1", {"STS12": 0.9, "Banking77Classification": 0.4}, categories)  # no STS13
    assert evaluation_tables(this, [partial])["means"].splitlines()[2:] == [
        "| me/x-v5 (this model) | 0.6000 | 0.6000 |",
        "| me/x-v1 | 0.4000 | — |",  # its STS mean would be over STS12 alone, beside this model's over both
    ]


def test_a_study_section_is_refused_when_the_report_is_older_than_the_results(tmp_path, monkeypatch):
    """The card's study table comes from `report/study_table.csv`; results scored or changed after the report was
    written would show stale means as this model's row, so the section is refused until the report is rewritten."""
    from poolattn.study import card
    from poolattn.study.compare import RowResults
    from poolattn.study.plan import StudyError, StudyRow
    from poolattn.study.report import TEST_COLUMNS

    model = exported(tmp_path / "model", TrainingManifest(variant=5, backbone="smollm2-135m", seed=42))
    row = StudyRow("v5", "5 multi-layers", "variant", 5, model_name="o/m")
    plan = SimpleNamespace(rows=[row], budget=None, backbone="b", train_argv=[], seeds=[42, 43], tuning={}, plateau={})
    now = {"means": {"STS": 0.5}, "runs": [1]}

    def collect(plan, output):
        replicates = SimpleNamespace(category_means=lambda: dict(now["means"]), runs=now["runs"])
        return [RowResults(row, [SimpleNamespace(fingerprint=model.fingerprint)], replicates)]

    monkeypatch.setattr(card, "collect", collect)
    monkeypatch.setattr(card.StudyPlan, "read", classmethod(lambda cls, output: plan))
    report = tmp_path / "study" / "report"
    report.mkdir(parents=True)
    (report / "study_table.csv").write_text(
        "row,label,kind,category,mean,seed sd,seeds,tasks\nv5,5 multi-layers,variant,STS,0.5,,1,5\n"
    )
    (report / "study_tests.csv").write_text(",".join(TEST_COLUMNS) + "\n")
    section = card.card_section(tmp_path / "study", model)
    assert "| **5 multi-layers** | 1 | 0.5000 |" in section  # the seeds scored, beside the 2 planned
    assert "seeds 42, 43 planned" in section and "tuned" not in section  # untuned rows are not called tuned
    plan.tuning, plan.plateau = {"steps": 20}, {"patience": 3}
    assert "own rates tuned on held-out" in card.card_section(tmp_path / "study", model)
    assert "plateau" in card.card_section(tmp_path / "study", model)
    now["runs"] = [1, 2]  # seed 43 scored since the report: its means and seed count are not the report's
    now["means"] = {"STS": 0.6}
    with pytest.raises(StudyError, match="the report is older than the results"):
        card.card_section(tmp_path / "study", model)


def test_a_peer_scored_on_other_data_of_a_task_is_left_out_of_that_tasks_comparison(caplog):
    """A peer scored on another copy of STS12 (its fingerprint differs) was set beside this model on it, and its
    difference tested as the models'; a task both read from the same copy is compared as before."""
    import dataclasses

    categories = {"STS12": "STS", "STS13": "STS"}
    this = fake_results("me/x-v5", {"STS12": 0.5, "STS13": 0.7}, categories)
    this = dataclasses.replace(this, task_data={"STS12": "copy-a", "STS13": "copy-c"})
    peer = fake_results("me/x-v1", {"STS12": 0.3, "STS13": 0.4}, categories)
    peer = dataclasses.replace(peer, task_data={"STS12": "copy-b", "STS13": "copy-c"})
    with caplog.at_level("WARNING"):
        tables = evaluation_tables(this, [peer])
    assert "me/x-v1 | — |" in tables["means"]  # no STS mean over STS13 alone beside this model's two tasks
    assert [row.split(" | ")[:3] for row in tables["tests"].splitlines()[2:]] == [["| me/x-v1", "STS", "1"]]
    assert "STS12 (scored on other data than this model's)" in caplog.text
