"""No run ends with a wrong or lost result and exit code 0: divergence stops before a non-finite update, bad sizes and
output folders are refused before training, interrupted saves are undone, and bad inputs name what to do."""

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import SENTENCES, biosses_copy, tiny_model
from safetensors.torch import load_file
from test_training import TINY_RUN

from poolattn import training
from poolattn.files import atomic_save, clean_interrupted_save
from poolattn.training.trainer import TrainingDivergedError


def test_a_diverging_run_stops_before_a_non_finite_update(tiny_backbone_folder, triplets_file, tmp_path):
    output = tmp_path / "out"
    diverged = r"step \d+: the loss .* not finite.* --learning_rate \(now 1e\+12"
    with pytest.raises(TrainingDivergedError, match=diverged):
        training.main(
            [
                "--backbone",
                tiny_backbone_folder,
                "--train_data",
                triplets_file,
                "--output_dir",
                str(output),
                *TINY_RUN,
                "--learning_rate",
                "1e12",
                "--max_steps",
                "12",
                "--save_steps",
                "1",
                "--max_grad_norm",
                "0",
            ]
        )
    assert not (output / "model").exists()  # never an export of non-finite weights
    checkpoints = sorted(output.glob("checkpoint-*"))
    assert checkpoints  # the steps before the divergence were kept, every tensor finite
    for checkpoint in checkpoints:
        for name, tensor in load_file(checkpoint / "adapter_model.safetensors").items():
            assert torch.isfinite(tensor).all(), f"{checkpoint.name}: {name}"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max_steps", "0"], "--max_steps 0: give the optimizer steps"),
        (["--max_train_samples", "-1"], "--max_train_samples -1"),
        (["--max_train_samples", "0"], "--max_train_samples 0"),
        (["--per_device_train_batch_size", "16"], "12 rows make no full batch of 16"),
        (["--contrastive_batch_size", "16"], r"no full batch of 16 \(--contrastive_batch_size 16\)"),  # the flag given
    ],
)
def test_sizes_that_would_train_nothing_are_refused_before_training(
    flags, message, tiny_backbone_folder, triplets_file, tmp_path
):
    with pytest.raises(ValueError, match=message):  # TripletDataError is a ValueError
        training.main(
            [
                "--backbone",
                tiny_backbone_folder,
                "--train_data",
                triplets_file,
                "--output_dir",
                str(tmp_path / "out"),
                *flags,
            ]
        )
    assert not (tmp_path / "out").exists()


def test_an_output_dir_with_an_earlier_model_is_kept_unless_asked(tiny_backbone_folder, triplets_file, tmp_path):
    common = ["--backbone", tiny_backbone_folder, "--train_data", triplets_file, *TINY_RUN, "--max_steps", "2"]
    first = training.main([*common, "--output_dir", str(tmp_path / "run")])[0]
    weights = load_file(first / "model.safetensors")
    with pytest.raises(ValueError, match=r"holds an earlier run \(model, checkpoint-2\).*--overwrite_output_dir"):
        training.main([*common, "--output_dir", str(tmp_path / "run"), "--learning_rate", "1e-3"])
    for name, value in load_file(first / "model.safetensors").items():  # untouched
        assert torch.equal(value, weights[name])
    again = training.main(
        [*common, "--output_dir", str(tmp_path / "run"), "--learning_rate", "1e-3", "--overwrite_output_dir", "true"]
    )[0]
    assert again == first and any(
        not torch.equal(value, weights[name]) for name, value in load_file(again / "model.safetensors").items()
    )
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match="--output_dir .*a_file is a file; give a folder"):
        training.main([*common, "--output_dir", str(tmp_path / "a_file")])


