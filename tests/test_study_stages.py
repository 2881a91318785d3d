"""The study's stages run on their own: the tuning stage alone (`--tune-only`), and one untrained control per row
(`--controls first`)."""

import json
from pathlib import Path

import pytest
from test_study import SHARED, read_csv, study_arguments

from poolattn import cli, study
from poolattn.evaluation.requests import evaluation_revision
from poolattn.evaluation.results import results_folder
from poolattn.study import progress as study_progress
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
    # what the records say each step cost (the ETA of a resumed study): a run's training and its scoring, read here
    # from the manifests and mteb's result files
    costs = study_progress.recorded_costs(plan, output)
    by_key = {item.row.key: item for item in study.collect(plan, output)}

    def scoring_time(model) -> float:
        revision = evaluation_revision(model.fingerprint, budget=plan.budget, instructions=True)
        result = results_folder(output / "results", model.mteb_name, revision) / "BIOSSES.json"
        return json.loads(result.read_text())["evaluation_time"]

    expected = [model.manifest.train_runtime_s + scoring_time(model) for model in by_key["v2"].models]
    assert costs["training"] == pytest.approx(expected) and len(expected) == 2
    assert costs["control"] == pytest.approx([scoring_time(by_key["v2"].control_models[0])])
    assert (output / "runs" / "v2" / "seed-42" / "step0" / "training_manifest.json").is_file()
    assert not (output / "runs" / "v2" / "seed-43" / "step0").exists()
    per_task = read_csv(output / "report" / "per_task.csv")
    # the one control stands for no seed of its own: set against both seeds of its row, not against seed 42 alone
    assert sorted((row["row"], row["seed"]) for row in per_task) == [("v2", "42"), ("v2", "43"), ("v2-step0", "")]
    tests = read_csv(output / "report" / "study_tests.csv")
    assert {(row["a"], row["b"], row["a seeds"], row["b seeds"]) for row in tests} == {("v2", "v2-step0", "2", "1")}


def test_full_sts_scores_the_best_row_and_its_control_on_every_pair_as_scoring_it_alone_would(
    tiny_backbone_folder, triplets_file, tmp_path, capsys
):
    """`--full-sts`: once every run is scored, the row with the best STS mean on the budget sample, each seed and its
    control, is scored on the study's STS tasks without the budget; those scores equal `evaluate.py run --budget 0`
    of the same model (another path), no other row and no other task is scored so, the report sets the row beside
    its control, and a copy of the records leaves out a model whose full scoring had begun but not finished."""
    from poolattn.evaluation.results import read_results
    from poolattn.evaluation.scoring import evaluate_models
    from poolattn.study import full_sts

    argv = study_arguments(tiny_backbone_folder, triplets_file, tmp_path)
    argv[argv.index("1,2,mean-causal")] = "1,2"
    data = Path(argv[argv.index("--data-dir") + 1])
    (data / "SICK-R").mkdir()  # a second STS task: a full scoring can be begun and not finished
    lines = (SHARED / "SICK-R" / "test.jsonl").read_text().splitlines()[:24]
    (data / "SICK-R" / "test.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit, match="scores every task in full already"):
        cli.run_study_command(["--full-sts", *argv])
    argv[argv.index("--budget") + 1] = "8"
    with pytest.raises(SystemExit, match="its selection has none"):
        cli.run_study_command(["--full-sts", "--tasks", "EmotionClassification", *argv])
    sts = ["BIOSSES", "SICK-R"]
    argv = ["--controls", "first", "--tasks", ",".join([*sts, "EmotionClassification"]), *argv]
    assert cli.run_study_command(argv) == 0  # the study first, then its full STS scoring asked for on a resume
    output = tmp_path / "study"
    # a copy of its records (no weights) cannot score the best row in full: it says so, and the study still ends
    assert cli.run_study_command(["--copy-records", str(output), str(tmp_path / "early")]) == 0
    early = [*argv[: argv.index("--output") + 1], str(tmp_path / "early"), *argv[argv.index("--output") + 2 :]]
    assert cli.run_study_command(["--full-sts", *early]) == 0
    report = (tmp_path / "early" / "report" / "study.md").read_text()
    assert "not scored on the full tasks yet: it is once every row is trained and scored" in report
    argv = ["--full-sts", *argv]
    assert cli.run_study_command(argv) == 0
    plan = study.StudyPlan.read(output)
    trained = {item.row.key: item for item in study.collect(plan, output)}
    sample_means = {key: sum(item.replicates.scores[task] for task in sts) / 2 for key, item in trained.items()}
    best = max(sample_means, key=sample_means.get)
    assert full_sts.best_row(list(trained.values()), sts, 2).row.key == best

    full = {item.row.key: item for item in study.collect(plan.full_sts_plan(), output)}
    assert [key for key, item in full.items() if item.replicates is not None] == [best]
    scored = full[best]
    assert scored.replicates.tasks == sts and scored.replicates.budget is None and len(scored.replicates.runs) == 2
    assert scored.controls is not None and scored.controls.tasks == sts
    alone = evaluate_models(
        [str(scored.models[0].folder)], output=tmp_path / "alone", tasks=sts, data_dir=str(data), budget=None
    )
    assert not alone.failures
    model = scored.models[0]
    revision = evaluation_revision(model.fingerprint, budget=None, instructions=True)
    by_itself = read_results(results_folder(tmp_path / "alone", model.mteb_name, revision)).scores
    assert by_itself == pytest.approx(scored.replicates.runs[0].scores, abs=1e-6)
    sample = trained[best].replicates.runs[0].scores  # the study's own scores: 8 pairs of each task
    assert [by_itself[task] for task in sts] != pytest.approx([sample[task] for task in sts], abs=1e-9)

    report = (output / "report" / "study.md").read_text()
    section = report[report.index("## The best row on the full STS tasks") :]
    assert f"| {scored.row.label} | 2 |" in section and f"| {scored.row.label} · step 0 | 1 |" in section
    assert f"Trained minus untrained, {best}, paired bootstrap" in section

    # records: a model whose full scoring had begun and not finished is left out of the copy, by name
    (results_folder(output / "results", model.mteb_name, revision) / "SICK-R.json").unlink()
    assert cli.run_study_command(["--copy-records", str(output), str(tmp_path / "copy")]) == 0
    printed = capsys.readouterr().out
    assert f"runs/{best}/seed-42/model (full STS tasks: lacks SICK-R)" in printed
    assert (tmp_path / "copy" / "runs" / best / "seed-43" / "model").is_dir()
