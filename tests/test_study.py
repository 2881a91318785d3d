"""The study (poolattn.study, `python study.py`): a tiny end-to-end study trains every row with its seeds, scores it on
three categories, writes the report whose markers come from the tests it names, and resumes without retraining."""

import csv
import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import tiny_model

from poolattn import cli, study, training
from poolattn.evaluation.pairing import paired_tests
from poolattn.evaluation.requests import evaluation_revision
from poolattn.evaluation.results import read_runs
from poolattn.stats import holm_adjust
from poolattn.study import report as study_report
from poolattn.study import runner as study_runner
from poolattn.study.plateau import PlateauSettings
from poolattn.study.tuning import TuningGrid
from poolattn.training import runner

mteb = pytest.importorskip("mteb")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny_suite(folder: Path) -> Path:
    """STS (BIOSSES, 30 pairs), Classification (Emotion: 240 training texts, 40 test texts) and Clustering (one
    TwentyNewsgroups set of 60 texts): copies under their mteb names, three categories in seconds."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    (folder / "BIOSSES").mkdir(parents=True)
    (folder / "BIOSSES" / "test.jsonl").write_text(
        "\n".join((SHARED / "BIOSSES" / "test.jsonl").read_text().splitlines()[:30]) + "\n"
    )
    (folder / "EmotionClassification").mkdir()
    for split, count in (("train", 240), ("test", 40)):
        lines = (SHARED / "EmotionClassification" / f"{split}.jsonl").read_text().splitlines()[:count]
        (folder / "EmotionClassification" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "TwentyNewsgroupsClustering").mkdir()
    first = json.loads((SHARED / "TwentyNewsgroupsClustering" / "test.jsonl").read_text().splitlines()[0])
    (folder / "TwentyNewsgroupsClustering" / "test.jsonl").write_text(
        json.dumps({"sentences": first["sentences"][:60], "labels": first["labels"][:60]}) + "\n"
    )
    return folder


def study_arguments(backbone: str, triplets: str, tmp_path: Path) -> list[str]:
    """Variants 1 and 2 and the mean-causal baseline, 2 seeds each, 2 steps, on the tiny suite (no budget)."""
    return [
        "--designs",
        "1,2,mean-causal",
        "--seeds",
        "2",
        "--data-dir",
        str(tiny_suite(tmp_path / "data")),
        "--budget",
        "0",
        "--output",
        str(tmp_path / "study"),
        "--",
        "--backbone",
        backbone,
        "--train_data",
        triplets,
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
        "--learning_rate",
        "1e-2",
    ]


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_a_tiny_study_writes_every_section_from_the_named_tests_and_resumes(
    tiny_backbone_folder, triplets_file, tmp_path, monkeypatch, capsys
):
    argv = study_arguments(tiny_backbone_folder, triplets_file, tmp_path)
    assert cli.run_study_command(argv) == 0
    output = tmp_path / "study"
    plan = study.StudyPlan.read(output)
    assert [row.key for row in plan.rows] == ["v1", "v2", "mean-causal"] and plan.seeds == [42, 43]
    assert plan.instruction_check == ["mean-causal"]  # v5 is not in this study
    report = (output / "report" / "study.md").read_text()
    for section in ("## Main table", "## The paper's comparisons", "## Prompts", "## Wall time", "## Figure"):
        assert section in report
    assert "| v2 vs v1 | trainable pooling vs EOS-last, causal |" in report
    assert "| v1 vs mean-causal | EOS-last vs mean pooling, causal |" in report
    assert (output / "report" / "study.png").stat().st_size > 0

    # seeds grouped per row: every row's table entry averages its own two seeds, never another row's
    table = read_csv(output / "report" / "study_table.csv")
    assert {(row["row"], row["seeds"]) for row in table} == {("v1", "2"), ("v2", "2"), ("mean-causal", "2")}
    assert {row["category"] for row in table} == {"STS", "Classification", "Clustering"}
    per_task = read_csv(output / "report" / "per_task.csv")
    for row in table:
        if row["category"] == "STS":
            seeds = [
                float(item["score"]) for item in per_task if item["row"] == row["row"] and item["task"] == "BIOSSES"
            ]
            assert len(seeds) == 2 and float(row["mean"]) == pytest.approx(sum(seeds) / 2, abs=1e-12)

    # every marker comes from the test named: the category bootstrap, Holm over the comparison's categories
    tests = read_csv(output / "report" / "study_tests.csv")
    assert {(row["a"], row["b"]) for row in tests} == {("v2", "v1"), ("v1", "mean-causal")}
    for pair in {(row["a"], row["b"]) for row in tests}:
        members = [row for row in tests if (row["a"], row["b"]) == pair]
        adjusted = holm_adjust([float(row["bootstrap p"]) for row in members])
        for row, p_holm in zip(members, adjusted):
            assert float(row["bootstrap p (Holm)"]) == pytest.approx(p_holm)
            expected = "" if p_holm >= 0.05 else ("▲" if float(row["difference"]) > 0 else "▼")
            assert row["marker"] == expected
    # a category of one task: its pooled bootstrap is the task's own paired bootstrap (another path, same numbers)
    results = output / "results" / "results"
    by_key = {item.row.key: item for item in study.collect(plan, output)}
    within, _ = paired_tests(by_key["v2"].replicates, by_key["v1"].replicates)
    sts = next(test for test in within if test.task == "BIOSSES")
    row = next(row for row in tests if (row["a"], row["b"], row["category"]) == ("v2", "v1", "STS"))
    assert float(row["difference"]) == pytest.approx(sts.difference, abs=1e-12)
    assert (float(row["95% low"]), float(row["95% high"]), float(row["bootstrap p"])) == pytest.approx(
        (sts.low, sts.high, sts.p_value), abs=1e-12
    )

    # the instruction check: the same mean-causal models scored on STS without instructions, stored apart
    model = by_key["mean-causal"].models[0]
    revision = evaluation_revision(model.fingerprint, instructions=False)
    assert revision.endswith("-no-instructions")
    plain = read_runs(results / model.mteb_name.replace("/", "__") / revision)[0]
    assert set(plain.scores) == {"BIOSSES"} and not plain.instructions
    assert "| mean-causal (mean pooling of the last layer, causal attention) | 1 |" in report

    # the card of a published row carries the study: the table with its row in bold, and its comparisons
    v2 = by_key["v2"].models[1]
    assert (
        cli.publish(
            [
                str(v2.folder),
                "--hub_model_id",
                "org/tiny",
                "--output_dir",
                str(tmp_path / "hub"),
                "--study",
                str(output),
            ]
        )
        == 0
    )
    card = (tmp_path / "hub" / "tiny-v2" / "README.md").read_text()
    assert "## In the study" in card and "row **2 last-layer trainable pooling, causal attention** (seed 43)" in card
    assert "| v2 vs v1 | STS |" in card and "| v1 vs mean-causal |" not in card
    stranger = tmp_path / "stranger"
    tiny_model("llama", 2).save_pretrained(stranger)  # a poolattn model that is none of the study's runs
    assert (
        cli.publish(
            [str(stranger), "--hub_model_id", "org/x", "--output_dir", str(tmp_path / "hub2"), "--study", str(output)]
        )
        == 1
    )
    assert "is not one of the runs of the study" in capsys.readouterr().err

    # resuming: nothing is trained or scored again, and the report is the same
    monkeypatch.setattr(runner, "train_variant", lambda *arguments: pytest.fail(f"retrained: {arguments[0]}"))
    before = (output / "report" / "study_tests.csv").read_text()
    assert cli.run_study_command(argv) == 0
    assert (output / "report" / "study_tests.csv").read_text() == before

    # what changed since an earlier study: its tests, each marked against the same test now
    check_what_changed(output, tests, tmp_path)


def check_what_changed(output: Path, tests: list[dict], tmp_path: Path) -> None:
    """An earlier study made from this one's tests by hand: one marker kept, one flipped, one taken away, one added
    where there is none now, one test this study did not run; the report marks each as the rules say."""
    earlier = [dict(row) for row in tests]
    significant = [row for row in earlier if row["marker"]]
    plain = [row for row in earlier if not row["marker"]]
    expected = {}
    for row in plain[:1]:  # no difference now, a difference then: no longer significant
        row["marker"] = "▲"
        expected[(row["a"], row["b"], row["category"])] = "no longer significant"
    for row in plain[1:2]:  # no difference then or now: held
        expected[(row["a"], row["b"], row["category"])] = "held"
    for row in significant[:1]:  # flipped: the other direction then
        row["marker"] = "▼" if row["marker"] == "▲" else "▲"
        expected[(row["a"], row["b"], row["category"])] = "flipped"
    for row in significant[1:2]:  # none then: newly significant
        row["marker"] = ""
        expected[(row["a"], row["b"], row["category"])] = "newly significant"
    earlier.append({**earlier[0], "a": "v4", "b": "v2", "category": "STS", "marker": "▲"})
    expected[("v4", "v2", "STS")] = "not run now"
    path = tmp_path / "earlier_tests.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(earlier[0]))
        writer.writeheader()
        writer.writerows(earlier)
    assert cli.run_study_command(["--report", str(output), "--previous-tests", str(path)]) == 0
    report = (output / "report" / "study.md").read_text()
    assert "## What changed" in report
    for (a, b, category), status in expected.items():
        line = next(line for line in report.splitlines() if line.startswith(f"| {a} vs {b} | {category} |"))
        assert line.rstrip(" |").endswith(status), line
    assert (output / "previous_tests.csv").is_file()  # kept: later reports of the study carry the section too
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\nv1,v2\n")
    with pytest.raises(SystemExit, match=r"not a study_tests.csv \(missing: category, difference, marker, question\)"):
        cli.run_study_command(["--report", str(output), "--previous-tests", str(bad)])


def test_bad_study_requests_are_refused_before_training(tiny_backbone_folder, triplets_file, tmp_path, capsys):
    base = ["--output", str(tmp_path / "s"), "--", "--backbone", tiny_backbone_folder, "--train_data", triplets_file]
    with pytest.raises(SystemExit, match=r"--seed, --variant are set by the study itself"):
        cli.run_study_command([*base, "--variant", "5", "--seed", "1"])
    with pytest.raises(SystemExit, match=r"--variant '1,7' is not supported"):
        cli.run_study_command(["--designs", "1,7", *base])
    with pytest.raises(SystemExit, match=r"--ablation 'layer_counts' is not known"):
        cli.run_study_command(["--ablation", "layer_counts", *base])
    with pytest.raises(
        SystemExit,
        match=r"--ablation layer_weights:off: layer_weights has no arm 'off'; its arms: "
        r"weights_off, weights_paper_init, weights_x100",
    ):
        cli.run_study_command(["--ablation", "layer_weights:off", *base])
    with pytest.raises(SystemExit, match=r"no study.json here"):
        cli.run_study_command(["--report", str(tmp_path)])
    # an arm the backbone is too shallow for is refused before any row trains (the tiny backbone has 2 layers)
    with pytest.raises(SystemExit, match=r"v5 · middle_4: PoolAttnConfig: layers='middle:4'"):
        cli.run_study_command(["--designs", "1,5", "--ablation", "layer_subset:middle_4", *base])
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "scoring, refusal",
    [
        (["--tasks", "BIOSSESS"], r"unknown task 'BIOSSESS' \(close names: BIOSSES"),
        (["--tasks", "BIOSSES,STSBenchmark"], r"no local copy in .*: STSBenchmark\. Add them to the data dir"),
        (["--categories", "STS,Retreival"], r"unknown categories \['Retreival'\]"),
        (["--tasks", "BIOSSES", "--budget", "-3"], r"--budget -3: give the most units"),
        (["--tasks", "BIOSSES", "--batch-size", "0"], r"--batch-size 0: give the texts per encode batch"),
    ],
)
def test_a_study_checks_what_it_will_score_before_any_row_trains(
    scoring, refusal, tiny_backbone_folder, triplets_file, tmp_path
):
    """A misspelled task, a task without a local copy or a bad budget was found by the scoring after the first row had
    trained (hours into a real study)."""
    data = tiny_suite(tmp_path / "data")
    argv = ["--designs", "1", "--seeds", "1", "--data-dir", str(data), *scoring, "--output", str(tmp_path / "s")]
    train = ["--backbone", tiny_backbone_folder, "--train_data", triplets_file, "--max_steps", "1", "--lora_r", "2"]
    with pytest.raises(SystemExit, match=refusal):
        cli.run_study_command([*argv, "--", *train, "--per_device_train_batch_size", "4", "--use_cpu", "true"])
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "plateau, refusal",
    [
        (["--plateau-patience", "0"], r"--plateau-patience 0: give whole numbers >= 1"),
        (["--held-out-batch-size", "0"], r"--held-out-batch-size 0: give whole numbers >= 1"),
        (["--held-out-fraction", "0"], r"--held-out-fraction 0.0: give a fraction .* and one in \(0, 1\)"),
        (
            ["--plateau-eval-steps", "500"],
            r"--plateau-patience 3 needs 4 held-out evaluations .* makes 1, so the rule",
        ),
    ],
)
def test_plateau_settings_are_checked_before_the_tuning_runs(
    plateau, refusal, tiny_backbone_folder, triplets_file, tmp_path
):
    """They reached train.py only with each row's run: after the study had started (with --tune, after every row's
    tuning had trained), or, the rule that could never act, not at all: every run trained to the cap."""
    base = ["--designs", "1", "--seeds", "1", "--tasks", "BIOSSES", "--data-dir", str(tiny_suite(tmp_path / "data"))]
    train = ["--backbone", tiny_backbone_folder, "--train_data", triplets_file, "--per_device_train_batch_size", "4"]
    with pytest.raises(SystemExit, match=refusal):
        cli.run_study_command([*base, "--plateau", *plateau, "--output", str(tmp_path / "s"), "--", *train])
    assert not (tmp_path / "s").exists()
    with pytest.raises(ValueError, match=r"--held-out-batch-size 0: give queries per batch"):
        study.plan_study(designs="1", tuning=TuningGrid(learning_rates=[1e-3], eval_batch_size=0))


def test_a_damaged_plan_says_to_delete_it_not_to_run_again(tmp_path):
    """Running the same command again read the damaged study.json first and failed the same way."""
    (tmp_path / "study.json").write_text('{"backbone": "b", "seeds": [4')
    with pytest.raises(ValueError, match=r"study.json is damaged .*; delete it and run the same study.py command"):
        study.StudyPlan.read(tmp_path)


def test_ablation_arms_join_the_variant_5_row_as_their_base():
    plan = study.plan_study(designs="1", ablation="layer_weights", seeds=1, train_argv=["--max_steps", "1"])
    keys = ["v1", "v5", "arm-weights_off", "arm-weights_paper_init", "arm-weights_x100"]
    assert [row.key for row in plan.rows] == keys
    assert plan.row("arm-weights_off").overrides == {"layer_weights": False}
    compared = {(a, b) for a, b, _ in study.comparisons(plan)}
    assert ("arm-weights_off", "v5") in compared and ("arm-weights_x100", "v5") in compared
    assert ("arm-weights_x100", "arm-weights_off") in compared  # on (where the matrix moves) vs off, directly
    single = study.plan_study(
        designs="5", ablation="head_attention:single,layer_subset", seeds=1, train_argv=["--max_steps", "1"]
    )
    assert [row.key for row in single.rows] == ["v5", "arm-single", "arm-last_4", "arm-middle_4"]
    assert not [pair for pair in study.comparisons(single) if "arm-weights_x100" in pair]  # only with both arms


def test_every_seed_of_the_designs_runs_before_the_ablation_arms():
    """A study of many rows is cut short on a small machine: breadth first over designs and arms together left
    every design with one seed while the arms ran. The designs and baselines (the study's question) get their seeds
    first, seed by seed, then the arms likewise; every (row, seed) runs once, a row's first seed (its tuning) first."""
    from poolattn.study.runner import run_order

    plan = study.plan_study(
        designs="1,5,mean-causal", ablation="layer_weights:weights_off", seeds=2, train_argv=["--max_steps", "1"]
    )
    order = [(row.key, seed) for row, seed in run_order(plan)]
    designs = [(key, seed) for seed in (42, 43) for key in ("v1", "v5", "mean-causal")]
    assert order == designs + [("arm-weights_off", 42), ("arm-weights_off", 43)]
    assert sorted(order) == sorted((row.key, seed) for row in plan.rows for seed in plan.seeds)


def test_ablation_arms_get_their_own_figure_beside_their_base():
    plan = study.plan_study(
        designs="1,5,mean-causal", ablation="layer_subset", seeds=1, train_argv=["--max_steps", "1"]
    )
    scored = [study.RowResults(row, [], None) for row in plan.rows]
    groups = study.figure_groups(scored)
    assert [item.row.key for item in groups["study.png"][1]] == ["v1", "v5", "mean-causal"]
    assert [item.row.key for item in groups["study_ablation.png"][1]] == ["v5", "arm-last_4", "arm-middle_4"]
    without_arms = study.figure_groups([item for item in scored if item.row.kind != "arm"])
    assert list(without_arms) == ["study.png"]  # no arm, no second figure


def test_tuning_chooses_on_held_out_training_rows_only_then_runs_train_to_a_plateau(
    tiny_backbone_folder, triplets_file, tmp_path, monkeypatch
):
    """--tune --plateau --controls: every row's rates come from the grid on held-out training rows, no task read while
    a row is tuned (every door to task data fails the test during a tuning step) and every row tuned before its
    first run is scored (the doors fail for a row without its choice); the runs then train to the plateau, and every
    row has its untrained control."""
    from poolattn.evaluation import local_tasks
    from poolattn.evaluation import scoring as evaluation
    from poolattn.study import tuning

    argv = [
        "--designs",
        "1,2",
        "--seeds",
        "1",
        "--data-dir",
        str(tiny_suite(tmp_path / "data")),
        "--budget",
        "0",
        "--output",
        str(tmp_path / "study"),
        "--tune",
        "--tune-learning-rates",
        "1e-3,1e-2",
        "--tune-head-learning-rates",
        "1e-3,1e-1",
        "--tune-steps",
        "2",
        "--tune-eval-steps",
        "1",
        "--tune-extend",
        "2",
        "--plateau",
        "--plateau-patience",
        "1",
        "--plateau-eval-steps",
        "1",
        "--plateau-max-steps",
        "6",
        "--held-out-fraction",
        "0.34",
        "--held-out-batch-size",
        "4",
        "--controls",
        "--",
        "--backbone",
        tiny_backbone_folder,
        "--train_data",
        triplets_file,
        "--per_device_train_batch_size",
        "4",
        "--use_cpu",
        "true",
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
    ]
    output = _checked.study = tmp_path / "study"
    _checked.tuning, _checked.events = False, []
    tune = study_runner.tune

    def tune_closed(plan, row, output):  # the doors to task data are closed while a row is tuned
        _checked.tuning = True
        try:
            return tune(plan, row, output)
        finally:
            _checked.tuning = False
            _checked.events.append(("tuned", row.key))

    monkeypatch.setattr(study_runner, "tune", tune_closed)
    # every door to the evaluation tasks checks that no tuning is running and that the row it scores was tuned first
    for module, name in (
        (evaluation, "evaluate_models"),
        (study_runner, "evaluate_models"),
        (local_tasks, "load_task"),
        (local_tasks, "stock_task"),
        (mteb, "get_tasks"),
        (mteb, "evaluate"),
    ):
        door = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, door=door, **k: _checked(door, *a, **k))
    assert cli.run_study_command(argv) == 0
    events = list(dict.fromkeys(_checked.events))  # each row tuned just before its first run: breadth first
    assert events == [("tuned", "v1"), ("scored", "v1"), ("tuned", "v2"), ("scored", "v2")]

    tuned = tuning.read_tuning(output)
    assert [(p.learning_rate, p.head_learning_rate) for p in tuned["v1"].points][:2] == [(1e-3, None), (1e-2, None)]
    stated = {(rate, head) for rate in (1e-3, 1e-2) for head in (1e-3, 1e-1)}
    assert stated <= {(p.learning_rate, p.head_learning_rate) for p in tuned["v2"].points}
    assert all(len(p.curve) == 2 for p in tuned["v2"].points)
    grid = study.StudyPlan.read(output).tuning_grid
    assert grid.extend == 2  # --tune-extend
    assert grid.schedule_steps == 6  # each proxy follows the runs' schedule: the plateau rule's cap
    for row in tuned.values():  # the lowest held-out loss at the proxy's last evaluation, never at an open edge
        assert row.choice.final_loss == min(point.final_loss for point in row.points)
        tried = [(point.learning_rate, point.head_learning_rate) for point in row.points]
        assert grid.beyond_edge(row.choice, tried) == []
    plan = study.StudyPlan.read(output)
    by_key = {item.row.key: item for item in study.collect(plan, output)}
    for key in ("v1", "v2"):
        manifest = by_key[key].models[0].manifest
        choice = tuned[key].choice
        assert manifest.settings.learning_rate == choice.learning_rate
        assert manifest.settings.head_learning_rate == choice.head_learning_rate
        assert manifest.stop.reason in ("plateau", "max_steps") and manifest.global_steps <= 6
        assert manifest.eval_history  # the held-out curve the rule read
        assert manifest.stop.exported_step == manifest.stop.best_step  # the best checkpoint is the one exported
        control = by_key[key].controls.runs[0]
        assert control.origin.seed == 42 and set(control.scores) == {
            "BIOSSES",
            "EmotionClassification",
            "TwentyNewsgroupsClustering",
        }
    report = (output / "report" / "study.md").read_text()
    for section in ("## Tuning", "## Training to a plateau", "· step 0", "checkpoint with the lowest held-out loss"):
        assert section in report
    assert (output / "report" / "tuning.png").stat().st_size > 0
    assert (output / "report" / "curves.png").stat().st_size > 0
    table = read_csv(output / "report" / "study_table.csv")
    assert {row["kind"] for row in table} >= {"variant", "control"}
    # a resumed study with another grid is refused, not mixed in
    with pytest.raises(SystemExit, match="another tuning / plateau setting"):
        cli.run_study_command([*argv[: argv.index("1e-3,1e-2")], "1e-4", *argv[argv.index("1e-3,1e-2") + 1 :]])
    # a study recorded before the export was a choice exported its runs' last steps: it resumes as such, not as best
    recorded = json.loads((output / "study.json").read_text())
    del recorded["plateau"]["exported"]
    (output / "study.json").write_text(json.dumps(recorded))
    assert study.StudyPlan.read(output).recipe()["plateau"]["exported"] == "last"
    with pytest.raises(SystemExit, match="another tuning / plateau setting"):
        cli.run_study_command(argv)