def test_an_interrupted_save_is_undone_before_the_next(tmp_path):
    destination = tmp_path / "model"

    def write(version):
        return lambda folder: (folder / "weights").write_text(version)

    atomic_save(write("v1"), destination)
    # killed after moving the old folder aside, before the new one was swapped in; and a half-written temp folder
    destination.rename(tmp_path / ".model.old-123")
    (tmp_path / ".model.tmp-abc").mkdir()
    (tmp_path / ".model.tmp-abc" / "weights").write_text("half")
    atomic_save(write("v2"), destination)
    assert (destination / "weights").read_text() == "v2" and [p.name for p in tmp_path.iterdir()] == ["model"]
    # killed the same way again: the cleanup alone (run before every save) puts the previous model back
    destination.rename(tmp_path / ".model.old-456")
    clean_interrupted_save(destination)
    assert (destination / "weights").read_text() == "v2"


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m: m.encode({"a": "first text", "b": "second"}), TypeError, "got dict; pass the texts themselves"),
        (lambda m: m.encode(["a text", 3]), TypeError, "got int among the texts"),
        (lambda m: m.encode(SENTENCES, normalize="no"), TypeError, "normalize='no': give True, False or None"),
        (lambda m: m.encode(SENTENCES, max_length=0), ValueError, "max_length=0: give the tokens per text"),
        (lambda m: m.encode(SENTENCES, batch_size=2.5), ValueError, "batch_size=2.5 must be an integer"),
    ],
)
def test_bad_encode_arguments_are_refused_with_what_to_give(call, error, message):
    with pytest.raises(error, match=message):
        call(tiny_model("llama", 5))


def test_compare_refuses_an_unreadable_result_naming_the_file(tmp_path):
    pytest.importorskip("mteb")
    from poolattn import cli

    biosses_copy(tmp_path / "data", 20)
    tiny_model("llama", 5).save_pretrained(tmp_path / "v5")
    assert (
        cli.evaluate(
            [
                "run",
                "--model",
                str(tmp_path / "v5"),
                "--tasks",
                "BIOSSES",
                "--data-dir",
                str(tmp_path / "data"),
                "--output",
                str(tmp_path / "results"),
            ]
        )
        == 0
    )
    (result,) = (tmp_path / "results").rglob("BIOSSES.json")
    result.write_text(result.read_text()[:40])  # truncated, e.g. a full disk
    with pytest.raises(SystemExit, match=rf"{result.name} is not a readable mteb task result.*delete it"):
        cli.evaluate(["compare", str(result.parent), "--output", str(tmp_path / "cmp")])


def test_bad_json_in_flags_or_an_arguments_file_names_the_flag_or_file(tmp_path):
    with pytest.raises(ValueError, match=r"--config_overrides '\{layers: 1\}' is not valid JSON .* give an object"):
        training.parse_arguments(["--config_overrides", "{layers: 1}"])
    (tmp_path / "args.json").write_text('{"variant": "5",}')
    with pytest.raises(ValueError, match=r"args.json: not a readable JSON arguments file"):
        training.parse_arguments([str(tmp_path / "args.json")])
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list.json: an arguments file holds one JSON object"):
        training.parse_arguments([str(tmp_path / "list.json")])


@pytest.mark.parametrize(
    "values, refusal",
    [
        ({"max_steps": "5"}, r'"max_steps" is "5", a string; give a whole number'),
        ({"learning_rate": "1e-3"}, r'"learning_rate" is "1e-3", a string; give a number'),
        ({"use_cpu": True, "bf16": "false"}, r'"bf16" is "false", a string; give true or false'),
        ({"seeds": 2.5}, r'"seeds" is 2.5, a number; give a whole number'),
        ({"skip_invalid_rows": 1}, r'"skip_invalid_rows" is 1, a whole number; give true or false'),
    ],
)
def test_an_arguments_file_value_of_the_wrong_type_is_refused_by_name(values, refusal, tmp_path):
    """Values reached the dataclasses unconverted: a string number failed with a bare TypeError (a traceback from
    train.py), and "bf16": "false" was a true value."""
    from poolattn import cli

    (tmp_path / "args.json").write_text(json.dumps(values))
    with pytest.raises(ValueError, match=r"args.json: " + refusal):
        training.parse_arguments([str(tmp_path / "args.json")])
    with pytest.raises(SystemExit, match=r"^train: .*args.json: " + refusal):
        cli.train([str(tmp_path / "args.json")])


