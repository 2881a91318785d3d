"""The recipe of a run: the pooling head's own learning rate, training to a plateau, and resuming only into the same
recipe (tiny backbone, CPU)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TRIPLETS
from safetensors.torch import load_file
from test_training import TINY_RUN

from poolattn import training
from poolattn.records import head_parameter
from poolattn.training.plateau import plateau_step
from poolattn.training.trainer import ContrastiveTrainer


def common(backbone, data, output, *extra):
    return [
        "--variant",
        "5",
        "--backbone",
        backbone,
        "--train_data",
        data,
        "--output_dir",
        str(output),
        *TINY_RUN,
        *extra,
    ]


def test_the_head_rate_reaches_only_the_head_and_survives_resume(
    tiny_backbone_folder, triplets_file, tmp_path, monkeypatch
):
    seen = {}
    original_step = ContrastiveTrainer.training_step

    def record_groups(self, *args, **kwargs):
        names = {id(parameter): name for name, parameter in self.model.named_parameters()}
        seen[self.state.global_step] = [
            (group["lr"], {head_parameter(names[id(parameter)]) for parameter in group["params"]})
            for group in self.optimizer.param_groups
        ]
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(ContrastiveTrainer, "training_step", record_groups)
    # no warmup, linear decay over 4 steps: step k (0-based) runs at rate x (1 - k/4) in every group
    exported = training.main(
        common(tiny_backbone_folder, triplets_file, tmp_path / "run", "--head_learning_rate", "5e-2")
    )[0]
    for step, groups in seen.items():
        factor = 1 - step / 4
        assert all(len(kinds) == 1 for _, kinds in groups)  # no group mixes head and backbone parameters
        assert {next(iter(kinds)) for _, kinds in groups} == {True, False}
        for rate, kinds in groups:
            expected = (5e-2 if True in kinds else 1e-2) * factor
            assert rate == pytest.approx(expected, rel=1e-6), (step, kinds)
    manifest = json.loads((exported / "training_manifest.json").read_text())
    assert manifest["settings"]["head_learning_rate"] == 5e-2 and manifest["settings"]["learning_rate"] == 1e-2

    # killed after checkpoint-2, resumed: the head keeps its own rate, and the model equals the straight run's
    seen.clear()

    def crash_after_two(self, *args, **kwargs):
        if self.state.global_step == 2:
            raise KeyboardInterrupt("simulated kill")
        return record_groups(self, *args, **kwargs)

    monkeypatch.setattr(ContrastiveTrainer, "training_step", crash_after_two)
    arguments = common(tiny_backbone_folder, triplets_file, tmp_path / "resumed", "--head_learning_rate", "5e-2")
    with pytest.raises(KeyboardInterrupt):
        training.main(arguments)
    monkeypatch.setattr(ContrastiveTrainer, "training_step", record_groups)
    seen.clear()
    resumed = training.main([*arguments, "--resume_from_checkpoint", "true"])[0]
    assert sorted(seen) == [2, 3]
    for rate, kinds in seen[2]:
        assert rate == pytest.approx((5e-2 if True in kinds else 1e-2) * 0.5, rel=1e-6)
    expected, actual = load_file(exported / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6, msg=name)


def test_a_head_rate_is_recorded_only_for_designs_with_a_head(tiny_backbone_folder, triplets_file, tmp_path, caplog):
    """Variant 1 and the mean baselines have no pooling head: --head_learning_rate reached no weight of theirs, yet
    their manifest and card said "lr 0.01 (pooling head 0.05)", without a word at training time."""
    from poolattn.manifest import TrainingManifest

    arguments = common(tiny_backbone_folder, triplets_file, tmp_path / "run", "--head_learning_rate", "5e-2")
    arguments[1] = "1,5"
    arguments[arguments.index("--max_steps") + 1] = "1"
    with caplog.at_level("WARNING", logger="poolattn"):
        exported = dict(zip((1, 5), training.main(arguments)))
    assert "--head_learning_rate 0.05 does not apply to --variant 1: no pooling head" in caplog.text
    headless, with_head = (TrainingManifest.read(exported[variant]) for variant in (1, 5))
    assert headless.settings.head_learning_rate is None and headless.settings.describe_rates() == "lr 0.01"
    assert headless.hyperparameters["head_learning_rate"] == 5e-2  # the flags as given
    assert with_head.settings.describe_rates() == "lr 0.01 (pooling head 0.05)"


def test_resuming_with_another_recipe_is_refused_by_name(tiny_backbone_folder, triplets_file, tmp_path, monkeypatch):
    original_step = ContrastiveTrainer.training_step

    def crash_after_two(self, *args, **kwargs):
        if self.state.global_step == 2:
            raise KeyboardInterrupt("simulated kill")
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(ContrastiveTrainer, "training_step", crash_after_two)
    output = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        training.main(common(tiny_backbone_folder, triplets_file, output))
    monkeypatch.setattr(ContrastiveTrainer, "training_step", original_step)
    with pytest.raises(training.TrainingSetupError, match=r"head_learning_rate: 'None' there, 0\.05 now"):
        training.main(
            common(
                tiny_backbone_folder,
                triplets_file,
                output,
                "--head_learning_rate",
                "5e-2",
                "--resume_from_checkpoint",
                "true",
            )
        )
    with pytest.raises(training.TrainingSetupError, match=r"seed: 42 there, 7 now"):
        training.main(
            common(tiny_backbone_folder, triplets_file, output, "--seed", "7", "--resume_from_checkpoint", "true")
        )
    # rows held out now were trained on there (the held-out fraction was left out of the recipe)
    with pytest.raises(training.TrainingSetupError, match=r"eval_fraction: 0\.0 there, 0\.25 now"):
        training.main(
            common(
                tiny_backbone_folder,
                triplets_file,
                output,
                "--eval_fraction",
                "0.25",
                "--per_device_eval_batch_size",
                "2",
                "--resume_from_checkpoint",
                "true",
            )
        )
    # the same file name with other rows is other data
    rows = [json.loads(line) for line in Path(triplets_file).read_text().splitlines()]
    with open(triplets_file, "w") as handle:
        handle.writelines(json.dumps({**row, "query": row["query"] + " again"}) + "\n" for row in rows)
    with pytest.raises(training.TrainingSetupError, match="data_fingerprint"):
        training.main(common(tiny_backbone_folder, triplets_file, output, "--resume_from_checkpoint", "true"))
    assert not (output / "model").exists()


def test_a_recipe_key_added_later_is_compared_only_where_a_record_holds_it():
    """Runs recorded before `eval_fraction` joined the recipe still resume (a study's runs in progress); every record
    written since is compared on it."""
    from poolattn.training.recipes import recipe_differences

    assert recipe_differences({"seed": 1}, {"seed": 1, "eval_fraction": 0.1}) == []
    assert recipe_differences({"seed": 1, "eval_fraction": 0.0}, {"seed": 1, "eval_fraction": 0.1}) == [
        "eval_fraction: 0.0 there, 0.1 now"
    ]


def test_a_finished_run_is_kept_on_resume_only_for_the_same_recipe(tiny_backbone_folder, triplets_file, tmp_path):
    """Resuming a job whose run already exported its model keeps that model only when it was trained with the flags
    given now; another recipe is refused by name (from the last checkpoint's record, or, with no checkpoint left,
    from the model's manifest) instead of reporting the old model as the new run's."""
    import shutil

    output = tmp_path / "run"
    model = training.main(common(tiny_backbone_folder, triplets_file, output))[0]
    weights = (model / "model.safetensors").read_bytes()
    resume = ["--resume_from_checkpoint", "true"]
    assert training.main(common(tiny_backbone_folder, triplets_file, output, *resume))[0] == model  # kept
    assert (model / "model.safetensors").read_bytes() == weights
    with pytest.raises(training.TrainingSetupError, match=r"finished run .*learning_rate: 0\.01 there, 0\.001 now"):
        training.main(common(tiny_backbone_folder, triplets_file, output, *resume, "--learning_rate", "1e-3"))
    for checkpoint in output.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    with pytest.raises(training.TrainingSetupError, match=r"finished run .*learning_rate: 0\.01 there, 0\.001 now"):
        training.main(common(tiny_backbone_folder, triplets_file, output, *resume, "--learning_rate", "1e-3"))
    assert training.main(common(tiny_backbone_folder, triplets_file, output, *resume))[0] == model
    assert (model / "model.safetensors").read_bytes() == weights
    # the data edited since: the manifest's data fingerprint refuses it too (no checkpoint is left to say so)
    edited = tmp_path / "edited.jsonl"
    edited.write_text(Path(triplets_file).read_text())
    model = training.main(common(tiny_backbone_folder, str(edited), tmp_path / "again"))[0]
    for checkpoint in (tmp_path / "again").glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    edited.write_text("".join(Path(triplets_file).read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(training.TrainingSetupError, match=r"finished run .*data_fingerprint: '[0-9a-f]+' there"):
        training.main(common(tiny_backbone_folder, str(edited), tmp_path / "again", *resume))


def test_an_interrupted_overwrite_cannot_resume_into_the_earlier_model(
    tiny_backbone_folder, triplets_file, tmp_path, monkeypatch
):
    output = tmp_path / "run"
    training.main(common(tiny_backbone_folder, triplets_file, output))
    # an even earlier model, retired by an export killed between its two renames: the next save put it back
    shutil.copytree(output / "model", output / ".model.old-99999")
    original_step = ContrastiveTrainer.training_step

    def crash_at_once(self, *args, **kwargs):
        raise KeyboardInterrupt("simulated kill before the first checkpoint")

    monkeypatch.setattr(ContrastiveTrainer, "training_step", crash_at_once)
    with pytest.raises(KeyboardInterrupt):
        training.main(
            common(
                tiny_backbone_folder,
                triplets_file,
                output,
                "--learning_rate",
                "5e-3",
                "--overwrite_output_dir",
                "true",
            )
        )
    assert not (output / "model").exists()  # nothing for a resume to call "finished already"
    assert not list(output.glob(".model.*"))  # nor to put back as the model
    monkeypatch.setattr(ContrastiveTrainer, "training_step", original_step)
    again = training.main(
        common(
            tiny_backbone_folder, triplets_file, output, "--learning_rate", "5e-3", "--resume_from_checkpoint", "true"
        )
    )[0]
    assert json.loads((again / "training_manifest.json").read_text())["settings"]["learning_rate"] == 5e-3


def script_held_out_losses(monkeypatch, losses) -> list:
    """Every held-out evaluation reports the next of `losses` as its loss (an evaluation past them fails the test);
    returns the queue, which a test may refill."""
    queue = list(losses)
    original_loop = ContrastiveTrainer.evaluation_loop

    def scripted_loss(self, *args, **kwargs):
        output = original_loop(self, *args, **kwargs)
        output.metrics["eval_loss"] = queue.pop(0)
        return output

    monkeypatch.setattr(ContrastiveTrainer, "evaluation_loop", scripted_loss)
    return queue


def test_a_more_patient_plateau_rule_keeps_what_the_old_rule_did_not_stop(
    tiny_backbone_folder, triplets_file, tmp_path, monkeypatch
):
    """A study that raises --plateau_patience keeps its runs that ended at the cap (they trained as they would have
    under the new rule) without a step more; a run the old rule stopped trains on from its last checkpoint under the
    new rule, its model replaced by the new export (it was refused); a less patient rule is refused for either."""
    from poolattn.training.recipes import check_resume_recipe, recorded_recipe

    def run(output, patience, *extra):
        arguments = [
            *common(tiny_backbone_folder, triplets_file, output, "--eval_fraction", "0.34"),
            *("--per_device_eval_batch_size", "4", "--plateau_patience", str(patience), *extra),
        ]
        arguments[arguments.index("--save_steps") + 1] = "1"
        arguments[arguments.index("--max_steps") + 1] = "5"
        return training.main(arguments)[0]

    def manifest(folder):
        return json.loads((folder / "training_manifest.json").read_text())

    queue = script_held_out_losses(monkeypatch, [2.0, 1.9, 1.8, 1.7, 1.6])  # improving: the cap ends it
    capped = run(tmp_path / "capped", 2)
    assert manifest(capped)["stop"]["reason"] == "max_steps" and manifest(capped)["global_steps"] == 5
    assert queue == []  # from here an evaluation (a step trained) fails the test
    kept = run(tmp_path / "capped", 4, "--resume_from_checkpoint", "true")
    assert manifest(kept)["global_steps"] == 5 and manifest(kept)["hyperparameters"]["plateau_patience"] == 2
    with pytest.raises(training.TrainingSetupError, match=r"plateau_patience: 2 there, 1 now.*Run with the same"):
        run(tmp_path / "capped", 1, "--resume_from_checkpoint", "true")

    queue[:] = [2.0, 2.0, 2.0]  # flat: patience 2 stops it at step 3
    stopped = run(tmp_path / "stopped", 2)
    assert manifest(stopped)["stop"]["reason"] == "plateau" and manifest(stopped)["global_steps"] == 3
    with pytest.raises(training.TrainingSetupError, match=r"plateau_patience: 2 there, 1 now.*Run with the same"):
        run(tmp_path / "stopped", 1, "--resume_from_checkpoint", "true")
    queue[:] = [1.5, 1.4]  # the evaluations of the two steps trained on
    resumed = run(tmp_path / "stopped", 4, "--resume_from_checkpoint", "true")
    assert manifest(resumed)["global_steps"] == 5 and manifest(resumed)["stop"]["reason"] == "max_steps"
    assert [step for step, _, _ in manifest(resumed)["eval_history"]] == [1, 2, 3, 4, 5]
    checkpoint = sorted((tmp_path / "stopped").glob("checkpoint-*"))[-1]
    recorded = recorded_recipe(checkpoint)
    check_resume_recipe(checkpoint, {**recorded, "plateau_patience": 9, "plateau_min_improvement": 0.001})
    for less_patient in ({"plateau_patience": 1}, {"plateau_min_improvement": 0.5}, {"plateau_patience": None}):
        with pytest.raises(training.TrainingSetupError, match=next(iter(less_patient))):
            check_resume_recipe(checkpoint, {**recorded, **less_patient})  # it may have gone on where this one stops


def test_the_plateau_rule_stops_a_run_and_records_why(tiny_backbone_folder, triplets_file, tmp_path, monkeypatch):
    # a held-out loss that stops improving after the first evaluation: the rule stops at the third (patience 2)
    losses = script_held_out_losses(monkeypatch, [2.0, 1.999, 1.998, 1.5, 1.4, 1.3])
    arguments = [
        "--variant",
        "5",
        "--backbone",
        tiny_backbone_folder,
        "--train_data",
        triplets_file,
        "--output_dir",
        str(tmp_path / "run"),
        "--eval_fraction",
        "0.34",
        "--per_device_eval_batch_size",
        "4",
        "--plateau_patience",
        "2",
        "--plateau_min_improvement",
        "0.01",
        *TINY_RUN[: TINY_RUN.index("--max_steps")],
        "--max_steps",
        "12",
        *TINY_RUN[TINY_RUN.index("--max_steps") + 2 :],
    ]
    arguments[arguments.index("--save_steps") + 1] = "1"
    exported = training.main(arguments)[0]
    manifest = json.loads((exported / "training_manifest.json").read_text())
    assert manifest["global_steps"] == 3 and [step for step, _, _ in manifest["eval_history"]] == [1, 2, 3]
    stop = manifest["stop"]
    assert (stop["reason"], stop["step"], stop["cap"], stop["best_step"]) == ("plateau", 3, 12, 3)
    assert "1% for 2 evaluations in a row (one every 1 steps), or at 12 steps" in stop["rule"]
    # a checkpoint written at the plateau is a finished run: resuming exports it without a step more
    shutil.rmtree(exported)
    losses[:] = [9.0]  # would move the rule if an evaluation ran
    again = training.main([*arguments, "--resume_from_checkpoint", "true"])[0]
    assert json.loads((again / "training_manifest.json").read_text())["global_steps"] == 3
    # without a plateau the cap ends the run, and the record says so
    capped = training.main(
        [
            "--variant",
            "5",
            "--backbone",
            tiny_backbone_folder,
            "--train_data",
            triplets_file,
            "--output_dir",
            str(tmp_path / "capped"),
            *TINY_RUN,
        ]
    )[0]
    assert json.loads((capped / "training_manifest.json").read_text())["stop"]["reason"] == "max_steps"
    with pytest.raises(ValueError, match="--plateau_patience need evaluation data"):
        training.main(
            [
                "--backbone",
                tiny_backbone_folder,
                "--train_data",
                triplets_file,
                "--plateau_patience",
                "2",
                "--output_dir",
                str(tmp_path / "never"),
            ]
        )


@pytest.mark.parametrize(
    "rule, refusal",
    [
        (
            ["--plateau_patience", "2"],
            r"--plateau_patience 2 needs 3 held-out evaluations to stop a run, but one every "
            r"50 steps .* within --max_steps 4 makes 1, so the rule could never act",
        ),
        (
            ["--plateau_patience", "2", "--eval_strategy", "steps", "--eval_steps", "3"],
            r"--plateau_patience 2 needs 3 held-out evaluations .* one every 3 steps .* makes 2",
        ),
        (
            [*("--early_stopping_patience", "1", "--load_best_model_at_end", "true", "--eval_strategy", "steps")],
            r"--early_stopping_patience 1 needs 2 held-out evaluations .* one every 50 steps",
        ),
    ],
)
def test_a_stopping_rule_that_could_never_act_is_refused_before_training(
    rule, refusal, tiny_backbone_folder, triplets_file, tmp_path
):
    """With fewer evaluations within --max_steps than the patience needs, the run trained to the cap, exit 0, as if
    no rule had been asked for."""
    arguments = common(tiny_backbone_folder, triplets_file, tmp_path / "run", "--eval_fraction", "0.34")
    arguments[arguments.index("--save_steps") + 1] = "50"
    arguments += ["--per_device_eval_batch_size", "4", *rule]
    if "--eval_steps" not in rule:
        arguments += ["--eval_steps", "50"] if "--eval_strategy" in rule else []
    with pytest.raises(training.TrainingSetupError, match=refusal):
        training.main(arguments)
    assert not (tmp_path / "run").exists()


def test_a_plateau_run_with_load_best_exports_its_best_checkpoint_and_resumes_to_it(
    tiny_backbone_folder, triplets_file, tmp_path, monkeypatch
):
    """--load_best_model_at_end with the plateau rule: the best held-out loss is at step 2, the rule stops at step 4;
    the export equals checkpoint-2 merged (not the last step), the manifest says so, and resuming the finished run
    after its export was lost exports checkpoint-2 again."""
    from poolattn.training.checkpoints import load_checkpoint

    script_held_out_losses(monkeypatch, [2.0, 1.5, 1.6, 1.7, 9.0, 9.0])
    arguments = [
        *("--variant", "5", "--backbone", tiny_backbone_folder, "--train_data", triplets_file),
        *("--output_dir", str(tmp_path / "run"), "--eval_fraction", "0.34", "--per_device_eval_batch_size", "4"),
        *("--plateau_patience", "2", "--load_best_model_at_end", "true", "--metric_for_best_model", "eval_loss"),
        *("--max_steps", "12", "--per_device_train_batch_size", "4", "--save_steps", "1", "--learning_rate", "1e-2"),
        *("--warmup_steps", "0", "--logging_steps", "1"),
    ]
    exported = training.main(arguments)[0]
    stop = json.loads((exported / "training_manifest.json").read_text())["stop"]
    assert (stop["reason"], stop["step"], stop["best_step"], stop["exported_step"]) == ("plateau", 4, 2, 2)

    def weights(model) -> dict:
        return {name: value.detach().clone() for name, value in model.state_dict().items()}

    best, last = (weights(load_checkpoint(tmp_path / "run" / f"checkpoint-{step}")) for step in (2, 4))
    written = load_file(exported / "model.safetensors")
    assert any(not torch.equal(best[name], last[name]) for name in best)  # the two steps differ
    for name, value in written.items():
        torch.testing.assert_close(value, best[name], rtol=0, atol=1e-6, msg=name)
    shutil.rmtree(exported)  # killed during the export: the rerun exports the same best checkpoint
    again = training.main([*arguments, "--resume_from_checkpoint", "true"])[0]
    for name, value in load_file(again / "model.safetensors").items():
        torch.testing.assert_close(value, best[name], rtol=0, atol=1e-6, msg=name)


def test_a_run_resumed_after_its_folder_moved_still_exports_its_best_checkpoint(
    tiny_backbone_folder, triplets_file, tmp_path, monkeypatch
):
    """The Trainer records the best checkpoint by its absolute path and drops it on resume when the folder has moved
    (a study folder moved or copied to another machine, transformers warns); it finds it again by its step at its
    next save, and the last step always saves: a run resumed after its last regular save (here from checkpoint-4 of
    5, evaluated and saved every 2 steps) still exports its best checkpoint, and its manifest says which."""
    from poolattn.training.checkpoints import load_checkpoint

    script_held_out_losses(monkeypatch, [1.5, 1.6, 1.7, 1.7, 1.8])  # steps 2, 4, (5): the best is step 2
    arguments = [
        *("--variant", "5", "--backbone", tiny_backbone_folder, "--train_data", triplets_file),
        *("--eval_fraction", "0.34", "--per_device_eval_batch_size", "4", "--eval_strategy", "steps"),
        *("--load_best_model_at_end", "true", "--metric_for_best_model", "eval_loss", "--eval_steps", "2"),
        *("--max_steps", "5", "--per_device_train_batch_size", "4", "--save_steps", "2", "--learning_rate", "1e-2"),
        *("--warmup_steps", "0", "--logging_steps", "1", "--save_total_limit", "5"),
    ]
    training.main([*arguments, "--output_dir", str(tmp_path / "run")])
    shutil.rmtree(tmp_path / "run" / "model")  # killed after checkpoint-4, before the export; then the folder moved
    shutil.rmtree(tmp_path / "run" / "checkpoint-5")
    shutil.move(tmp_path / "run", tmp_path / "moved")
    exported = training.main([*arguments, "--output_dir", str(tmp_path / "moved"), "--resume_from_checkpoint", "true"])
    stop = json.loads((exported[0] / "training_manifest.json").read_text())["stop"]
    assert (stop["step"], stop["best_step"], stop["exported_step"]) == (5, 2, 2)
    best = load_checkpoint(tmp_path / "moved" / "checkpoint-2").state_dict()
    for name, value in load_file(exported[0] / "model.safetensors").items():
        torch.testing.assert_close(value, best[name], rtol=0, atol=1e-6, msg=name)


def test_a_resumed_run_reports_its_whole_training_time(tiny_backbone_folder, triplets_file, tmp_path):
    """Each checkpoint records the training time spent so far; a run resumed from one reports that time plus its
    own, not the last segment alone (the study's wall time per stage reads it)."""
    from poolattn.model_folder import CHECKPOINT_RECORD

    arguments = ["--variant", "5", "--backbone", tiny_backbone_folder, "--train_data", triplets_file, *TINY_RUN]
    whole = training.main([*arguments, "--output_dir", str(tmp_path / "run")])[0]
    uninterrupted = json.loads((whole / "training_manifest.json").read_text())["train_runtime_s"]
    record_path = tmp_path / "run" / "checkpoint-2" / CHECKPOINT_RECORD
    record = json.loads(record_path.read_text())
    assert 0 < record["train_seconds"] <= uninterrupted
    record["train_seconds"] = 1000.0  # as if the first two steps had taken 1000 s before the run was killed
    record_path.write_text(json.dumps(record))
    shutil.rmtree(whole)
    shutil.rmtree(tmp_path / "run" / "checkpoint-4")
    resumed = training.main([*arguments, "--output_dir", str(tmp_path / "run"), "--resume_from_checkpoint", "true"])
    seconds = json.loads((resumed[0] / "training_manifest.json").read_text())["train_runtime_s"]
    assert seconds > 1000.0  # the recorded 1000 s plus the resumed two steps (without the record: the two alone)
    assert json.loads((tmp_path / "run" / "checkpoint-4" / CHECKPOINT_RECORD).read_text())["train_seconds"] > 1000


def test_plateau_step_counts_evaluations_without_a_relative_improvement():
    history = [{"step": s, "eval_loss": v} for s, v in [(1, 1.0), (2, 0.995), (3, 0.98), (4, 0.9)]]
    assert plateau_step(history, patience=2, min_improvement=0.01) is None  # 0.98 < 0.99: an improvement
    assert plateau_step(history, patience=1, min_improvement=0.01) == 2
    assert plateau_step(history, patience=1, min_improvement=0.0) is None  # every step improves
    assert plateau_step([{"step": 1, "loss": 3.0}], patience=1, min_improvement=0.01) is None


@pytest.mark.parametrize(
    "early_stopping, max_steps, global_step, planned, reason",
    [
        (True, -1, 4, 9, "early_stopping"),  # the callback ended the epochs' 9 steps at 4
        (True, 4, 4, 4, "max_steps"),  # it was there, but the cap ended the run
        (False, -1, 9, 9, "end_of_data"),  # best-model export without early stopping: the epochs ended it
        (True, -1, 9, 9, "end_of_data"),  # the callback never fired
    ],
)
def test_the_stop_record_says_early_stopping_only_when_the_trainer_stopped_early(
    early_stopping, max_steps, global_step, planned, reason
):
    from types import SimpleNamespace

    from transformers import EarlyStoppingCallback

    from poolattn.training.checkpoints import stop_record

    history = [{"step": 2, "eval_loss": 1.0}, {"step": 4, "eval_loss": 1.2}]
    state = SimpleNamespace(
        log_history=history, global_step=global_step, max_steps=planned, best_model_checkpoint=None
    )
    callbacks = [EarlyStoppingCallback(early_stopping_patience=1)] if early_stopping else []
    arguments = SimpleNamespace(max_steps=max_steps, load_best_model_at_end=True, eval_steps=2, output_dir="o")
    trainer = SimpleNamespace(state=state, args=arguments, callback_handler=SimpleNamespace(callbacks=callbacks))
    record = stop_record(trainer, arguments)
    assert (record.reason, record.best_step) == (reason, 2)


def test_a_second_run_into_a_busy_folder_is_refused_naming_the_holder(
    tiny_backbone_folder, triplets_file, tmp_path, caplog
):
    import os
    import subprocess
    import sys

    from poolattn import cli
    from poolattn.files import LOCK_FILE

    output = tmp_path / "run"
    output.mkdir()
    holder = {
        "pid": os.getpid(),
        "host": __import__("socket").gethostname(),
        "command": "train.py --variant 5",
        "what": "training run",
    }
    (output / LOCK_FILE).write_text(json.dumps(holder))
    with pytest.raises(
        SystemExit,
        match=rf"being written by another training run \(pid {os.getpid()} .*"
        r"train.py --variant 5\)",
    ):
        cli.train(common(tiny_backbone_folder, triplets_file, output))
    assert sorted(path.name for path in output.iterdir()) == [LOCK_FILE]  # nothing written, the lock kept
    # a lock left by a killed run (its process is gone) is taken over, with a warning, and released at the end
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (output / LOCK_FILE).write_text(json.dumps({**holder, "pid": int(gone.stdout)}))
    exported = training.main(common(tiny_backbone_folder, triplets_file, output))[0]
    assert exported.is_dir() and not (output / LOCK_FILE).exists()
    assert "taking over the lock of a training run that is gone" in caplog.text
    # a folder inside one that another live process holds (a study's runs/<row>/seed-<S>) is refused too
    busy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (output / LOCK_FILE).write_text(json.dumps({**holder, "pid": busy.pid, "what": "study"}))
        inside = rf"run/v5 is inside .*run, which another study is writing \(pid {busy.pid}"
        with pytest.raises(SystemExit, match=inside):
            cli.train(common(tiny_backbone_folder, triplets_file, output / "v5"))
        assert not (output / "v5").exists()
    finally:
        busy.kill()


def test_a_run_killed_at_any_write_point_reruns_to_the_uninterrupted_result(
    tiny_backbone_folder, triplets_file, tmp_path, monkeypatch
):
    """Fault injection: the run is killed before its k-th write (checkpoints, checkpoint records, the export, the
    manifest), for every k; the same command with --resume_from_checkpoint true then ends with the weights and steps
    of a run that was never interrupted."""
    from transformers import Trainer

    from poolattn import export, files

    arguments = common(tiny_backbone_folder, triplets_file, tmp_path / "straight")
    straight = training.main(arguments)[0]
    expected = load_file(straight / "model.safetensors")
    writes = {"count": 0, "kill_at": None}

    def instrumented(module, name):
        original = getattr(module, name)

        def write(*args, **kwargs):
            writes["count"] += 1
            if writes["count"] == writes["kill_at"]:
                raise KeyboardInterrupt(f"killed before write {writes['count']} ({name})")
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, write)

    for module, name in ((files, "write_text"), (export, "atomic_save"), (Trainer, "_save_checkpoint")):
        instrumented(module, name)
    training.main(common(tiny_backbone_folder, triplets_file, tmp_path / "counted"))
    total = writes["count"]
    assert total >= 6  # two checkpoints with their records, the export and its manifest
    for kill_at in range(1, total + 1):
        output = tmp_path / f"killed-{kill_at}"
        writes.update(count=0, kill_at=kill_at)
        with pytest.raises(KeyboardInterrupt):
            training.main(common(tiny_backbone_folder, triplets_file, output))
        writes.update(count=0, kill_at=None)
        resumed = training.main(
            [*common(tiny_backbone_folder, triplets_file, output), "--resume_from_checkpoint", "true"]
        )[0]
        for key, value in load_file(resumed / "model.safetensors").items():
            torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-6, msg=f"kill at {kill_at}: {key}")
        recorded = json.loads((resumed / "training_manifest.json").read_text())
        assert recorded["global_steps"] == 4 and [step for step, _ in recorded["loss_history"]] == [1, 2, 3, 4]


def test_a_run_can_follow_the_schedule_of_a_longer_run(tiny_backbone_folder, triplets_file, tmp_path, monkeypatch):
    """A tuning proxy trains the first steps of the run it stands for: `--lr_schedule_steps 40` with `--max_steps 4`
    runs step k at the 40-step schedule's rate (no warmup, linear decay: 1 - k/40), not the 4-step one's (1 - k/4),
    which reaches 0 by the proxy's end and judged rates the full runs could not hold. Recorded in the manifest."""
    seen = {}
    original_step = ContrastiveTrainer.training_step

    def record_rate(self, *args, **kwargs):
        seen[self.state.global_step] = self.optimizer.param_groups[0]["lr"]
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(ContrastiveTrainer, "training_step", record_rate)
    exported = training.main(
        common(tiny_backbone_folder, triplets_file, tmp_path / "run", "--lr_schedule_steps", "40")
    )[0]
    assert sorted(seen) == [0, 1, 2, 3]
    for step, rate in seen.items():
        assert rate == pytest.approx(1e-2 * (1 - step / 40), rel=1e-6), step
    manifest = json.loads((exported / "training_manifest.json").read_text())
    assert manifest["settings"]["lr_schedule_steps"] == 40 and manifest["global_steps"] == 4
    from poolattn.records import TrainingSettings  # a run of its own schedule records none (not the text "None")

    own_schedule = {**manifest["hyperparameters"], "lr_schedule_steps": "None"}
    assert TrainingSettings.from_arguments(own_schedule).lr_schedule_steps is None
    with pytest.raises((SystemExit, ValueError), match="--lr_schedule_steps 2 must be >= 1 and >= --max_steps 4"):
        training.main(common(tiny_backbone_folder, triplets_file, tmp_path / "short", "--lr_schedule_steps", "2"))


def test_evaluating_more_often_trains_the_same_model(tiny_backbone_folder, triplets_file, tmp_path):
    """Held-out evaluation must not change what is trained: iterating the held-out loader drew from torch's random
    state, so with dropout the run evaluated every step and the run evaluated only at its end (step 4) trained
    different weights (0.017 apart after 4 steps), and a tuning proxy (scored every 10 steps) was not the first steps
    of its run (scored every 20). Same held-out rows, same data order; only the evaluations differ."""
    exported = {}
    for every in ("1", "4"):
        arguments = common(tiny_backbone_folder, triplets_file, tmp_path / every, "--lora_dropout", "0.1")
        arguments += ["--eval_fraction", "0.3", "--per_device_eval_batch_size", "2", "--save_steps", every]
        exported[every] = load_file(training.main(arguments)[0] / "model.safetensors")
    for name, weights in exported["4"].items():
        torch.testing.assert_close(exported["1"][name], weights, rtol=0, atol=0, msg=name)


def test_an_early_stopped_run_resumes_to_where_the_uninterrupted_run_stopped(
    tiny_backbone_folder, triplets_file, tmp_path, monkeypatch
):
    """--early_stopping_patience: the Trainer's count of evaluations without improvement is restored on resume (it
    restarted at 0, so a run killed at step 3 trained past the step where the uninterrupted run stopped), and a
    checkpoint where early stopping ended the run is a finished run (resuming it after a lost export trained on)."""
    losses = script_held_out_losses(monkeypatch, [2.0, 1.5, 1.6, 1.7])
    arguments = [
        *("--variant", "5", "--backbone", tiny_backbone_folder, "--train_data", triplets_file),
        *("--output_dir", str(tmp_path / "run"), "--eval_fraction", "0.34", "--per_device_eval_batch_size", "4"),
        *("--early_stopping_patience", "2", "--load_best_model_at_end", "true"),
        *("--metric_for_best_model", "eval_loss"),
        *("--max_steps", "12", "--per_device_train_batch_size", "4", "--save_steps", "1", "--learning_rate", "1e-2"),
        *("--warmup_steps", "0", "--logging_steps", "1", "--eval_strategy", "steps", "--eval_steps", "1"),
        *("--save_total_limit", "10"),  # every checkpoint kept: the run is resumed from step 3 below
    ]
    exported = training.main(arguments)[0]
    manifest = json.loads((exported / "training_manifest.json").read_text())
    assert (manifest["stop"]["reason"], manifest["global_steps"], manifest["stop"]["exported_step"]) == (
        "early_stopping",
        4,
        2,
    )
    expected = load_file(exported / "model.safetensors")
    shutil.rmtree(exported)  # killed during the export: the rerun exports it again, training no step more
    again = training.main([*arguments, "--resume_from_checkpoint", "true"])[0]
    assert json.loads((again / "training_manifest.json").read_text())["global_steps"] == 4
    for name, value in load_file(again / "model.safetensors").items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)

    shutil.rmtree(again)  # killed after step 3: its evaluation at step 4 is the second without improvement
    shutil.rmtree(tmp_path / "run" / "checkpoint-4")
    losses += [1.7, 9.0, 9.0]
    resumed = training.main([*arguments, "--resume_from_checkpoint", "true"])[0]
    assert json.loads((resumed / "training_manifest.json").read_text())["global_steps"] == 4


