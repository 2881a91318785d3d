"""The study's stages run on their own: the tuning stage alone (`--tune-only`), and one untrained control per row
(`--controls first`)."""

import json

import pytest
from test_study import read_csv, study_arguments

from poolattn import cli, study
from poolattn.study import runner as study_runner

pytest.importorskip("mteb")


def test_tune_only_tunes_every_row_and_the_study_then_resumes_from_its_choices(
    tiny_backbone_folder, triplets_file, tmp_path, monkeypatch
):
    """--tune-only runs the tuning stage of every row and stops: tuning.json holds each row's choice, nothing is
    trained for the table or scored; the same command without it then trains with those choices and trains no proxy
    again. The runs' length and checkpoints in the training flags (--max_steps 2, --save_steps 2) are theirs: each
    proxy trains its own steps of them (they were refused as flags the proxy sets, after the plan was accepted)."""
    from poolattn.study import tuning

    argv = study_arguments(tiny_backbone_folder, triplets_file, tmp_path)  # the runs: --max_steps 2, --save_steps 2
    argv[argv.index("--designs") + 1], argv[argv.index("--seeds") + 1] = "1,2", "1"
    rate = argv.index("--learning_rate")  # the tuning sets it
    del argv[rate : rate + 2]
    grid = ["--tune-learning-rates", "1e-3", "--tune-head-learning-rates", "1e-3", "--tune-steps", "2"]
    grid += ["--tune-eval-steps", "1", "--tune-extend", "0", "--held-out-fraction", "0.34"]
    grid += ["--held-out-batch-size", "4"]
    argv = ["--tune", *grid, *argv]
    output = tmp_path / "study"
    with pytest.raises(SystemExit, match="give --tune"):
        cli.run_study_command(["--tune-only", *(item for item in argv if item != "--tune")])
    assert cli.run_study_command(["--tune-only", *argv]) == 0
    tuned = tuning.read_tuning(output)
    assert sorted(tuned) == ["v1", "v2"] and all(row.choice is not None for row in tuned.values())
    assert not (output / "runs").exists() and not (output / "results").exists() and not (output / "report").exists()

    def no_proxy(*args):
        raise AssertionError("a proxy was trained again after --tune-only")

    monkeypatch.setattr(tuning, "_tuning_point", no_proxy)
    points = {key: len(row.points) for key, row in tuned.items()}
    assert cli.run_study_command(argv) == 0
    assert {key: len(row.points) for key, row in tuning.read_tuning(output).items()} == points
    for key, head in (("v1", None), ("v2", 1e-3)):  # the tuned rates (train.py's default rate is not 1e-3)
        manifest = json.loads((output / "runs" / key / "seed-42" / "model" / "training_manifest.json").read_text())
        assert (manifest["settings"]["learning_rate"], manifest["settings"]["head_learning_rate"]) == (1e-3, head)
    assert (output / "report" / "study.md").is_file()


def test_controls_of_the_first_seed_only_give_each_row_one_control(tiny_backbone_folder, triplets_file, tmp_path):
    """`--controls first`: a row with a head of its own (its control differs by seed) is scored untrained for the first
    seed only; the report still sets the row against its control, and the progress counts one control per row."""
    argv = study_arguments(tiny_backbone_folder, triplets_file, tmp_path)
    argv[argv.index("1,2,mean-causal")] = "2"
    with pytest.raises(SystemExit, match="--controls second: give all or first"):
        cli.run_study_command(["--controls", "second", *argv])
    argv = ["--controls", "first", "--tasks", "BIOSSES", *argv]
    assert cli.run_study_command(argv) == 0
    output = tmp_path / "study"
    plan = study.StudyPlan.read(output)
    assert (plan.controls, plan.control_seeds, plan.seeds) == (True, "first", [42, 43])
    assert study_runner.StudyProgress(plan).total == 1 + 2  # one control, two runs
    assert (output / "runs" / "v2" / "seed-42" / "step0" / "training_manifest.json").is_file()
    assert not (output / "runs" / "v2" / "seed-43" / "step0").exists()
    per_task = read_csv(output / "report" / "per_task.csv")
    # the one control stands for no seed of its own: set against both seeds of its row, not against seed 42 alone
    assert sorted((row["row"], row["seed"]) for row in per_task) == [("v2", "42"), ("v2", "43"), ("v2-step0", "")]
    tests = read_csv(output / "report" / "study_tests.csv")
    assert {(row["a"], row["b"], row["a seeds"], row["b seeds"]) for row in tests} == {("v2", "v2-step0", "2", "1")}