def test_an_arguments_file_reads_as_the_same_command_line(tmp_path):
    values = {"variant": 5, "max_steps": 7, "learning_rate": 1, "source_instructions": {"a": "b"}}
    values["report_to"] = ["none"]
    (tmp_path / "args.json").write_text(json.dumps(values))
    from_file = training.parse_arguments([str(tmp_path / "args.json")])
    flags = ["--variant", "5", "--max_steps", "7", "--learning_rate", "1", "--source_instructions", '{"a": "b"}']
    from_flags = training.parse_arguments([*flags, "--report_to", "none"])
    assert from_file[0].variants == from_flags[0].variants == [5]
    assert from_file[1].instructions_per_source == from_flags[1].instructions_per_source == {"a": "b"}
    assert (from_file[2].max_steps, from_file[2].learning_rate) == (from_flags[2].max_steps, 1.0)


def test_the_train_command_ends_setup_errors_with_their_message_not_a_traceback(triplets_file, tmp_path):
    from poolattn import cli

    for flags, message in (
        (["--backbone", str(tmp_path / "nowhere")], "--backbone .*nowhere: no such folder"),
        (["--backbone", str(tmp_path)], "--backbone .*: the folder has no config.json"),
    ):
        with pytest.raises(SystemExit, match=f"train: {message}"):
            cli.train(["--train_data", triplets_file, "--output_dir", str(tmp_path / "out"), *flags])


def test_a_misspelled_config_field_is_refused_naming_the_field():
    from conftest import tiny_text_config

    from poolattn import PoolAttnConfig

    with pytest.raises(ValueError, match=r"poolng='mean' is not a field; did you mean pooling=\?"):
        PoolAttnConfig(text_config=tiny_text_config().to_dict(), poolng="mean")
    with pytest.raises(ValueError, match=r"num_latent=3 is not a field; did you mean num_latents=\?"):
        tiny_model("llama", 5, num_latent=3)
    assert PoolAttnConfig(text_config=tiny_text_config().to_dict(), release_note="x").release_note == "x"  # kept


@pytest.mark.parametrize("variant", [1, 5, "mean-causal"])
def test_a_row_without_any_token_is_refused_not_embedded(variant):
    model = tiny_model("llama", variant)
    ids = torch.tensor([[5, 6, 7, 2], [5, 6, 0, 0]])
    with pytest.raises(ValueError, match=r"Rows \[1\] have an all-zero attention_mask"):
        model(input_ids=ids, attention_mask=torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]]))


def test_a_damaged_safetensors_file_is_refused_by_size(tmp_path):
    from poolattn.model_folder import ExportedModel
    from poolattn.records import ManifestError

    tiny_model("llama", 5).save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    intact = weights.read_bytes()
    ExportedModel.read(tmp_path / "m")  # intact: read
    weights.write_bytes(intact + b"garbage")
    with pytest.raises(ManifestError, match=r"model.safetensors: \+7 bytes against its header \(trailing bytes"):
        ExportedModel.read(tmp_path / "m")
    weights.write_bytes(intact[:-10])
    with pytest.raises(ManifestError, match=r"-10 bytes against its header \(missing bytes \(truncated\)"):
        ExportedModel.read(tmp_path / "m")


def test_a_jsonl_file_with_a_byte_order_mark_reads_like_one_without(tmp_path):
    from poolattn.training.data import load_triplets

    rows = '{"query": "what is a cafe", "positive": "a place"}\n{"query": "q", "positive": "p"}\n'
    (tmp_path / "plain.jsonl").write_text(rows, encoding="utf-8")
    (tmp_path / "bom.jsonl").write_text(rows, encoding="utf-8-sig")  # as some Windows editors save it
    assert load_triplets(str(tmp_path / "bom.jsonl")).rows == load_triplets(str(tmp_path / "plain.jsonl")).rows


def test_a_non_utf8_csv_names_the_file_and_line(tmp_path):
    from poolattn.training.data import load_triplets
    from poolattn.training.sources import TripletDataError

    data = tmp_path / "latin1.csv"
    data.write_bytes("query,positive\nwhat is a café,a place\n".encode("latin-1"))
    with pytest.raises(TripletDataError, match=r"latin1.csv, line 2: not UTF-8 .* iconv -f latin1 -t utf-8"):
        load_triplets(str(data))