def test_a_checkpoint_without_its_record_is_never_resumed_unchecked(tmp_path, caplog):
    """The Trainer rotates the older checkpoints away before the record of the new one is written: a run killed in
    between left one checkpoint without a record, and a resume took it "from an older poolattn", unchecked (4 of its
    6 steps at one rate, the manifest naming another). It is passed over, and refused when named."""
    from poolattn.training.recipes import check_resume_recipe
    from poolattn.training.trainer_arguments import last_complete_checkpoint

    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text('{"global_step": 4}')
    with caplog.at_level("WARNING"):
        assert last_complete_checkpoint(tmp_path) is None
    assert "checkpoint-4 is incomplete (no poolattn_checkpoint.json" in caplog.text
    with pytest.raises(training.TrainingSetupError, match="records no recipe .* nothing can check"):
        check_resume_recipe(checkpoint, {"learning_rate": 5e-4})
    from poolattn.training.trainer_arguments import checkpoint_problem  # refused before the data is read, too

    assert checkpoint_problem(checkpoint) == "no poolattn_checkpoint.json: not a complete checkpoint"


@pytest.mark.parametrize(
    "flags, refused",
    [
        (["--push_to", "true", "--hub_model_id", "org/x"], r"not used by the HfArgumentParser: \['--push_to'"),
        (["--learning_r", "1e-3"], r"not used by the HfArgumentParser: \['--learning_r'"),
        (["--overwrite_output_dir", "true", "--resume_from_checkpoint", "true"], "give one of them"),
    ],
)
def test_abbreviated_flags_and_a_contradictory_pair_are_refused(flags, refused):
    """An abbreviation (`--push_to`) passed by the checks of the flags a job or a study sets (every study run would
    have published); --overwrite_output_dir beside --resume_from_checkpoint was silently ignored."""
    with pytest.raises(ValueError, match=refused):
        training.parse_arguments(flags)