def _checked(door, *args, **kwargs):
    from poolattn.study import tuning

    assert not _checked.tuning, "task data read while a row's rates were being chosen"
    tuned = tuning.read_tuning(_checked.study)
    scored = {key for key in ("v1", "v2") if f"/runs/{key}/" in str(args) + str(kwargs)}  # the rows it scores
    assert all(key in tuned and tuned[key].chosen is not None for key in scored), (
        f"task data read for {sorted(scored)} before their rates were chosen ({sorted(tuned)} tuned)"
    )
    _checked.events += [("scored", key) for key in sorted(scored)]
    return door(*args, **kwargs)


def test_every_run_of_a_study_is_a_typed_job_with_the_studys_settings(tmp_path):
    """The study builds `TrainingJob`s (no command line of its own): a row's job carries its design, seed, folder,
    name and arm overrides; with tuning, the chosen rates; with the plateau rule, its steps and held-out rows; and a
    train.py run of the same flags by hand gives the same parsed arguments as the job."""
    import dataclasses as dc

    from poolattn.study import tuning
    from poolattn.training.job import TrainingJob

    plan = study.plan_study(
        designs="5",
        ablation="layer_weights:weights_off",
        seeds=2,
        train_argv=["--lora_r", "4"],
        tuning=tuning.TuningGrid(learning_rates=[1e-4]),
        plateau=PlateauSettings(max_steps=80),  # evaluations at 20, 40, 60, 80: patience 3 can act
    )
    output = tmp_path / "study"
    arm = plan.row("arm-weights_off")
    tuning.write_tuning(
        output,
        plan.tuning_grid,
        {
            "arm-weights_off": tuning.RowTuning(
                row="arm-weights_off", seed=42, points=[tuning.TuningPoint(1e-4, 1e-3, [[10, 1.0, 0.5]])], chosen=0
            )
        },
    )
    job = study.row_job(plan, arm, 43, output)
    assert isinstance(job, TrainingJob) and job.flags == ("--lora_r", "4")
    assert (job.variant, job.seed, job.model_name) == (5, 43, "poolattn/smollm2-135m-v5-weights-off")
    assert job.output_dir == str(output / "runs" / "arm-weights_off" / "seed-43")
    assert dict(job.config_overrides) == {"layer_weights": False}
    assert (job.learning_rate, job.head_learning_rate, job.max_steps, job.plateau_patience) == (1e-4, 1e-3, 80, 3)
    control = study.row_job(plan, arm, 43, output, control=True)
    assert control.model_name.endswith("-step0") and control.plateau_patience is None
    by_hand = training.parse_arguments(
        [
            "--lora_r",
            "4",
            "--max_steps",
            "80",
            "--variant",
            "5",
            "--seed",
            "43",
            "--output_dir",
            job.output_dir,
            "--model_name",
            job.model_name,
            "--config_overrides",
            '{"layer_weights": false}',
            "--learning_rate",
            "0.0001",
            "--head_learning_rate",
            "0.001",
            "--save_steps",
            "20",
            "--eval_fraction",
            "0.01",
            "--per_device_eval_batch_size",
            "16",
            "--plateau_patience",
            "3",
            "--plateau_min_improvement",
            "0.01",
            "--load_best_model_at_end",
            "true",
            "--metric_for_best_model",
            "eval_loss",
            "--resume_from_checkpoint",
            "true",
        ]
    )
    from_job = training.parse_arguments(job.argv())
    for expected, actual in zip(by_hand, from_job):
        assert dc.asdict(expected) == dc.asdict(actual)
    with pytest.raises(study.StudyError, match="--learning_rate are set per row by the study's tuning"):
        study.plan_study(
            designs="5",
            seeds=1,
            train_argv=["--learning_rate", "1e-3"],
            tuning=tuning.TuningGrid(learning_rates=[1e-4]),
        )