def test_resuming_names_the_incomplete_checkpoints_it_passes_over(tmp_path, caplog):
    from poolattn.training.trainer import last_complete_checkpoint

    for step, complete in ((2, True), (4, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
            (tmp_path / f"checkpoint-{step}" / "poolattn_checkpoint.json").write_text('{"recipe": {}}')
    with caplog.at_level("WARNING", logger="poolattn.training.trainer"):
        assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert "checkpoint-4 is incomplete" in caplog.text and "resuming from" in caplog.text
    # a state file the Trainer left truncated (it writes it in place) is no complete checkpoint either
    (tmp_path / "checkpoint-6").mkdir()
    (tmp_path / "checkpoint-6" / "trainer_state.json").write_text('{"global_step": 6, "log_hi')
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert "checkpoint-6 is incomplete (a damaged trainer_state.json" in caplog.text
    # one whose record is missing (killed between the two writes) or damaged is passed over too: resuming from it
    # could not check the flags against its recipe
    for step, record in ((8, None), (10, '{"recipe": {"learning_ra')):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
        if record is not None:
            (tmp_path / f"checkpoint-{step}" / "poolattn_checkpoint.json").write_text(record)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert "checkpoint-8 is incomplete (no poolattn_checkpoint.json" in caplog.text
    assert "checkpoint-10 is incomplete (a damaged poolattn_checkpoint.json" in caplog.text


def test_scoring_a_bare_backbone_folder_warns_what_is_scored(tiny_backbone_folder, caplog):
    pytest.importorskip("mteb")
    from poolattn.evaluation.encoders import load_encoder

    with caplog.at_level("WARNING", logger="poolattn.evaluation"):
        load_encoder(tiny_backbone_folder, batch_size=4, max_length=None, instructions=False)
    assert "neither an exported poolattn model nor a sentence-transformers folder" in caplog.text


def test_lora_targets_that_are_no_linear_layer_of_the_backbone_are_named(
    tiny_backbone_folder, triplets_file, tmp_path
):
    message = r"--lora_target_modules 'q_proj,qproj': qproj is not a linear layer of this backbone. Its linear "
    with pytest.raises(training.TrainingSetupError, match=message + "layers: .*q_proj"):
        training.main(
            [
                "--backbone",
                tiny_backbone_folder,
                "--train_data",
                triplets_file,
                "--output_dir",
                str(tmp_path / "out"),
                *TINY_RUN,
                "--lora_target_modules",
                "q_proj,qproj",
            ]
        )
    assert not (tmp_path / "out" / "model").exists()


def test_a_hub_backbone_that_cannot_be_reached_is_one_line_naming_it(tmp_path):
    import os
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "train.py"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-cache")}
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            "--backbone",
            "some-org/not-cached-model",
            "--output_dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("train: --backbone some-org/not-cached-model: cannot load this Hub model")
        and "HF_HUB_OFFLINE" in last
    )
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_a_full_disk_ends_a_command_with_one_line_and_no_half_written_file(
    tiny_backbone_folder, triplets_file, tmp_path, monkeypatch
):
    """ENOSPC at the export's first write: the command ends with one line naming the file and what to do; the
    run's checkpoints are kept and no half-written model folder is left."""
    import errno

    from poolattn import cli
    from poolattn.modeling_poolattn import PoolAttnEmbeddingModel

    def full_disk(self, folder, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "model.safetensors"))

    monkeypatch.setattr(PoolAttnEmbeddingModel, "save_pretrained", full_disk)
    output = tmp_path / "run"
    with pytest.raises(
        SystemExit,
        match=r"train: could not write .*model.safetensors: no space left on the "
        r"device: free some space",
    ):
        cli.train(
            [
                "--backbone",
                tiny_backbone_folder,
                "--train_data",
                triplets_file,
                "--output_dir",
                str(output),
                "--max_steps",
                "2",
                "--save_steps",
                "2",
                "--per_device_train_batch_size",
                "4",
                "--use_cpu",
                "true",
                "--lora_r",
                "4",
                "--lora_alpha",
                "8",
            ]
        )
    assert (output / "checkpoint-2").is_dir() and not (output / "model").exists()
    assert not [path for path in output.iterdir() if path.name.startswith(".model")]


