"""The exported model's record: manifest round trips, the previous release's manifest, and naming exported folders."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import tiny_model

from poolattn.manifest import SCHEMA_VERSION, TrainingManifest
from poolattn.model_folder import ExportedModel
from poolattn.records import ContrastiveBatch, DataRecord, ManifestError, TrainableParameters, TrainingSettings

RELEASE_0_1_0 = Path(__file__).parent / "fixtures" / "training_manifest_poolattn_0.1.0.json"


def full_manifest() -> TrainingManifest:
    return TrainingManifest(
        variant=5,
        backbone="smollm2-135m",
        model_name="me/model",
        seed=7,
        data=DataRecord(
            source="data.jsonl",
            files=["data.jsonl"],
            examples=12,
            hard_negatives=True,
            query_instruction="Find the passage",
        ),
        settings=TrainingSettings(
            learning_rate=2e-4,
            lr_scheduler_type="linear",
            warmup_steps=3,
            optimizer="adamw",
            temperature=0.05,
            query_max_length=64,
            document_max_length=128,
            precision="float32",
            lora_r=4,
            lora_alpha=8,
            lora_dropout=0.1,
            lora_target_modules="q_proj",
        ),
        contrastive_batch=ContrastiveBatch.of_run(
            per_device_batch=4, world_size=2, negatives_per_query=1, gather=True, gradcache_chunk_size=2
        ),
        trainable_parameters=TrainableParameters(lora=10, head=20),
        global_steps=3,
        train_runtime_s=1.5,
        loss_history=[[1, 2.5], [2, 2.0]],
        libraries={"torch": "2"},
        poolattn_config={"variant": 5},
        hyperparameters={"lora_r": 4},
    )


def test_a_manifest_round_trips_through_its_file_with_unknown_fields_kept(tmp_path):
    manifest = full_manifest()
    manifest.write(tmp_path)
    assert TrainingManifest.read(tmp_path) == manifest
    # A later release adds fields, top-level and nested: this release keeps them when it rewrites the file.
    written = json.loads((tmp_path / "training_manifest.json").read_text())
    written["mixture"] = {"snli": 0.5}
    written["data"]["mined_with"] = ["minilm", "bm25"]
    (tmp_path / "training_manifest.json").write_text(json.dumps(written))
    reread = TrainingManifest.read(tmp_path)
    assert reread.extra == {"mixture": {"snli": 0.5}} and reread.data.extra == {"mined_with": ["minilm", "bm25"]}
    (tmp_path / "again").mkdir()
    reread.write(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "training_manifest.json").read_text()) == written
    assert reread.contrastive_batch.candidates_per_query == 16 and reread.data.query_prompt == (
        "Instruct: Find the passage\nQuery: "
    )


def test_the_manifest_written_by_poolattn_0_1_0_still_reads():
    raw = json.loads(RELEASE_0_1_0.read_text())
    manifest = TrainingManifest.from_dict(raw)
    assert "schema_version" not in raw and manifest.schema_version == SCHEMA_VERSION
    assert manifest.variant == raw["variant"] == 5 and manifest.global_steps == raw["global_steps"]
    assert manifest.data.query_instruction == raw["data"]["query_instruction"] == "Find the passage"
    assert manifest.losses == [loss for _, loss in raw["loss_history"]]
    # the typed settings are derived from the raw arguments that release recorded
    hp = raw["hyperparameters"]
    assert (manifest.settings.learning_rate, manifest.settings.lora_r, manifest.settings.temperature) == (
        hp["learning_rate"],
        hp["lora_r"],
        hp["temperature"],
    )
    assert manifest.contrastive_batch.queries_per_loss_call == raw["contrastive_batch"]["queries_per_loss_call"]
    assert manifest.contrastive_batch.gradcache_chunk_size == (hp["gradcache_chunk_size"] or 0)
    assert manifest.export_check.max_abs_difference == raw["export_check"]["max_abs_difference"]
    assert manifest.extra == {}  # every field of that release has a typed home


def test_unreadable_manifests_say_what_is_wrong(tmp_path):
    (tmp_path / "training_manifest.json").write_text(
        json.dumps({"schema_version": SCHEMA_VERSION + 1, "backbone": "x"})
    )
    with pytest.raises(ManifestError, match="newer than this poolattn reads.*upgrade poolattn"):
        TrainingManifest.read(tmp_path)
    (tmp_path / "training_manifest.json").write_text(json.dumps({"variant": 5}))
    with pytest.raises(ManifestError, match="training_manifest.json: .*backbone"):
        TrainingManifest.read(tmp_path)
    (tmp_path / "training_manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="training_manifest.json"):
        TrainingManifest.read(tmp_path)


def test_exported_folders_are_named_from_their_manifest_else_their_folder(tmp_path):
    for variant in (1, 5):
        tiny_model("llama", variant).save_pretrained(tmp_path / f"v{variant}" / "run" / "model")
    one, five = (ExportedModel.read(tmp_path / f"v{v}" / "run" / "model") for v in (1, 5))
    assert one.manifest is None and one.mteb_name == five.mteb_name == "poolattn/run"
    assert one.fingerprint != five.fingerprint  # two variants never share an mteb cache entry
    shutil.copy(RELEASE_0_1_0, tmp_path / "v5" / "run" / "model" / "training_manifest.json")
    named = ExportedModel.read(tmp_path / "v5" / "run" / "model")
    assert named.mteb_name == f"poolattn/{Path(named.manifest.backbone).name}-v5"
    assert named.query_prompt == "Instruct: Find the passage\nQuery: "
    assert named.parameters["total"] > named.parameters["head"] > 0
    with pytest.raises(ValueError, match="not a poolattn model folder"):
        ExportedModel.read(tmp_path)


def test_runs_on_edited_data_or_other_held_out_rows_are_not_replicates():
    """The recipe fingerprint groups runs as seeds of one recipe (`evaluate.py compare`, the bootstrap): it left out
    the training data's content and `--eval_fraction` (an `eval_` flag), so seed 1 before an edit of train.jsonl and
    seed 2 after it were averaged as two seeds of one model, exit 0."""
    import dataclasses

    one = TrainingManifest(
        variant=5,
        backbone="b",
        seed=42,
        hyperparameters={"learning_rate": 1e-4, "eval_fraction": 0.01, "eval_steps": 20},
        data=DataRecord(source="train.jsonl", fingerprint="aaaa"),
    )
    seed = dataclasses.replace(one, seed=43, hyperparameters={**one.hyperparameters, "eval_steps": 40})
    assert seed.recipe_fingerprint() == one.recipe_fingerprint()  # another seed, another logging cadence
    edited = dataclasses.replace(one, seed=43, data=DataRecord(source="train.jsonl", fingerprint="bbbb"))
    held_out = dataclasses.replace(one, seed=43, hyperparameters={**one.hyperparameters, "eval_fraction": 0.05})
    assert one.recipe_fingerprint() not in (edited.recipe_fingerprint(), held_out.recipe_fingerprint())