def test_a_study_killed_before_any_of_its_writes_reruns_to_the_uninterrupted_report(
    tiny_backbone_folder, triplets_file, tmp_path, monkeypatch
):
    """Fault injection over a tiny study (one row, one seed, one task): killed before its k-th write of a small file
    (the plan, the run's records and manifest, the scores' settings, the report's files), for every k, the same
    command run again ends with the report of a study that was never interrupted."""
    from poolattn import files
    from poolattn.evaluation import comparison

    data = tmp_path / "data" / "BIOSSES"
    data.mkdir(parents=True)
    data.joinpath("test.jsonl").write_text(
        "\n".join((SHARED / "BIOSSES" / "test.jsonl").read_text().splitlines()[:20]) + "\n"
    )

    def argv(name):
        return [
            "--designs",
            "1",
            "--seeds",
            "1",
            "--tasks",
            "BIOSSES",
            "--data-dir",
            str(tmp_path / "data"),
            "--budget",
            "0",
            "--output",
            str(tmp_path / name),
            "--",
            "--backbone",
            tiny_backbone_folder,
            "--train_data",
            triplets_file,
            "--max_steps",
            "1",
            "--save_steps",
            "1",
            "--per_device_train_batch_size",
            "4",
            "--use_cpu",
            "true",
            "--lora_r",
            "4",
            "--lora_alpha",
            "8",
        ]

    assert cli.run_study_command(argv("straight")) == 0
    expected = read_csv(tmp_path / "straight" / "report" / "study_table.csv")
    writes = {"count": 0, "kill_at": None}
    for module, name in ((files, "write_text"), (study_report, "write_text"), (comparison, "write_text")):
        original = getattr(module, name)

        def write(*args, original=original, name=name, **kwargs):
            writes["count"] += 1
            if writes["count"] == writes["kill_at"]:
                raise KeyboardInterrupt(f"killed before write {writes['count']} ({name})")
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, write)
    assert cli.run_study_command(argv("counted")) == 0
    total = writes["count"]
    assert total >= 8
    for kill_at in range(1, total + 1):
        writes.update(count=0, kill_at=kill_at)
        with pytest.raises(KeyboardInterrupt):
            cli.run_study_command(argv(f"killed-{kill_at}"))
        writes.update(count=0, kill_at=None)
        assert cli.run_study_command(argv(f"killed-{kill_at}")) == 0
        table = read_csv(tmp_path / f"killed-{kill_at}" / "report" / "study_table.csv")
        assert [{**row, "label": None} for row in table] == [{**row, "label": None} for row in expected], kill_at