def test_atomic_writes_give_files_and_folders_the_modes_of_ordinary_new_ones(tmp_path):
    """Temp files and folders are private (0600 / 0700); what the package swaps in is not: a model folder or record
    written atomically is readable by others as one written in place would be (umask applied)."""
    import os

    from poolattn.files import write_text

    before = os.umask(0o022)
    try:
        write_text(tmp_path / "record.json", "{}")
        atomic_save(lambda folder: (folder / "weights").write_text("w"), tmp_path / "model")
        (tmp_path / "plain.json").write_text("{}")
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(before)
    assert (tmp_path / "record.json").stat().st_mode & 0o777 == (tmp_path / "plain.json").stat().st_mode & 0o777
    assert (tmp_path / "model").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--config_overrides", '{"poolng": "mean"}'],
            r"'poolng' is not a PoolAttnConfig field; did you mean 'pooling'",
        ),
        (["--config_overrides", '{"xyz": 1}'], r"'xyz' is not a PoolAttnConfig field\. Fields: attention, pooling"),
        (["--learning_rate", "-1"], r"--learning_rate -1.0 must be >= 0"),
        (["--per_device_train_batch_size", "0"], r"--per_device_train_batch_size 0 must be >= 1"),
        (["--per_device_eval_batch_size", "0"], r"--per_device_eval_batch_size 0 must be >= 1"),  # a mid-run failure
        (["--early_stopping_patience", "0"], r"--early_stopping_patience 0: give the evaluations"),  # was ignored
        (["--output_dir", ""], r"--output_dir is empty: give a folder"),  # wrote model/ and checkpoints into "."
        (["--output_dir", "  "], r"--output_dir is empty: give a folder"),
        (
            ["--early_stopping_patience", "-1"],
            r"--early_stopping_patience -1: give the evaluations",
        ),  # stopped at once
    ],
)
def test_bad_training_flags_are_refused_when_parsed(flags, message):
    """Refused by the parser, before data or a model loads (they failed later: a TypeError from the backbone's loader
    for a misspelled field, torch's optimizer for a negative rate)."""
    from poolattn import training

    with pytest.raises(ValueError, match=message):
        training.parse_arguments(flags)


def test_from_backbone_refuses_a_misspelled_design_field(tiny_backbone_folder):
    from poolattn import PoolAttnEmbeddingModel

    with pytest.raises(ValueError, match=r"poolng='mean' is not a field; did you mean pooling="):
        PoolAttnEmbeddingModel.from_backbone(tiny_backbone_folder, variant=5, poolng="mean")


