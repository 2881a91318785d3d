"""Seeds as replicates: several seeds per variant or arm (`train.py --seeds`, `ablate.py --seeds`), trained resumably
into their own folders, grouped per model (never across models) by `compare`, and tested over units and seeds."""

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_ablate import tiny_sweep_arguments
from test_training import TINY_RUN

from poolattn import cli, training
from poolattn.evaluation.paired import Units, paired_bootstrap, replicated_bootstrap
from poolattn.evaluation.replicates import SeedReplicates, group_replicates
from poolattn.evaluation.results import ModelResults, TaskInfo, TrainingOrigin, read_runs
from poolattn.manifest import TrainingManifest
from poolattn.model_folder import ExportedModel

# -- the bootstrap over units and seeds ------------------------------------------------------------------------------


def mean_units(count: int) -> Units:
    return Units(count, lambda values, sample: float(np.asarray(values)[sample].mean()))


def test_one_seed_each_is_the_paired_bootstrap_exactly():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.5, 0.2, 200), rng.normal(0.48, 0.2, 200)
    plain = paired_bootstrap(mean_units(200), a, b, resamples=500)
    replicated = replicated_bootstrap(mean_units(200), [a], [b], resamples=500)
    assert (plain.low, plain.high, plain.p_value) == (replicated.low, replicated.high, replicated.p_value)


def test_seed_noise_widens_the_interval_and_matched_seeds_remove_shared_noise():
    base = np.linspace(0.2, 0.8, 50)
    # Units add nothing (every model is base + a constant), so only the seed draws move the difference.
    a_seeds, b_flat = [base + 0.1, base + 0.3], [base, base]
    test = replicated_bootstrap(mean_units(50), a_seeds, b_flat, resamples=999)
    # by hand: a's mean over two drawn seeds is 0.1, 0.2 or 0.3 (p = 1/4, 1/2, 1/4); b's is 0
    assert test.difference == pytest.approx(0.2) and (test.seeds_a, test.seeds_b) == (2, 2)
    assert test.low == pytest.approx(0.1) and test.high == pytest.approx(0.3)
    assert test.p_value == pytest.approx(1 / 1000)  # no resample comes near the null
    # b's seeds move like a's (seed 1 is 0.2 above seed 0 for both): matched seeds see a constant 0.1
    b_seeds = [base, base + 0.2]
    matched = replicated_bootstrap(mean_units(50), a_seeds, b_seeds, paired_seeds=True, resamples=999)
    unmatched = replicated_bootstrap(mean_units(50), a_seeds, b_seeds, resamples=999)
    assert matched.low == pytest.approx(0.1) == matched.high and matched.paired_seeds
    assert unmatched.high - unmatched.low == pytest.approx(0.4)  # from -0.1 to 0.3: the seeds' noise, unshared
    with pytest.raises(ValueError, match="as many runs"):
        replicated_bootstrap(mean_units(50), a_seeds, [base], paired_seeds=True)


# -- grouping results into seed replicates ---------------------------------------------------------------------------


def run(name: str, revision: str, scores: dict, origin: TrainingOrigin | None, data_dir="data") -> ModelResults:
    """A `ModelResults` over stand-ins for mteb's `TaskResult`s (what grouping and tables read)."""
    task_results = [
        SimpleNamespace(task_name=task, get_score=lambda score=score: score) for task, score in scores.items()
    ]
    kinds = {"STS12": "STS", "STS13": "STS", "ArguAna": "Retrieval"}
    recorded = {task: TaskInfo(task, kinds[task], "main", f"local/{task}", local=True) for task in scores}
    return ModelResults(
        name,
        revision,
        Path(revision),
        task_results,
        recorded_tasks=recorded,
        budget=100,
        data_dir=data_dir,
        origin=origin,
    )


def test_seeds_of_one_model_are_grouped_and_never_mixed_with_another_models():
    runs = [
        run("o/v5", "r1", {"STS12": 0.5, "STS13": 0.7}, TrainingOrigin(43, "recipe5")),
        run("o/v1", "r2", {"STS12": 0.4, "STS13": 0.6}, TrainingOrigin(42, "recipe1")),
        run("o/v5", "r3", {"STS12": 0.6, "STS13": 0.8}, TrainingOrigin(42, "recipe5")),
        run("o/v1", "r4", {"STS12": 0.45, "STS13": 0.7}, TrainingOrigin(43, "recipe1")),
    ]
    groups, notes = group_replicates(runs)
    assert not notes and [group.label for group in groups] == ["o/v5", "o/v1"]
    v5, v1 = groups
    assert [r.revision for r in v5.runs] == ["r3", "r1"] and v5.seeds == [42, 43]  # sorted by seed
    assert [r.revision for r in v1.runs] == ["r2", "r4"]
    assert v5.scores == pytest.approx({"STS12": 0.55, "STS13": 0.75})
    assert v5.spread("STS12") == pytest.approx(np.std([0.5, 0.6], ddof=1))
    assert v1.category_means() == pytest.approx({"STS": (0.4 + 0.6 + 0.45 + 0.7) / 4})
    # the seed spread of a category: the sd over seeds of each seed's category mean (0.5 and 0.575)
    assert v1.category_spread()["STS"] == pytest.approx(np.std([0.5, 0.575], ddof=1))