def test_what_changed_marks_each_earlier_test_by_its_significance_then_and_now():
    from types import SimpleNamespace

    from poolattn.study.changes import EarlierTest, status

    def then(marker):
        return EarlierTest("v5", "v1", "q", "STS", 0.1, None, None, marker)

    def now(marker):
        return SimpleNamespace(marker=marker)

    assert status(then("▲"), now("▲")) == "held"
    assert status(then(""), now("")) == "held"
    assert status(then("▲"), now("▼")) == "flipped"
    assert status(then(""), now("▼")) == "newly significant"
    assert status(then("▼"), now("")) == "no longer significant"
    assert status(then("▲"), None) == "not run now"


def test_the_report_says_what_its_intervals_hold_of_the_seed_noise():
    from types import SimpleNamespace

    one = [SimpleNamespace(a="v1", b="v5", seeds_a=1, seeds_b=3)]
    assert "test-set noise only" in study_report.seed_note(one)
    three = [SimpleNamespace(a="v5", b="v1", seeds_a=3, seeds_b=3)]
    assert "With 3 seeds the bootstrap sees about 0.82 of the seed spread" in study_report.seed_note(three)
    assert study_report.seed_note([]) == ""
    # a row against its one untrained control rests on the row's seeds: the note of one seed (the fewest of all the
    # tests) was given for every test, the designs' three-seed comparisons included
    control = SimpleNamespace(a="v5", b="v5-step0", seeds_a=3, seeds_b=1)
    assert study_report.seed_note([*three, control]) == study_report.seed_note(three)
    mixed = study_report.seed_note([*one, *three])
    assert "Comparisons on 1 seed of a row (1 of 2): With one seed" in mixed
    assert "Comparisons on 3 seeds of a row (1 of 2): With 3 seeds" in mixed


def test_each_study_step_holds_its_own_scoring(monkeypatch, tmp_path, caplog):
    """A control's and a run's scoring are part of their step: the step's log line comes after its scoring and
    gives its time (the control's said "ran now in 1 s" while its 10 minutes of scoring followed), and the ETA
    measures controls at their scoring's cost."""
    from types import SimpleNamespace

    from poolattn.evaluation.scoring import EvaluationRun
    from poolattn.study import progress as study_progress

    plan = study.plan_study(designs="1", seeds=2, controls=True, control_seeds="first", full_sts=True)
    clock, events = [0.0], []
    monkeypatch.setattr(study_progress.time, "time", lambda: clock[0])

    def spend(seconds, event, result=None):
        clock[0] += seconds
        events.append(event)
        return result

    folder = tmp_path / "runs" / "v1"
    monkeypatch.setattr(study_runner, "control_row", lambda *a: spend(1, "control written", folder / "step0"))
    monkeypatch.setattr(study_runner, "score_models", lambda *a, **k: spend(600, "control scored", EvaluationRun()))
    monkeypatch.setattr(study_runner, "train_row", lambda p, r, seed, o: spend(1800, f"run {seed} trained", folder))
    monkeypatch.setattr(study_runner, "score_run", lambda *a: spend(500, "run scored", []))
    monkeypatch.setattr(study_runner, "write_report", lambda output: SimpleNamespace(path=None, left_out=[]))
    monkeypatch.setattr(study_runner, "best_row_folders", lambda plan, output: [])
    monkeypatch.setattr(study.StudyPlan, "full_sts_plan", lambda plan: plan)
    steps = []
    monkeypatch.setattr(study_progress.logger, "info", lambda message, *args: steps.append(message % args))
    study_runner._run_locked(plan, tmp_path, distributed=False)
    assert events == ["control written", "control scored", "run 42 trained", "run scored"] + [
        "run 43 trained",
        "run scored",
        "control scored",  # the full STS scoring (of no model here: the fake scores none)
    ]
    control, first, second, full = (line for line in steps if "study: step" in line)
    assert "step 1 of 4: control" in control and "ran now in 601 s" in control and "ETA once a training" in control
    assert "step 2 of 4: training" in first and "ran now in 2300 s" in first
    assert first.endswith("ETA 38 min and the full STS scoring")  # the last step: no earlier one measures it
    assert "step 3 of 4: training" in second and "ran now in 2300 s" in second
    assert "step 4 of 4: full STS: ran now in 600 s" in full