def test_a_backbone_that_is_no_backbone_is_refused_by_name_before_the_data_loads(tiny_backbone_folder, tmp_path):
    """Each refused in one line naming what was given (they were tracebacks from the loader, after the data had
    loaded); the data here does not exist, so any check that comes after the data would fail differently."""
    import shutil

    from poolattn import training
    from poolattn.backbones import BackboneError

    export, empty, damaged = tmp_path / "export", tmp_path / "no-weights", tmp_path / "damaged"
    tiny_model("llama", 5).save_pretrained(export)
    empty.mkdir()
    shutil.copy(Path(tiny_backbone_folder) / "config.json", empty / "config.json")
    shutil.copytree(tiny_backbone_folder, damaged)
    weights = (damaged / "model.safetensors").read_bytes()
    (damaged / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (tmp_path / "rows.jsonl").write_text("{}\n")
    cases = [
        (str(tmp_path / "rows.jsonl"), BackboneError, "a file, not a model folder"),
        (str(export), BackboneError, "an exported poolattn model, not a backbone"),
        (str(empty), BackboneError, r"holds no weights \(\*.safetensors or \*.bin\)"),
        (str(damaged), BackboneError, r"model.safetensors is not a readable safetensors file|missing bytes"),
    ]
    for backbone, error, message in cases:
        with pytest.raises(error, match=message):
            training.main(["--backbone", backbone, "--train_data", str(tmp_path / "none.jsonl")])
    # a design the backbone is too shallow for (2 layers): refused by name before the data loads too
    with pytest.raises(training.TrainingSetupError, match=r"--variant 5 on --backbone .* \(llama\): .*middle"):
        training.main(
            [
                *("--backbone", tiny_backbone_folder, "--train_data", str(tmp_path / "none.jsonl")),
                *("--config_overrides", '{"layers": "middle:4"}'),
            ]
        )


def test_an_untrained_control_of_another_run_is_refused_not_kept(tiny_backbone_folder, triplets_file, tmp_path):
    """A study's `step0/` control was kept whatever wrote it: another base's arm (or seed) in the folder was scored
    as this run's starting point (exit 0). The same control is kept; another design, seed or override is refused."""
    from poolattn.training.job import TrainingJob

    flags = ("--backbone", tiny_backbone_folder, "--train_data", triplets_file, "--use_cpu", "true")
    job = TrainingJob(flags=flags, variant=5, seed=42, config_overrides={"layer_weights": False})
    control = training.export_control(job, tmp_path / "step0")
    weights = (control / "model.safetensors").read_bytes()
    assert training.export_control(job, tmp_path / "step0") == control
    assert (control / "model.safetensors").read_bytes() == weights
    for other, difference in (
        ({"variant": 3}, "variant: 5 there, 3 now"),
        ({"seed": 43}, "seed: 42 there, 43 now"),
        ({"config_overrides": {}}, "config_overrides: {'layer_weights': False} there, {} now"),
    ):
        with pytest.raises(training.TrainingSetupError, match=re.escape(difference)):
            training.export_control(dataclasses.replace(job, **other), tmp_path / "step0")


def test_resume_false_means_no_resume_and_a_folder_that_is_no_checkpoint_is_refused_first(
    tiny_backbone_folder, triplets_file, tmp_path
):
    """`--resume_from_checkpoint false` was taken for a checkpoint folder named "false" (a warning, then transformers'
    traceback, and the earlier-run check of the output folder skipped); a mistyped folder gave the same traceback
    after the backbone and data had loaded."""
    for word in ("false", "no", "0", "False"):
        assert training.parse_arguments(["--resume_from_checkpoint", word])[2].resume_from_checkpoint is None
    common = ["--backbone", tiny_backbone_folder, "--train_data", triplets_file, *TINY_RUN, "--max_steps", "1"]
    (exported,) = training.main([*common, "--output_dir", str(tmp_path / "run"), "--resume_from_checkpoint", "false"])
    assert (exported / "model.safetensors").is_file()
    with pytest.raises(training.TrainingSetupError, match=r"holds an earlier run \(model"):
        training.main([*common, "--output_dir", str(tmp_path / "run"), "--resume_from_checkpoint", "false"])
    (tmp_path / "empty" / "checkpoint-3").mkdir(parents=True)
    allowed = r"\. Give true \(each run from the last complete checkpoint .*\), false .* or a checkpoint folder"
    for folder, problem in (
        (tmp_path / "nowhere", "no such folder"),
        (tmp_path / "empty" / "checkpoint-3", "no trainer_state.json: not a complete checkpoint"),
    ):
        with pytest.raises(training.TrainingSetupError, match=rf"--resume_from_checkpoint .*{problem}{allowed}"):
            # data that does not exist: a check after the data loads would fail differently
            training.main(
                [
                    "--backbone",
                    tiny_backbone_folder,
                    "--train_data",
                    str(tmp_path / "none.jsonl"),
                    "--output_dir",
                    str(tmp_path / "out"),
                    "--resume_from_checkpoint",
                    str(folder),
                ]
            )
    assert not (tmp_path / "out").exists()


def test_a_file_where_a_folder_is_needed_ends_a_command_with_one_line_naming_it(tmp_path):
    """--output below a file (or a file where a command makes a folder): one line naming the path and what to do,
    never a NotADirectoryError / FileExistsError traceback, and nothing written."""
    pytest.importorskip("mteb")
    from poolattn import cli
    from poolattn.cli.common import storage_errors_in_one_line

    biosses_copy(tmp_path / "data", 10)
    tiny_model("llama", 5).save_pretrained(tmp_path / "m")
    (tmp_path / "notes").write_text("a file")
    run = ["run", "--model", str(tmp_path / "m"), "--tasks", "BIOSSES", "--data-dir", str(tmp_path / "data")]
    with pytest.raises(
        SystemExit, match=rf"^evaluate: could not write {tmp_path}/notes/out: a part of that path is a file"
    ):
        cli.evaluate([*run, "--output", str(tmp_path / "notes" / "out")])
    assert (tmp_path / "notes").read_text() == "a file"

    @storage_errors_in_one_line("study")
    def study(output: Path) -> int:
        output.mkdir(parents=True, exist_ok=True)
        return 0

    with pytest.raises(SystemExit, match=rf"^study: could not write {tmp_path}/notes: it exists and is no folder"):
        study(tmp_path / "notes")


def test_a_figure_whose_writing_fails_leaves_the_earlier_figure_whole(tmp_path, monkeypatch):
    """A full disk (or a kill) while a report's figure is written: the earlier figure stays as it was and no
    truncated file is left where the next reader takes it for the new one (figures are written atomically too)."""
    import errno

    from matplotlib.figure import Figure

    from poolattn import plots

    path = tmp_path / "per_category.png"
    plots.category_bars(path, ["a", "b"], {"a": {"STS": 0.5}, "b": {"STS": 0.6}}, ["STS"], {})
    earlier = path.read_bytes()
    assert earlier.startswith(b"\x89PNG")

    def full_disk(self, target, **options):
        if isinstance(target, (str, Path)):  # written in place
            Path(target).write_bytes(earlier[:100])
        else:
            target.write(earlier[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    with pytest.raises(OSError):
        plots.category_bars(path, ["a", "b"], {"a": {"STS": 0.7}, "b": {"STS": 0.1}}, ["STS"], {})
    assert path.read_bytes() == earlier and [item.name for item in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize(("flag", "inside"), [("--train_data", "out"), ("--eval_data", "."), ("--train_data", "a/b")])
def test_an_output_dir_inside_the_data_folder_is_refused_before_training(
    flag, inside, tiny_backbone_folder, triplets_file, tmp_path
):
    """The run's files (a checkpoint's adapter_config.json, the model's manifest) would be read as data the next time
    the folder is read (a resume, a streamed run's check at its end): an --output_dir inside (or equal to) a local
    --train_data or --eval_data folder is refused before anything is written."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(triplets_file, data / "rows.jsonl")
    given = {"--train_data": triplets_file, flag: str(data)}
    output = data / inside
    command = ["--backbone", tiny_backbone_folder, *TINY_RUN, "--max_steps", "1", "--output_dir", str(output)]
    with pytest.raises(ValueError, match=rf"--output_dir {re.escape(str(output))} is inside {flag} .*data: .*give"):
        training.main([*command, *(item for pair in given.items() for item in pair)])
    assert [path.name for path in data.iterdir()] == ["rows.jsonl"]


def test_an_output_dir_holding_a_run_laid_out_otherwise_is_refused_or_replaced(
    tiny_backbone_folder, triplets_file, tmp_path
):
    """A single run's `lay/model` then `--seeds 2` into `lay` (`lay/seed-42`, `lay/seed-43`): refused, resuming too (it
    cannot continue that run, whose model would stay beside the new ones), and --overwrite_output_dir removes it; a
    single run into a folder of seed folders is refused likewise."""
    lay = tmp_path / "lay"
    common = ["--backbone", tiny_backbone_folder, "--train_data", triplets_file, *TINY_RUN, "--output_dir", str(lay)]
    training.main([*common, "--max_steps", "2"])
    for more in ([], ["--resume_from_checkpoint", "true"]):
        with pytest.raises(
            ValueError, match=r"lay holds an earlier run \(model, checkpoint-2\).*--overwrite_output_dir"
        ):
            training.main([*common, "--seeds", "2", *more])
    assert sorted(path.name for path in lay.iterdir()) == ["checkpoint-2", "model"]
    training.main([*common, "--seeds", "2", "--max_steps", "1", "--overwrite_output_dir", "true"])
    assert sorted(path.name for path in lay.iterdir()) == ["seed-42", "seed-43"]
    with pytest.raises(ValueError, match=r"lay/seed-42 holds an earlier run \(model"):
        training.main([*common, "--max_steps", "1"])
