"""Ablations (poolattn.study.ablation, `python ablate.py`): every arm builds the config it names, and a tiny sweep (a
study of variant 5 and its arms) trains, scores, compares and resumes."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_text_config

from poolattn import PoolAttnConfig, PoolAttnEmbeddingModel, cli, study
from poolattn.modeling_poolattn import HierarchicalLatentPooler, LatentPooler
from poolattn.study import ablation

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def arm_model(overrides: dict) -> PoolAttnEmbeddingModel:
    torch.manual_seed(0)
    text_config = tiny_text_config("llama", num_hidden_layers=12)
    return PoolAttnEmbeddingModel(PoolAttnConfig.from_variant(5, text_config, num_latents=4, **overrides)).eval()


@pytest.mark.parametrize(
    "arm, layers",
    [("last_1", [12]), ("last_2", [11, 12]), ("last_4", [9, 10, 11, 12]), ("last_8", list(range(5, 13)))],
)
def test_layer_count_arms_feed_that_many_layers_to_the_head(arm, layers):
    model = arm_model(ablation.arms("layer_count")[arm])
    assert model.config.layer_indices == layers and model.pooler.layer_weights.shape == (len(layers), 32)
    ids = torch.tensor([[5, 6, 7, 2]])
    assert model(input_ids=ids).layer_summaries.shape == (1, len(layers), 32)


def test_layer_subset_weights_and_head_attention_arms():
    subset = ablation.arms("layer_subset")
    assert arm_model(subset[ablation.BASE_ARM]).config.layer_indices == list(range(1, 13))
    assert arm_model(subset["middle_4"]).config.layer_indices == [5, 6, 7, 8]
    base = arm_model({})
    off = arm_model(ablation.arms("layer_weights")["weights_off"])
    assert base.pooler.layer_weights is not None and off.pooler.layer_weights is None
    assert not any("layer_weights" in name for name, _ in off.named_parameters())
    paper_init = arm_model(ablation.arms("layer_weights")["weights_paper_init"])
    assert torch.equal(base.pooler.layer_weights, torch.zeros(12, 32))  # ours: a no-op start
    assert 0.85 < paper_init.pooler.layer_weights.std() < 1.15  # the paper's nn.Embedding: normal(0, 1), 384 draws
    fast = arm_model(ablation.arms("layer_weights")["weights_x100"])
    assert fast.pooler.layer_weights_multiplier == 100.0 and torch.equal(
        fast.pooler.layer_weights, torch.zeros(12, 32)
    )
    heads = ablation.arms("head_attention")
    single, hierarchical = arm_model(heads["single"]), arm_model(heads["hierarchical"])
    assert isinstance(base.pooler, LatentPooler) and base.pooler.num_heads == 4
    assert single.pooler.num_heads == 1 and single.pooler.head_dim == 32
    assert isinstance(hierarchical.pooler, HierarchicalLatentPooler) and hierarchical.pooler.group_size == 4


def test_all_trains_each_distinct_arm_once():
    everything = ablation.arms("all")
    assert list(everything)[0] == ablation.BASE_ARM and len(everything) == 11
    keys = [json.dumps(overrides, sort_keys=True) for overrides in everything.values()]
    assert len(set(keys)) == len(keys)  # last 4 appears in two ablations, trained once
    with pytest.raises(ValueError, match="Allowed values: layer_count"):
        ablation.arms("layer_counts")


def tiny_sweep_arguments(backbone_folder: str, triplets_file: str, tmp_path: Path) -> list[str]:
    """ablate.py arguments: the base and two layer_weights arms, 2 steps each, scored on a 30-row copy of BIOSSES."""
    (tmp_path / "data" / "BIOSSES").mkdir(parents=True)
    lines = (SHARED / "BIOSSES" / "test.jsonl").read_text().splitlines()[:30]
    (tmp_path / "data" / "BIOSSES" / "test.jsonl").write_text("\n".join(lines) + "\n")
    return [
        "--ablation",
        "layer_weights:weights_off,layer_weights:weights_paper_init",
        "--tasks",
        "BIOSSES",
        "--data-dir",
        str(tmp_path / "data"),
        "--output",
        str(tmp_path / "sweep"),
        "--",
        "--backbone",
        backbone_folder,
        "--train_data",
        triplets_file,
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--save_steps",
        "2",
        "--use_cpu",
        "true",
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
    ]


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


SWEEP_ROWS = {"v5": "base", "arm-weights_off": "weights_off", "arm-weights_paper_init": "weights_paper_init"}


def test_a_tiny_sweep_writes_the_comparison_and_resumes_without_retraining(
    tiny_backbone_folder, triplets_file, tmp_path, monkeypatch
):
    """ablate.py is a study of the base variant and its arms: one layout (`runs/<row>/seed-<S>/`), one report."""
    pytest.importorskip("mteb")
    argv = tiny_sweep_arguments(tiny_backbone_folder, triplets_file, tmp_path)
    assert cli.ablate(argv) == 0
    sweep = tmp_path / "sweep"
    plan = study.StudyPlan.read(sweep)
    assert [row.key for row in plan.rows] == list(SWEEP_ROWS) and plan.seeds == [42]
    report = (sweep / "report" / "study.md").read_text()
    name = Path(tiny_backbone_folder).name
    base, off = f"poolattn/{name}-v5", f"poolattn/{name}-v5-weights-off"
    for arm in ("weights_off", "weights_paper_init"):
        assert f"| arm-{arm} vs v5 | ablation: {arm} vs the base arm (v5) |" in report
    tests = read_csv(sweep / "report" / "study_tests.csv")
    assert {(row["a"], row["b"], row["category"]) for row in tests} == {
        ("arm-weights_off", "v5", "STS"),
        ("arm-weights_paper_init", "v5", "STS"),
    }
    assert {row["task"] for row in read_csv(sweep / "report" / "per_task.csv")} == {"BIOSSES"}
    manifests = [
        json.loads((sweep / "runs" / row / "seed-42" / "model" / "training_manifest.json").read_text())
        for row in ("v5", "arm-weights_off")
    ]
    assert [m["model_name"] for m in manifests] == [base, off]
    assert manifests[1]["poolattn_config"]["layer_weights"] is False
    assert (sweep / "report" / "study_ablation.png").stat().st_size > 0
    assert manifests[0]["data"] == manifests[1]["data"] and manifests[0]["seed"] == manifests[1]["seed"]

    import shutil

    from safetensors.torch import load_file

    from poolattn.training import runner

    # Interrupted after its last checkpoint, before the export: the arm resumes from checkpoint-2 and exports the same.
    model = sweep / "runs" / "arm-weights_off" / "seed-42" / "model"
    exported = load_file(model / "model.safetensors")
    shutil.rmtree(model)
    assert cli.ablate(argv) == 0
    for key, value in load_file(model / "model.safetensors").items():
        torch.testing.assert_close(value, exported[key], rtol=0, atol=1e-6)

    scored = sorted((sweep / "results").rglob("BIOSSES.json"))
    assert len(scored) == 3  # base, weights_off, weights_paper_init
    stamps = [path.stat().st_mtime_ns for path in scored]
    monkeypatch.setattr(runner, "train_variant", lambda *args, **kw: pytest.fail("a finished arm was retrained"))
    assert cli.ablate(argv) == 0  # resumed: nothing retrained ...
    assert [path.stat().st_mtime_ns for path in scored] == stamps  # ... and no finished task re-scored

    monkeypatch.undo()
    # A finished run is kept only when it is this row's: the arms of another base in the same folder were reported
    # as this base's, and runs trained on the data before an edit as replicates of runs after it (both exit 0).
    with pytest.raises(SystemExit, match=r"arm-weights_off/seed-42/model is a finished run .*variant: 5 there, 3 now"):
        cli.ablate([*argv[:6], "--base-variant", "3", *argv[6:]])
    Path(triplets_file).write_text(Path(triplets_file).read_text().replace("a", "b", 1))
    with pytest.raises(SystemExit, match=r"finished run trained with other settings .*data_fingerprint"):
        cli.ablate(argv)


def test_the_ablate_door_and_the_study_plan_the_same_rows(tiny_backbone_folder, triplets_file, tmp_path):
    """`ablate.py --ablation X` and `study.py --designs 5 --ablation X --seeds 1` plan the same study."""
    argv = tiny_sweep_arguments(tiny_backbone_folder, triplets_file, tmp_path)
    split = argv.index("--")
    own, train_argv = argv[:split], argv[split + 1 :]
    common = dict(
        ablation="layer_weights:weights_off,layer_weights:weights_paper_init",
        seeds=1,
        train_argv=train_argv,
        tasks=["BIOSSES"],
    )
    door = study.plan_study(designs="5", **common)
    assert [(row.key, row.variant, row.overrides) for row in door.rows] == [
        ("v5", 5, {}),
        ("arm-weights_off", 5, {"layer_weights": False}),
        ("arm-weights_paper_init", 5, {"layer_weights_init_std": 1.0}),
    ]
    causal = study.plan_study(designs="3", ablation_base=3, **{**common, "ablation": "layer_count:last_2"})
    assert [(row.key, row.variant) for row in causal.rows] == [("v3", 3), ("arm-last_2", 3)]
    assert causal.ablation_base == "v3" and study.comparisons(causal)[-1][:2] == ("arm-last_2", "v3")
    with pytest.raises(study.StudyError, match="--base-variant 4"):
        study.plan_study(designs="4", ablation_base=4, **common)
    assert own[own.index("--ablation") + 1] == "layer_weights:weights_off,layer_weights:weights_paper_init"


def test_a_sweep_under_torchrun_trains_every_arm_on_both_ranks_and_exits_cleanly(
    tiny_backbone_folder, triplets_file, tmp_path
):
    # One training run per arm in the same 2 processes: the process group must outlive each arm's run, and the
    # processes must still exit with 0 (gloo aborts an exit that skips the barrier and destroy_process_group).
    pytest.importorskip("mteb")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "ablate.py"),
        *tiny_sweep_arguments(tiny_backbone_folder, triplets_file, tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    for row in SWEEP_ROWS:
        manifest = json.loads(
            (tmp_path / "sweep" / "runs" / row / "seed-42" / "model" / "training_manifest.json").read_text()
        )
        assert manifest["contrastive_batch"]["world_size"] == 2 and manifest["global_steps"] == 2, row
    tests = read_csv(tmp_path / "sweep" / "report" / "study_tests.csv")
    assert sorted(row["a"] for row in tests) == ["arm-weights_off", "arm-weights_paper_init"]  # each vs the base


def test_a_plain_run_a_study_row_and_an_ablation_base_arm_are_one_run_folder(
    tiny_backbone_folder, triplets_file, tmp_path
):
    """The same settings through the three doors (train.py, study.py, ablate.py) are one `TrainingJob`: the same
    weights, config and recipe in each run folder."""
    pytest.importorskip("mteb")
    from safetensors.torch import load_file

    from poolattn import training
    from poolattn.model_folder import ExportedModel

    argv = tiny_sweep_arguments(tiny_backbone_folder, triplets_file, tmp_path)
    split = argv.index("--")
    own, train_argv = argv[:split], argv[split + 1 :]
    scoring = own[own.index("--tasks") : own.index("--output")]  # the same task copy for the study and the sweep
    name = f"poolattn/{Path(tiny_backbone_folder).name}-v5"
    plain = training.main(
        [*train_argv, "--variant", "5", "--output_dir", str(tmp_path / "plain"), "--model_name", name]
    )
    assert (
        cli.run_study_command(
            ["--designs", "5", "--seeds", "1", *scoring, "--output", str(tmp_path / "study"), "--", *train_argv]
        )
        == 0
    )
    assert (
        cli.ablate(
            [
                "--ablation",
                "layer_weights:weights_off",
                *scoring,
                "--output",
                str(tmp_path / "sweep"),
                "--",
                *train_argv,
            ]
        )
        == 0
    )
    folders = [plain[0], *(tmp_path / where / "runs" / "v5" / "seed-42" / "model" for where in ("study", "sweep"))]
    models = [ExportedModel.read(folder) for folder in folders]
    assert {model.fingerprint for model in models} == {models[0].fingerprint}
    assert {model.manifest.recipe_fingerprint() for model in models} == {models[0].manifest.recipe_fingerprint()}
    expected = load_file(folders[0] / "model.safetensors")
    for folder in folders[1:]:
        for key, value in load_file(folder / "model.safetensors").items():
            torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