def test_the_eta_counts_what_runs_between_steps_and_waits_for_each_stage(monkeypatch, caplog):
    """Two rows x two seeds with controls (8 steps): the ETA waits until a training step has run (it said "0 min"
    after a 2-s control), then counts what runs between steps (50 s after the control) with the next step."""
    from poolattn.study import progress as study_progress

    plan = study.plan_study(designs="1,5", seeds=2, controls=True)
    clock = [0.0]
    monkeypatch.setattr(study_progress.time, "time", lambda: clock[0])
    progress = study_progress.StudyProgress(plan)

    def work(seconds):
        def run():
            clock[0] += seconds
            return None

        return run

    with caplog.at_level("INFO", logger="poolattn.study"):
        progress.step("control", plan.rows[0], 42, work(10), state="ran now")
        assert progress.eta() == ", ETA once a training step has run"
        clock[0] += 50  # between the steps
        progress.step("training", plan.rows[0], 42, work(600), state="ran now")
    # left: 3 controls at 10 s and 3 training runs at 650 s (the 50 s between them counted with the next step)
    assert progress.eta() == f", ETA {(3 * 10 + 3 * 650) / 60:.0f} min"
    assert "step 2 of 8: training" in caplog.text and "ran now in 600 s" in caplog.text
    # a step resumed from a checkpoint cost only its rest: it is not a step's cost
    progress.step("training", plan.rows[1], 42, work(5), state="resumed")
    assert progress.eta() == f", ETA {(3 * 10 + 2 * 650) / 60:.0f} min"

    # a study resumed: the ETA from its first step on, from the wall times its records give
    resumed = study_progress.StudyProgress(plan, recorded={"control": [20.0, 40.0], "training": [900.0]})
    assert resumed.eta() == f", ETA {(4 * 30 + 4 * 900) / 60:.0f} min"
    # ... of the steps still to run: those its folder holds done already are not in it, then or as they are passed
    done = study_progress.StudyProgress(plan, recorded={"control": [30.0], "training": [900.0]}, done={"training": 3})
    assert done.eta() == f", ETA {(4 * 30 + 1 * 900) / 60:.0f} min"
    done.step("training", plan.rows[0], 42, work(0), state="done already")
    assert done.eta() == f", ETA {(4 * 30 + 1 * 900) / 60:.0f} min" and done.total == 8


def test_every_comparison_rests_on_the_seeds_both_rows_have(tiny_backbone_folder, triplets_file, tmp_path, capsys):
    """A study cut short scores a row's control before its run, and a row's STS with instructions before without: the
    report then holds rows with different seeds. Each test compares the two rows on the seeds both have (the same
    data order; a run and its own start), never one row's seed 42 against another's mean over 42 and 43; the control
    of a row without parameters (one results folder for every seed) is one run, set against every seed. A score
    missing from a row or a test is named in the report, and the command exits 1."""

    argv = study_arguments(tiny_backbone_folder, triplets_file, tmp_path)
    argv[argv.index("1,2,mean-causal")] = "1,mean-causal"
    argv = ["--controls", "--tasks", "BIOSSES,TwentyNewsgroupsClustering", *argv]
    assert cli.run_study_command(argv) == 0
    output = tmp_path / "study"
    per_task = read_csv(output / "report" / "per_task.csv")
    seed_of = lambda text: int(text) if text else None  # noqa: E731
    score = {(row["row"], seed_of(row["seed"]), row["task"]): float(row["score"]) for row in per_task}
    assert {seed for row, seed, _ in score if row == "v1-step0"} == {None}  # one control, the same for every seed
    # cut short: v1's seed 43 not trained yet (its control scored), mean-causal's seed 43 not yet scored without
    # instructions
    shutil.rmtree(output / "runs" / "v1" / "seed-43" / "model")
    plan = study.StudyPlan.read(output)
    models = study.collect(plan, output)[1].models
    assert [model.manifest.seed for model in models] == [42, 43]
    results = output / "results" / "results" / models[0].mteb_name.replace("/", "__")
    shutil.rmtree(results / evaluation_revision(models[1].fingerprint, instructions=False))
    assert cli.run_study_command(["--report", str(output)]) == 0
    tests = {(row["a"], row["b"], row["category"]): row for row in read_csv(output / "report" / "study_tests.csv")}
    # a row and a control shared by every seed: every seed of the row against the one control; otherwise the seeds
    # both rows have
    pairs = {("v1", "v1-step0"): [None], ("v1", "mean-causal"): [42], ("mean-causal", "mean-causal-step0"): [None]}
    for (a, b), seeds in pairs.items():
        row = tests[(a, b, "STS")]
        assert int(row["b seeds"]) == len(seeds), (a, b)
        expected = sum(score[(b, seed, "BIOSSES")] for seed in seeds) / len(seeds)
        assert float(row["b score"]) == pytest.approx(expected, abs=1e-5)
    assert int(tests[("v1", "mean-causal", "STS")]["a seeds"]) == 1  # v1's seed 42, mean-causal's 42 (not 43)
    assert int(tests[("mean-causal", "mean-causal-step0", "STS")]["a seeds"]) == 2
    report = (output / "report" / "study.md").read_text()
    assert "| mean-causal (mean pooling of the last layer, causal attention) | 1 |" in report  # 1 STS task, seed 42
    assert "## Left out" not in report

    # a task one seed lacks, and a test without a task's predictions: named, and the command exits 1
    (results / models[0].fingerprint / "TwentyNewsgroupsClustering.json").unlink()
    v1 = study.collect(plan, output)[0].models[0]
    v1_results = output / "results" / "results" / v1.mteb_name.replace("/", "__") / v1.fingerprint
    (v1_results / "predictions" / "BIOSSES_predictions.json").unlink()
    capsys.readouterr()
    assert cli.run_study_command(["--report", str(output)]) == 1
    err = capsys.readouterr().err
    label = plan.row("mean-causal").label
    assert f"{label}: TwentyNewsgroupsClustering (scored by 1 of 2 seeds)" in err
    assert "v1 vs v1-step0: BIOSSES left out of the test (no saved predictions" in err
    report = (output / "report" / "study.md").read_text()
    assert "## Left out" in report and f"{label}: TwentyNewsgroupsClustering (scored by 1 of 2 seeds)" in report
    table = read_csv(output / "report" / "study_table.csv")
    assert [row["mean"] for row in table if (row["row"], row["category"]) == ("mean-causal", "Clustering")] == [""]
    line = next(line for line in report.splitlines() if line.startswith(f"| {label} | 2 |"))
    assert line.endswith("| — |")  # no average over the categories it has, beside the others' over all

    # resumed with fewer tasks: the dropped task's results stay in the folder but leave the report
    plan.tasks = ["BIOSSES"]
    plan.write(output)
    cli.run_study_command(["--report", str(output)])
    assert "TwentyNewsgroupsClustering" not in capsys.readouterr().err
    assert {row["category"] for row in read_csv(output / "report" / "study_table.csv")} == {"STS"}
    plan.tasks = ["BIOSSES", "TwentyNewsgroupsClustering"]
    plan.write(output)

    # a task copy edited since it was scored: its predictions are never paired with the new gold (the test's scores
    # were recomputed on it, e.g. a sign flipped against the table's), the test leaves it out and says why
    copy = tmp_path / "data" / "TwentyNewsgroupsClustering" / "test.jsonl"
    row = json.loads(copy.read_text())
    copy.write_text(json.dumps({**row, "labels": row["labels"][::-1]}) + "\n")
    assert cli.run_study_command(["--report", str(output)]) == 1
    err = capsys.readouterr().err
    assert "v1 vs v1-step0: TwentyNewsgroupsClustering left out of the test (scored on other data than" in err
    tests = {(row["a"], row["b"], row["category"]) for row in read_csv(output / "report" / "study_tests.csv")}
    assert ("v1", "v1-step0", "Clustering") not in tests and ("v1", "v1-step0", "STS") not in tests

    # a run trained but not scored yet, and a task of the study no row could score: both named
    shutil.rmtree(results / models[1].fingerprint)
    for path in (output / "results").rglob("TwentyNewsgroupsClustering.json"):
        path.unlink()
    assert cli.run_study_command(["--report", str(output)]) == 1
    assert "every row: no score for TwentyNewsgroupsClustering" in capsys.readouterr().err
    report = (output / "report" / "study.md").read_text()
    assert f"Not yet trained or scored: {plan.row('v1').label} (seed 43); {label} (seed 43)." in report