def test_a_run_whose_evaluations_pick_its_stop_resumes_only_on_the_same_held_out_data(tmp_path):
    """The plateau rule (or early stopping, or the best checkpoint) reads the held-out losses: a resume with another
    --eval_data was accepted, and the rule compared losses of two data sets as one curve. Without such a rule the
    evaluations decide nothing, and a resume may change them."""
    from poolattn.training.recipes import recipe_differences, resume_recipe

    for name, rows in (("a.jsonl", TRIPLETS[:6]), ("b.jsonl", TRIPLETS[6:])):
        (tmp_path / name).write_text("".join(json.dumps(row) + "\n" for row in rows))

    def recipe(eval_data: str, *rule: str) -> dict:
        arguments = training.parse_arguments(["--eval_data", str(tmp_path / eval_data), *rule])
        return resume_recipe(5, *arguments, "data")

    plateau = ("--plateau_patience", "2", "--max_steps", "100", "--eval_steps", "10")
    differences = recipe_differences(recipe("a.jsonl", *plateau), recipe("b.jsonl", *plateau))
    assert [item.split(":")[0] for item in differences] == ["evaluation"]
    assert recipe_differences(recipe("a.jsonl"), recipe("b.jsonl")) == []
    older = {key: value for key, value in recipe("a.jsonl", *plateau).items() if key != "evaluation"}
    assert recipe_differences(older, recipe("b.jsonl", *plateau)) == []  # a checkpoint from before the key resumes