def test_runs_that_are_not_replicates_stay_apart_by_revision_or_recipe():
    baseline = run("local/minilm", "b", {"STS12": 0.7}, None)
    other_recipe = [
        run("o/v5", "r1", {"STS12": 0.5}, TrainingOrigin(42, "recipeA")),
        run("o/v5", "r2", {"STS12": 0.6}, TrainingOrigin(43, "recipeA")),
        run("o/v5", "r3", {"STS12": 0.9}, TrainingOrigin(42, "recipeB")),
    ]
    groups, notes = group_replicates([baseline, *other_recipe])
    assert [group.label for group in groups] == ["local/minilm", "o/v5 (recipe recipeA)", "o/v5 (r3)"]
    assert [len(group.runs) for group in groups] == [1, 2, 1] and "2 different recipes" in notes[0]
    repeated = [
        run("o/v5", "r1", {"STS12": 0.5}, TrainingOrigin(42, "x")),
        run("o/v5", "r2", {"STS12": 0.6}, TrainingOrigin(42, "x")),
    ]
    groups, notes = group_replicates(repeated)
    assert [group.label for group in groups] == ["o/v5 (r1)", "o/v5 (r2)"] and "share seeds [42, 42]" in notes[0]
    other_data = [
        run("o/v5", "r1", {"STS12": 0.5}, TrainingOrigin(42, "x"), data_dir="a"),
        run("o/v5", "r2", {"STS12": 0.6}, TrainingOrigin(43, "x"), data_dir="b"),
    ]
    assert [len(group.runs) for group in group_replicates(other_data)[0]] == [1, 1]


def test_a_task_some_seeds_missed_is_left_out_of_the_means_and_named():
    group = SeedReplicates(
        "o/v5",
        [
            run("o/v5", "r1", {"STS12": 0.5, "STS13": 0.7}, TrainingOrigin(42, "x")),
            run("o/v5", "r2", {"STS12": 0.6}, TrainingOrigin(43, "x")),
        ],
    )
    assert group.tasks == ["STS12"] and group.category_means() == pytest.approx({"STS": 0.55})
    assert group.left_out == {"STS13": "scored by 1 of 2 seeds"}


# -- train.py --variant 1,5 --seeds 2 --------------------------------------------------------------------------------