def test_a_tuning_record_of_other_proxy_runs_is_refused_not_read_as_this_studys(
    tiny_backbone_folder, triplets_file, tmp_path
):
    """`tuning.json` is reused point by point (resumed, or copied to reuse another study's choices): points trained
    with another proxy length, other training flags, another first seed or other training data would be read as this
    study's (and the report would state this study's grid); such a record is refused before anything runs. A record
    written before the flags and data were kept is checked on what it holds."""
    from poolattn.study import tuning

    output = tmp_path / "study"
    flags = ["--backbone", tiny_backbone_folder, "--train_data", triplets_file, "--lora_r", "4"]
    grid = tuning.TuningGrid(learning_rates=[1e-4, 3e-4], steps=20, eval_steps=10)
    point = tuning.TuningPoint(1e-4, None, [[10, 3.0, 0.3], [20, 2.9, 0.35]])
    tuning.write_tuning(output, grid, {"v1": tuning.RowTuning("v1", 42, [point], chosen=0)})  # the older layout
    (tmp_path / "data" / "BIOSSES").mkdir(parents=True)
    argv = ["--designs", "1", "--seeds", "1", "--output", str(output), "--data-dir", str(tmp_path / "data")]
    argv += ["--tasks", "BIOSSES", "--tune"]
    argv += ["--tune-learning-rates", "1e-4,3e-4", "--tune-eval-steps", "10"]
    refused = r"tuning.json records proxy runs other than this study.s: steps 20 \(now 30\)"
    with pytest.raises(SystemExit, match=refused):
        cli.run_study_command([*argv, "--tune-steps", "30", "--", *flags])
    assert not (output / "runs").exists() and not (output / "study.json").exists()

    def plan(**changes):
        settings = {"designs": "1", "seeds": 1, "train_argv": flags, "tuning": grid, **changes}
        return study.plan_study(**settings)

    study_runner.check_tuning_record(plan(), output)  # the same proxy: resumed point by point
    data = training.sources.fingerprint_files(triplets_file)
    point.data_fingerprint = data
    tuning.write_tuning(output, grid, {"v1": tuning.RowTuning("v1", 42, [point], chosen=0)}, flags)
    study_runner.check_tuning_record(plan(), output)
    for changes, refused in (
        ({"tuning": dataclasses.replace(grid, schedule_steps=300)}, r"schedule_steps None \(now 300\)"),
        ({"seed": 7}, r"v1: seed 42 \(now 7\)"),
        ({"train_argv": [*flags[:-1], "8"]}, "training flags '--backbone .* --lora_r 4' \\(now"),
    ):
        with pytest.raises(study.StudyError, match=refused):
            study_runner.check_tuning_record(plan(**changes), output)
    # a row key names another design in another study (an arm is keyed by its name whatever its base variant, as
    # `ablate.py --base-variant 3` and 5 both write `arm-last_4`): its points are not this row's
    other = tuning.RowTuning("v1", 42, [point], chosen=0, design=tuning.design_record(3, {"layers": "last:4"}))
    tuning.write_tuning(output, grid, {"v1": other}, flags)
    with pytest.raises(study.StudyError, match=r"v1: design variant 3 with layers=last:4 \(now variant 1\)"):
        study_runner.check_tuning_record(plan(), output)
    mine = dataclasses.replace(other, design=tuning.design_record(1, {}))
    tuning.write_tuning(output, grid, {"v1": mine}, flags)
    study_runner.check_tuning_record(plan(), output)
    Path(triplets_file).write_text(Path(triplets_file).read_text() + Path(triplets_file).read_text())
    with pytest.raises(study.StudyError, match=f"v1: training data {data} \\(now "):
        study_runner.check_tuning_record(plan(), output)


def test_earlier_tests_are_checked_and_kept_only_in_a_study_that_may_run(
    tiny_backbone_folder, triplets_file, tmp_path
):
    """`--previous-tests`: a cut or damaged CSV is refused naming its line (it crashed with a TypeError); the file is
    kept only in a study's folder, once the study may run there: a folder without study.json, or a study refused
    (other flags), is left as it was."""
    earlier = tmp_path / "earlier.csv"
    earlier.write_text(
        "a,b,question,category,difference,95% low,95% high,marker\n"
        "v2,v1,q,STS,0.028,-0.008,0.068,\n"
        'v4,v2,"bidirectional, last layer",Retrieval,0.45,,,▲\n'
    )
    assert [test.key for test in read_earlier(earlier)] == [("v2", "v1", "STS"), ("v4", "v2", "Retrieval")]
    cut = tmp_path / "cut.csv"
    cut.write_text(earlier.read_text()[:-24])  # killed while copying: the last row stops inside its question
    for text, refused in (
        (cut.read_text(), r"line 3: no category, difference"),
        (earlier.read_text().replace("0.028", "nan"), r"line 2: 'nan' is not a finite number"),
        (earlier.read_text().replace("-0.008", "low"), r"line 2: could not convert string to float: 'low'"),
    ):
        cut.write_text(text)
        with pytest.raises(SystemExit, match=refused):
            cli.run_study_command(["--report", str(tmp_path / "none"), "--previous-tests", str(cut)])
    cut.write_bytes(b"a,b\xff\n")
    with pytest.raises(SystemExit, match=r"cut.csv: not a readable CSV file"):
        cli.run_study_command(["--report", str(tmp_path / "none"), "--previous-tests", str(cut)])

    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (empty, tmp_path / "none"):
        with pytest.raises(SystemExit, match="no study.json here"):
            cli.run_study_command(["--report", str(folder), "--previous-tests", str(earlier)])
    assert not list(empty.iterdir()) and not (tmp_path / "none").exists()

    output = tmp_path / "study"
    flags = ["--backbone", tiny_backbone_folder, "--train_data", triplets_file, "--max_steps", "1"]
    study.plan_study(designs="1", seeds=1, train_argv=flags).write(output)
    (output / "previous_tests.csv").write_text("kept\n")
    argv = ["--designs", "1", "--seeds", "1", "--output", str(output), "--previous-tests", str(earlier)]
    with pytest.raises(SystemExit, match="holds a study trained with other flags"):
        cli.run_study_command([*argv, "--", *flags[:-1], "2"])
    assert (output / "previous_tests.csv").read_text() == "kept\n"


def read_earlier(path):
    from poolattn.study.changes import read_earlier_tests

    return read_earlier_tests(path)


def test_a_relative_data_dir_is_recorded_absolute_so_the_report_works_from_any_folder(
    tiny_backbone_folder, triplets_file, tmp_path, monkeypatch
):
    """The results record the study's data dir and the report reloads each task's gold from it: recorded as given
    (`--data-dir data`), a report written from another folder could not load it, and every test was left out."""
    from poolattn.evaluation import pairing

    argv = study_arguments(tiny_backbone_folder, triplets_file, tmp_path)
    argv[argv.index("1,2,mean-causal")] = "1,mean-causal"
    data = argv[argv.index("--data-dir") + 1]
    argv[argv.index("--data-dir") + 1] = "data"
    argv = ["--tasks", "BIOSSES", "--seeds", "1", *argv[: argv.index("--seeds")], *argv[argv.index("--seeds") + 2 :]]
    monkeypatch.chdir(Path(data).parent)
    assert cli.run_study_command(argv) == 0
    output = tmp_path / "study"
    assert study.StudyPlan.read(output).data_dir == str(Path(data).resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    pairing._gold.cache_clear()  # a new process: the gold loaded by the run's own report is not at hand
    assert cli.run_study_command(["--report", str(output)]) == 0
    tests = read_csv(output / "report" / "study_tests.csv")
    assert {(row["a"], row["b"], row["category"]) for row in tests} == {("v1", "mean-causal", "STS")}


def _stub_results(scores_by_folder: dict, monkeypatch, tmp_path: Path):
    """`compare._replicates` over stand-in results: fingerprint -> {task: score}, one results folder each (the STS12
    and STS13 scores of a run trained with `seed`), read by a stand-in for `read_results`."""
    from types import SimpleNamespace

    from poolattn.evaluation.results import ModelResults, TaskInfo, TrainingOrigin, results_folder
    from poolattn.study import compare

    def read(folder):
        fingerprint = folder.name.removesuffix("-budget100")
        scores, seed = scores_by_folder[fingerprint]
        tasks = [
            SimpleNamespace(task_name=task, get_score=lambda score=score: score) for task, score in scores.items()
        ]
        recorded = {task: TaskInfo(task, "STS", "main", f"local/{task}", local=True) for task in scores}
        return ModelResults(
            "o/m-step0",
            folder.name,
            folder,
            tasks,
            recorded_tasks=recorded,
            budget=100,
            origin=TrainingOrigin(seed, "recipe"),
        )

    for fingerprint in scores_by_folder:
        folder = results_folder(tmp_path / "results", "o/m-step0", f"{fingerprint}-budget100")
        folder.mkdir(parents=True)
        (folder / "STS12.json").write_text("{}")
    monkeypatch.setattr(compare, "read_results", read)
    return compare


def test_a_control_shared_by_every_seed_is_one_run_not_two_seeds_with_no_spread(tmp_path, monkeypatch):
    """A row without parameters of its own has one untrained control for every seed (the same weights, the same
    results folder): it is one run, shown without a seed sd, not the same scores counted once per seed (which showed
    "2 seeds, ± 0.0000"). Controls with weights of their own per seed are one run per seed, with the sample sd."""
    import statistics
    from types import SimpleNamespace

    from poolattn.study.plan import StudyRow

    scores = {
        "shared": ({"STS12": 0.2, "STS13": 0.4}, 42),
        "own42": ({"STS12": 0.5, "STS13": 0.7}, 42),
        "own43": ({"STS12": 0.6, "STS13": 0.9}, 43),
    }
    compare = _stub_results(scores, monkeypatch, tmp_path)
    row = StudyRow("v1", "1", "variant", 1, model_name="o/m")
    plan = SimpleNamespace(budget=100, tasks=None, categories=None)

    def model(fingerprint, seed):
        manifest = SimpleNamespace(seed=seed, recipe_fingerprint=lambda: "recipe")
        return SimpleNamespace(mteb_name="o/m-step0", fingerprint=fingerprint, manifest=manifest)

    shared = compare._replicates(row, [model("shared", 42), model("shared", 43)], tmp_path, plan, True)
    assert len(shared.runs) == 1 and shared.category_means() == {"STS": pytest.approx(0.3)}
    assert shared.seeds == [None]  # no seed of its own: compared with every seed of its trained row, unpaired
    assert shared.category_spread() == {"STS": None}
    item = compare.RowResults(row, [], None, controls=shared)
    assert study_report._cell(item.control(), "STS") == "0.3000"
    own = compare._replicates(row, [model("own42", 42), model("own43", 43)], tmp_path, plan, True)
    assert own.seeds == [42, 43] and own.category_means() == {"STS": pytest.approx(0.675)}
    assert own.category_spread()["STS"] == pytest.approx(statistics.stdev([0.6, 0.75]), abs=1e-12)
    # `--controls first`: the one control (scored on seed 42) stands for every seed, so the trained row keeps all of
    # its seeds in the test; it was taken as seed 42's, and the test of a row trained on 42 and 43 read 42 alone
    first = compare._replicates(row, [model("shared", 42)], tmp_path, plan, True, shared=True)
    assert first.seeds == [None]
    trained, control = compare.on_shared_seeds(own, first)
    assert trained.seeds == [42, 43] and control.seeds == [None]
    assert compare.on_shared_seeds(own, compare._replicates(row, [model("shared", 42)], tmp_path, plan, True))[
        0
    ].seeds == [42]  # a control of seed 42's own: paired with seed 42


def test_each_tuning_proxy_follows_the_schedule_of_the_runs_it_stands_for(tiny_backbone_folder, triplets_file):
    """A proxy of 20 steps whose rate decays to 0 by step 20 chose, for every SmolLM2 row, a rate at which the
    300-step run collapsed (held-out loss back at the untrained 3.07 by step 60): the proxy must train the first steps
    of the run's own schedule. Its length is the plateau rule's cap, else the training flags' --max_steps;
    `--tune-schedule proxy` keeps the old proxy (to resume an older study)."""
    from poolattn.cli import study_command

    flags = ["--backbone", tiny_backbone_folder, "--train_data", triplets_file]

    def grid(*options, train=()):
        argv = ["--designs", "1", "--tune", "--tune-steps", "4", "--tune-eval-steps", "2", *options]
        args = study_command.study_parser().parse_args(argv)
        return study_command._plan(args, [*flags, *train], ablate=False).tuning_grid

    assert grid("--plateau", "--plateau-max-steps", "300").schedule_steps == 300
    assert grid(train=["--max_steps", "50"]).schedule_steps == 50
    assert grid("--tune-schedule", "proxy", train=["--max_steps", "50"]).schedule_steps is None
    assert grid(train=["--max_steps", "50"]).job_fields(1e-3, None)["lr_schedule_steps"] == 50
    with pytest.raises(ValueError, match="shorter than the proxy's 4"):
        grid(train=["--max_steps", "3"])


def test_the_instruction_check_scores_the_sts_tasks_of_the_studys_own_selection(tmp_path):
    """The check (a row scored on STS without instructions too) asked for every STS task of the data dir whatever the
    study selected: a study of `--categories Clustering` scored STS tasks nobody asked for, and one on a data dir
    without STS stopped with "no tasks selected" after its first checked run, again on every resume."""
    data = tiny_suite(tmp_path / "data")
    row = study.StudyRow("v5", "5", "variant", 5)
    plan = lambda **selection: study.StudyPlan(  # noqa: E731
        "b", [42], [row], [], data_dir=str(data), instruction_check=["v5"], **selection
    )
    checked = lambda plan: [scoring for scoring in plan.scorings(row) if not scoring[1]]  # noqa: E731
    assert checked(plan(categories=["Clustering"])) == []
    assert [selection["tasks"] for selection, _ in checked(plan(categories=["STS", "Clustering"]))] == [["BIOSSES"]]
    assert [selection["tasks"] for selection, _ in checked(plan(tasks=["TwentyNewsgroupsClustering", "BIOSSES"]))] == [
        ["BIOSSES"]
    ]
    assert len(plan(categories=["STS"]).scorings(row, control=True)) == 1  # a control: with instructions alone
    shutil.rmtree(data / "BIOSSES")
    assert checked(plan(categories=["Classification", "Clustering"])) == []


def test_a_plan_recorded_before_a_setting_existed_resumes_with_that_settings_default(tmp_path):
    """A study.json written before the tuning's `schedule_steps` existed ran each proxy on its own schedule (what
    `--tune-schedule proxy`, None, now says): its recipe equals the one the same flags give now, not "another
    tuning" that no flag could match."""
    grid = TuningGrid(learning_rates=[1e-4], steps=20, eval_steps=10)
    plan = study.StudyPlan("b", [42], [], ["--preset", "small"], tuning=dataclasses.asdict(grid))
    plan.write(tmp_path)
    recorded = json.loads((tmp_path / "study.json").read_text())
    del recorded["tuning"]["schedule_steps"]
    (tmp_path / "study.json").write_text(json.dumps(recorded))
    assert study.StudyPlan.read(tmp_path).recipe() == plan.recipe()
    plan.tuning["schedule_steps"] = 300
    assert study.StudyPlan.read(tmp_path).recipe() != plan.recipe()


def test_the_tuning_walk_replays_from_its_points_and_says_when_a_row_is_tuned():
    """`points_to_train` replays a row's tuning from its recorded points alone (what resuming, and a check that no
    proxy is left to run, rely on): on a loss with its minimum past the stated grid it walks the edge out step by
    step and stops at an interior choice; on the README study's records it gives variant 1 as tuned (at 9e-4) and
    variant 2's next point as the one the study went on to train (8.1e-3 / 1e-4)."""
    from poolattn.study import tuning

    grid = TuningGrid(learning_rates=[1e-4, 3e-4], head_learning_rates=[1e-4, 1e-3], steps=20, eval_steps=10)
    loss = lambda rate, head: abs(math.log(rate / 2.7e-3)) + abs(math.log(head / 1e-4))  # noqa: E731
    row, trained = tuning.RowTuning("v2", 42), []
    while batch := tuning.points_to_train(row, grid, has_head=True):
        trained.append(batch)
        row.points += [tuning.TuningPoint(rate, head, [[20, loss(rate, head), 0.5]]) for rate, head in batch]
    assert trained[0] == grid.points(has_head=True)
    assert trained[1:] == [
        [(9e-4, 1e-4), (3e-4, pytest.approx(3.33e-5, rel=1e-2))],
        [(2.7e-3, 1e-4)],
        [(8.1e-3, 1e-4)],
    ]
    assert row.points[tuning.chosen_point(row, grid, has_head=True)].learning_rate == 2.7e-3

    records = Path(__file__).resolve().parents[1] / "docs" / "study_records"
    plan, rows = study.StudyPlan.read(records), tuning.read_tuning(records)
    assert tuning.points_to_train(rows["v1"], plan.tuning_grid, has_head=False) == []
    assert rows["v1"].points[tuning.chosen_point(rows["v1"], plan.tuning_grid, has_head=False)].learning_rate == 9e-4
    first_nine = tuning.RowTuning("v2", 42, rows["v2"].points[:9])  # the records before its tenth point
    assert tuning.points_to_train(first_nine, plan.tuning_grid, has_head=True) == [(8.1e-3, 1e-4)]


def test_the_report_counts_rows_tuned_but_not_trained_and_passes_over_a_run_no_task_of_which_scored(tmp_path):
    """On a copy of the README study's records: a row tuned and its control scored, its run not yet trained, has its
    line in the wall-time section and its seconds in the total (they were left out: 2.3 h of v3's); a model whose
    every task failed to score (its results folder holds only `poolattn_run.json`) is "not yet scored", where the
    report stopped on it."""
    from poolattn.evaluation.results import RUN_SETTINGS_FILE
    from poolattn.study.compare import collect
    from poolattn.study.recipe_report import wall_time_section
    from poolattn.study.tuning import read_tuning

    records = tmp_path / "records"
    shutil.copytree(Path(__file__).resolve().parents[1] / "docs" / "study_records", records)
    plan = study.StudyPlan.read(records)
    before = wall_time_section(collect(plan, records), read_tuning(records))
    for model in (records / "runs" / "v2").glob("seed-*/model"):  # v2: tuned, control scored, no run trained
        shutil.rmtree(model)
    after = wall_time_section(collect(plan, records), read_tuning(records))
    v2 = next(line for line in "\n".join(after).splitlines() if line.startswith("| 2 last-layer"))
    assert v2.split(" | ")[1:3] == [f"{sum(p.train_runtime_s for p in read_tuning(records)['v2'].points):.0f}", "0"]
    total = lambda lines: float(next(line for line in lines if line.startswith("Total")).split()[1])  # noqa: E731
    assert total(before) > total(after) and v2.split(" | ")[-1].strip(" |")  # v2's control scoring counted
    for v1_results in (records / "results" / "results" / "poolattn__smollm2-135m-v1").glob(f"*-budget{plan.budget}"):
        for path in v1_results.iterdir():  # every task failed: only the run's settings were written
            if path.name != RUN_SETTINGS_FILE:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    collected = {item.row.key: item for item in collect(plan, records)}
    trained = len(list((records / "runs" / "v1").glob("seed-*/model")))
    assert collected["v1"].replicates is None and len(collected["v1"].models) == trained >= 1


def test_under_torchrun_a_study_is_refused_only_while_its_tuning_or_controls_are_left(
    tiny_backbone_folder, triplets_file, tmp_path, monkeypatch
):
    """Tuning and controls run in one process. Under torchrun a study with either was refused even once both were
    done, and the advice (run them without torchrun, then resume under it with the same command) led back to the
    same refusal. Now it is refused while one is left, naming each, and passes once none is."""
    from poolattn.manifest import MANIFEST_FILE
    from poolattn.study import tuning

    grid = TuningGrid(learning_rates=[1e-4, 3e-4], head_learning_rates=[], steps=20, eval_steps=10)
    plan = study.plan_study(
        designs="1",
        seeds=2,
        train_argv=["--backbone", tiny_backbone_folder, "--train_data", triplets_file],
        tuning=grid,
        controls=True,
        control_seeds="first",
        tasks=["BIOSSES"],
    )
    output = tmp_path / "study"
    label = plan.rows[0].label
    assert study_runner.one_process_work_left(plan, output) == [f"{label}: tuning", f"{label}, seed 42: control"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(study.StudyError, match=f"some left: {label}: tuning; {label}, seed 42: control. Run the"):
        study.run_study(plan, output)
    curve = lambda loss: [[20, loss, 0.5]]  # noqa: E731
    points = [tuning.TuningPoint(1e-4, None, curve(2.0)), tuning.TuningPoint(3e-4, None, curve(1.0))]
    tuning.write_tuning(output, grid, {"v1": tuning.RowTuning("v1", 42, points, chosen=1)})
    assert study_runner.one_process_work_left(plan, output)[0] == f"{label}: tuning"  # 3e-4 is at the edge: 9e-4
    points.append(tuning.TuningPoint(9e-4, None, curve(1.5)))
    tuning.write_tuning(output, grid, {"v1": tuning.RowTuning("v1", 42, points, chosen=1)})
    (output / "runs" / "v1" / "seed-42" / "step0").mkdir(parents=True)
    (output / "runs" / "v1" / "seed-42" / "step0" / MANIFEST_FILE).write_text("{}")
    assert study_runner.one_process_work_left(plan, output) == []  # seed 43 has no control of its own (first)


def test_a_row_lacking_one_task_of_a_category_gets_no_average_beside_the_others(tmp_path):
    """The average was left out only for a row lacking a whole category: a row lacking one STS task printed an
    average over other tasks than the rows beside it."""
    from types import SimpleNamespace

    def item(label, tasks, means):
        replicates = SimpleNamespace(
            tasks=tasks, runs=[0], category_means=lambda: means, category_spread=lambda: {c: None for c in means}
        )
        return SimpleNamespace(row=SimpleNamespace(label=label), replicates=replicates)

    scored = [
        item("full", ["STS12", "STS13", "WikiQA"], {"STS": 0.5, "Retrieval": 0.5}),
        item("short", ["STS12", "WikiQA"], {"STS": 0.9, "Retrieval": 0.5}),  # STS13 missing
    ]
    table = "\n".join(study_report._main_table(scored, ["STS", "Retrieval"]))
    assert "| full | 1 | 0.5000 | 0.5000 | 0.5000 |" in table
    assert "| short | 1 | 0.9000 | 0.5000 | — |" in table


def test_the_bar_figure_draws_no_bar_where_a_row_has_no_score_and_every_control_in_a_visible_colour(
    tmp_path, monkeypatch
):
    """A category a row was not scored on was drawn as a bar of 0.0 (the table shows "—"); a control drawn after
    another control (its own run not scored yet) took that control's open, transparent face as its edge: invisible."""
    from matplotlib.colors import to_rgba

    from poolattn import plots

    drawn = []
    make_figure = plots._figure

    def figure(width, height):
        made, axis = make_figure(width, height)
        original = axis.bar

        def bar(xs, heights, *args, **kwargs):
            drawn.append((kwargs["label"], list(xs), list(heights), kwargs))
            return original(xs, heights, *args, **kwargs)

        axis.bar = bar
        return made, axis

    rows = [
        plots.Bars("v1", "variant", {"STS": 0.7, "Retrieval": 0.8}),
        plots.Bars("v1 · step 0", "control", {"STS": 0.3, "Retrieval": 0.1}),
        plots.Bars("v3 · step 0", "control", {"STS": 0.3}),  # its run not scored yet; no retrieval score
    ]
    monkeypatch.setattr(plots, "_figure", figure)
    plots.study_bars(tmp_path / "bars.png", rows, ["STS", "Retrieval"], "t")
    expected = [("v1", 2), ("v1 · step 0", 2), ("v3 · step 0", 1)]
    assert [(label, len(heights)) for label, _, heights, _ in drawn] == expected
    assert drawn[1][3]["edgecolor"] == drawn[0][3]["color"]  # a control in its row's colour
    assert to_rgba(drawn[2][3]["edgecolor"])[3] == 1.0 and drawn[2][3]["edgecolor"] != drawn[0][3]["color"]
    assert (tmp_path / "bars.png").stat().st_size > 0


def test_the_wall_time_counts_every_stage_of_a_row():
    """The total counted the runs' training and their scoring with instructions only: the tuning, the controls'
    scoring and the instruction check's scoring were left out (on the README study's records: 2.49 h of 4.27 h)."""
    from types import SimpleNamespace

    from poolattn.study import tuning
    from poolattn.study.recipe_report import wall_time_section

    def scored(*seconds):
        return SimpleNamespace(
            runs=[SimpleNamespace(origin=None, task_results=[SimpleNamespace(evaluation_time=s)]) for s in seconds]
        )

    item = SimpleNamespace(
        row=SimpleNamespace(key="v5", label="5"),
        models=[SimpleNamespace(manifest=SimpleNamespace(train_runtime_s=t)) for t in (1000.0, 1200.0)],
        replicates=scored(100.0, 140.0),
        without_instructions=scored(20.0, 20.0),
        controls=scored(90.0),
    )
    points = [tuning.TuningPoint(1e-4, 1e-4, [[20, 1.0, 0.5]], train_runtime_s=s) for s in (200.0, 160.0)]
    text = "\n".join(wall_time_section([item], {"v5": tuning.RowTuning("v5", 42, points, chosen=0)}))
    assert "| 5 | 360 | 2 | 1100 | 140 | 90 |" in text
    total = 360 + 2200 + 240 + 40 + 90
    assert f"Total: {total / 3600:.2f} h of tuning, training and scoring" in text