def test_variants_times_seeds_train_into_their_own_folders_and_resume_as_a_job(
    tiny_backbone_folder, triplets_file, tmp_path, monkeypatch
):
    argv = [
        "--variant",
        "1,5",
        "--seeds",
        "2",
        "--backbone",
        tiny_backbone_folder,
        "--train_data",
        triplets_file,
        *TINY_RUN,
        "--output_dir",
        str(tmp_path / "job"),
    ]
    exported = training.main(argv)
    assert [path.relative_to(tmp_path / "job").as_posix() for path in exported] == [
        "v1/seed-42/model",
        "v1/seed-43/model",
        "v5/seed-42/model",
        "v5/seed-43/model",
    ]
    manifests = [TrainingManifest.read(path) for path in exported]
    assert [(m.variant, m.seed) for m in manifests] == [(1, 42), (1, 43), (5, 42), (5, 43)]
    names = [ExportedModel.read(path).mteb_name for path in exported]
    assert names[0] == names[1] != names[2] == names[3]  # one name per variant: its seeds group under it
    recipes = [m.recipe_fingerprint() for m in manifests]
    assert recipes[0] == recipes[1] != recipes[2] == recipes[3]
    fingerprints = {ExportedModel.read(path).fingerprint for path in exported}
    assert len(fingerprints) == 4  # four sets of weights: four cache entries

    # The job interrupted: one run lost its export, another never started past checkpoint-2 (a third checkpoint,
    # killed while being written, holds no trainer state). Resuming retrains exactly those two, to the same weights.
    from safetensors.torch import load_file

    expected = {path: load_file(path / "model.safetensors") for path in exported}
    import shutil

    shutil.rmtree(exported[1])
    shutil.rmtree(exported[2])
    shutil.rmtree(exported[2].parent / "checkpoint-4")
    (exported[2].parent / "checkpoint-4").mkdir()
    (exported[2].parent / "checkpoint-4" / "adapter_model.safetensors").write_bytes(b"partial")
    from poolattn.training import runner

    trained = []
    original = runner.train_variant
    monkeypatch.setattr(
        runner,
        "train_variant",
        lambda variant, *rest, **options: (
            trained.append((variant, rest[2].seed)) or original(variant, *rest, **options)
        ),
    )
    again = training.main([*argv, "--resume_from_checkpoint", "true"])
    assert again == exported and trained == [(1, 43), (5, 42)]
    for path in (exported[1], exported[2]):
        for key, value in load_file(path / "model.safetensors").items():
            np.testing.assert_allclose(value.numpy(), expected[path][key].numpy(), rtol=0, atol=1e-6, err_msg=key)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--seeds", "0"], "--seeds 0"),
        (["--variant", "1,1"], "each once"),
        (["--variant", "6"], "Allowed values"),
        (["--variant", "1,5", "--resume_from_checkpoint", "out/checkpoint-2"], "names one checkpoint"),
        (["--seeds", "2", "--hub_model_id", "o/n", "--hub_dry_run", "hub"], "a Hub repository holds one model"),
    ],
)
def test_bad_seed_and_variant_flags_are_refused_before_training(flags, message, triplets_file, tmp_path):
    with pytest.raises(ValueError, match=message):
        training.main(["--train_data", triplets_file, "--output_dir", str(tmp_path / "out"), *flags])
    assert not (tmp_path / "out").exists()


# -- ablate.py --seeds 2: grouped in the comparison ------------------------------------------------------------------


def test_an_ablation_with_two_seeds_compares_arms_over_their_seeds(tiny_backbone_folder, triplets_file, tmp_path):
    pytest.importorskip("mteb")
    argv = tiny_sweep_arguments(tiny_backbone_folder, triplets_file, tmp_path)
    argv[argv.index("--ablation") + 1] = "layer_weights:weights_off,layer_weights:weights_paper_init"
    assert cli.ablate([*argv[: argv.index("--")], "--seeds", "2", *argv[argv.index("--") :]]) == 0
    sweep = tmp_path / "sweep"
    arms = {
        row: [ExportedModel.read(sweep / "runs" / row / f"seed-{seed}" / "model") for seed in (42, 43)]
        for row in ("v5", "arm-weights_off", "arm-weights_paper_init")
    }
    with (sweep / "report" / "per_task.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6  # 3 arms x 2 seeds x BIOSSES
    results = sweep / "results" / "results"
    for row, models in arms.items():  # each arm's entries hold exactly its own seeds' weights
        own = sorted((item["seed"], float(item["score"])) for item in rows if item["row"] == row)
        scored = [
            read_runs(results / model.mteb_name.replace("/", "__") / f"{model.fingerprint}-budget100")[0]
            for model in models
        ]
        assert own == [(str(seed), pytest.approx(run.scores["BIOSSES"])) for seed, run in zip((42, 43), scored)]
    with (sweep / "report" / "study_table.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert {(item["row"], item["seeds"]) for item in table} == {(row, "2") for row in arms}
    with (sweep / "report" / "study_tests.csv").open() as handle:
        tests = list(csv.DictReader(handle))
    assert len(tests) == 2 and {(t["a seeds"], t["b seeds"]) for t in tests} == {("2", "2")}
    # compare given the model folders (each holding its seeds' revisions) groups them the same way
    name = Path(tiny_backbone_folder).name
    folders = sorted(results.iterdir())
    assert (
        cli.evaluate(
            ["compare", *map(str, folders), "--output", str(tmp_path / "again"), "--baseline", f"poolattn/{name}-v5"]
        )
        == 0
    )
    with (tmp_path / "again" / "paired_tests.csv").open() as handle:
        again = list(csv.DictReader(handle))
    assert len(again) == 2 and {(t["model seeds"], t["baseline seeds"]) for t in again} == {("2", "2")}
    settings = json.loads((folders[0] / f"{arms['v5'][0].fingerprint}-budget100" / "poolattn_run.json").read_text())
    assert settings["training"] == {"seed": 42, "recipe": arms["v5"][0].manifest.recipe_fingerprint()}
