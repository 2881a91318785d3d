"""Evaluation (`python evaluate.py`, poolattn.evaluation): run on local task copies (tiny random poolattn models),
then compare."""

import json
from pathlib import Path

import pytest
from conftest import tiny_model

pytest.importorskip("mteb")
from poolattn import cli  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def data_dir(tmp_path):
    """Small local copies of two STS tasks, laid out like ../shared/data."""
    for task, rows in (("STSBenchmark", 40), ("BIOSSES", 30)):
        (tmp_path / "data" / task).mkdir(parents=True)
        lines = (SHARED / task / "test.jsonl").read_text().splitlines()[:rows]
        (tmp_path / "data" / task / "test.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "data"


def test_run_then_compare(tmp_path, data_dir, capsys):
    models = []
    for variant in (1, 5):
        tiny_model("llama", variant).save_pretrained(tmp_path / f"v{variant}")
        models += ["--model", str(tmp_path / f"v{variant}")]
    output = tmp_path / "results"
    assert (
        cli.evaluate(
            [
                "run",
                *models,
                "--categories",
                "STS",
                "--data-dir",
                str(data_dir),
                "--output",
                str(output),
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    folders = sorted((output / "results").iterdir())
    assert [f.name for f in folders] == ["poolattn__v1", "poolattn__v5"]
    task_files = sorted(p.name for p in folders[0].rglob("*.json"))
    assert {"STSBenchmark.json", "BIOSSES.json", "poolattn_run.json"} <= set(task_files)
    predictions = json.loads(next(folders[0].rglob("predictions/STSBenchmark_predictions.json")).read_text())
    per_pair = [value for value in predictions["default"]["test"].values() if isinstance(value, list)]
    assert per_pair and all(len(values) == 40 for values in per_pair)  # one similarity per pair, for paired tests
    settings = json.loads(next(folders[0].rglob("poolattn_run.json")).read_text())
    assert settings["instructions"]["STS"] == "Retrieve semantically similar text."

    first_result = next(folders[0].rglob("STSBenchmark.json"))
    written = first_result.stat().st_mtime_ns
    assert (
        cli.evaluate(
            [
                "run",
                models[0],
                models[1],
                "--tasks",
                "STSBenchmark",
                "--data-dir",
                str(data_dir),
                "--output",
                str(output),
            ]
        )
        == 0
    )
    assert first_result.stat().st_mtime_ns == written  # finished tasks are skipped without --overwrite

    capsys.readouterr()
    assert (
        cli.evaluate(
            [
                "compare",
                str(folders[0]),
                str(folders[1]),
                "--baseline",
                "poolattn/v1",
                "--output",
                str(tmp_path / "cmp"),
            ]
        )
        == 0
    )
    report = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| STSBenchmark | STS |" in report and "| BIOSSES | STS |" in report
    assert "poolattn/v5 vs poolattn/v1" in report and "too few datasets" in report
    for name in ("per_task.csv", "per_category.csv", "summary.md", "per_category.png"):
        assert (tmp_path / "cmp" / name).stat().st_size > 0
    assert "significantly different from poolattn/v1" in (tmp_path / "cmp" / "summary.md").read_text()
    with pytest.raises(SystemExit, match="hold results of the same model and weights \\(poolattn/v1"):
        cli.evaluate(["compare", str(folders[0]), str(next(folders[0].iterdir())), "--output", str(tmp_path / "c2")])
    # runs scored under other settings (here v5 without its instructions) are refused, not compared as designs
    import shutil

    plain = next(folders[1].iterdir())
    shutil.copytree(plain, tmp_path / "v5-runs" / f"{plain.name}-no-instructions")
    with pytest.raises(SystemExit, match=r"different settings \(the plain settings: poolattn/v1 .*without task"):
        cli.evaluate(["compare", str(folders[0]), str(tmp_path / "v5-runs"), "--output", str(tmp_path / "c4")])
    # a task one model lacks: the comparison is written, its means say so, and the command exits 1 naming it
    next(folders[1].rglob("BIOSSES.json")).unlink()
    capsys.readouterr()
    assert cli.evaluate(["compare", str(folders[0]), str(folders[1]), "--output", str(tmp_path / "c3")]) == 1
    assert "poolattn/v5: no score for BIOSSES" in capsys.readouterr().err
    assert (tmp_path / "c3" / "comparison.md").is_file()
    # files mteb left half-written (it writes them in place): compare names the file; a rerun scores the task again
    predictions = next(folders[0].rglob("predictions/STSBenchmark_predictions.json"))
    predictions.write_text(predictions.read_text()[:50])
    result = next(folders[0].rglob("BIOSSES.json"))
    result.write_text(result.read_text()[:50])
    with pytest.raises(SystemExit, match=r"BIOSSES.json is not a readable mteb task result"):
        cli.evaluate(["compare", str(folders[0]), str(folders[1]), "--output", str(tmp_path / "c5")])
    run = ["run", *models[:2], "--categories", "STS", "--data-dir", str(data_dir), "--output", str(output)]
    assert cli.evaluate(run) == 0
    assert json.loads(predictions.read_text()) and json.loads(result.read_text())  # both written anew
    predictions.write_text(predictions.read_text()[:50])
    with pytest.raises(
        SystemExit, match=r"STSBenchmark_predictions.json is damaged .* run the same `evaluate.py run`"
    ):
        cli.evaluate(["compare", str(folders[0]), str(folders[1]), "--output", str(tmp_path / "c6")])
    # a damaged model_meta.json where no task is scored again (mteb writes it only with a task's results): the next
    # run removes it (the folder's name gives the model's name) instead of leaving it to block every compare
    assert cli.evaluate(run) == 0
    meta = next(folders[1].rglob("model_meta.json"))
    meta.write_text(meta.read_text()[:30])
    v5 = ["run", *models[2:], "--tasks", "STSBenchmark", "--data-dir", str(data_dir), "--output", str(output)]
    assert cli.evaluate(v5) == 0
    assert not meta.exists()
    capsys.readouterr()
    assert cli.evaluate(["compare", str(folders[0]), str(folders[1]), "--output", str(tmp_path / "c7")]) == 1
    assert "poolattn/v5: no score for BIOSSES" in capsys.readouterr().err  # only the task it lacks


def test_a_task_missing_locally_is_reported_not_skipped(tmp_path, data_dir, capsys):
    tiny_model("llama", 1).save_pretrained(tmp_path / "m")
    arguments = [
        "run",
        "--model",
        str(tmp_path / "m"),
        "--tasks",
        "STSBenchmark,STS13",
        "--data-dir",
        str(data_dir),
        "--output",
        str(tmp_path / "out"),
    ]
    with pytest.raises(SystemExit, match=r"1 task\(s\) have no local copy in .*: STS13"):
        cli.evaluate(arguments)
    assert not (tmp_path / "out").exists()
    assert cli.evaluate([*arguments, "--skip-missing"]) == 0
    assert "SKIPPED (no local copy in" in capsys.readouterr().out
    only_missing = [*arguments[:4], "STS13", *arguments[5:], "--skip-missing"]
    with pytest.raises(SystemExit, match="none of the selected tasks has a local copy in .* nothing to score"):
        cli.evaluate(only_missing)
    with pytest.raises(SystemExit, match=r"--benchmark 'MTEB\(eng, v3\)': .*Did you mean"):
        cli.evaluate(["run", "--model", str(tmp_path / "m"), "--benchmark", "MTEB(eng, v3)", "--output", "o"])


@pytest.mark.parametrize(
    "second, refusal",
    [
        ("v5-typo", r"--model .*v5-typo: no such folder \(and not a Hub id ORG/NAME\)"),
        ("notes.txt", r"--model .*notes.txt is a file; give a model folder or a Hub id"),
        ("empty", r"--model .*empty: a folder without config.json or modules.json, so no model"),
        ("checkpoint-2", r"--model .*checkpoint-2 is a training checkpoint"),
        ("no-weights", r"--model .*no-weights: a poolattn folder without its weights"),
        ("mymodel", r"--model mymodel: no such folder, and not a Hub repository in the local cache"),
    ],
)
def test_every_model_is_checked_before_the_first_is_scored(second, refusal, tmp_path, data_dir, monkeypatch):
    """A mistyped second --model was found only after the first model had been scored on every task."""
    tiny_model("llama", 1).save_pretrained(tmp_path / "v1")
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "empty").mkdir()
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "adapter_config.json").write_text("{}")
    tiny_model("llama", 1).save_pretrained(tmp_path / "no-weights")
    (tmp_path / "no-weights" / "model.safetensors").unlink()
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # a bare name that is no folder here, nor in the cache
    model = second if second == "mymodel" else str(tmp_path / second)
    arguments = ["run", "--model", str(tmp_path / "v1"), "--model", model, "--tasks", "BIOSSES"]
    with pytest.raises(SystemExit, match=refusal):
        cli.evaluate([*arguments, "--data-dir", str(data_dir), "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()  # nothing scored


def test_bad_selections_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="choose tasks with --tasks, --categories or --benchmark"):
        cli.evaluate(["run", "--model", "x", "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"unknown categories \['Poetry'\]"):
        cli.evaluate(["run", "--model", "x", "--categories", "Poetry", "--data-dir", str(tmp_path), "--output", "o"])
    with pytest.raises(SystemExit, match="no mteb task results found"):
        cli.evaluate(["compare", str(tmp_path), "--output", str(tmp_path / "c")])


def test_a_changed_task_copy_is_scored_again_never_served_from_the_cache(tmp_path, data_dir, caplog):
    """Results are keyed by the task data too: the same model on an edited copy of a task (or another --data-dir
    with other content) is scored again; an unchanged copy elsewhere reuses the score."""
    tiny_model("llama", 5).save_pretrained(tmp_path / "m")
    output = tmp_path / "results"

    def score(folder) -> float:
        assert (
            cli.evaluate(
                [
                    "run",
                    "--model",
                    str(tmp_path / "m"),
                    "--tasks",
                    "BIOSSES",
                    "--data-dir",
                    str(folder),
                    "--output",
                    str(output),
                    "--batch-size",
                    "8",
                ]
            )
            == 0
        )
        result = next((output / "results").rglob("BIOSSES.json"))
        return json.loads(result.read_text())["scores"]["test"][0]["main_score"], result.stat().st_mtime_ns

    first, written = score(data_dir)
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(data_dir, copy)
    assert score(copy) == (first, written)  # the same content elsewhere: the cached score
    rows = [json.loads(line) for line in (copy / "BIOSSES" / "test.jsonl").read_text().splitlines()]
    rows = [{**row, "score": 4.0 - row["score"]} for row in rows]  # the gold similarities reversed
    (copy / "BIOSSES" / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    reversed_score, rewritten = score(copy)
    assert rewritten != written and reversed_score == pytest.approx(-first, abs=1e-9)
    assert "BIOSSES was scored on other data" in caplog.text


def test_a_task_scored_with_another_instruction_is_scored_again(tmp_path, data_dir, caplog, monkeypatch):
    """The revision covers the weights and whether instructions are on, not the instruction table's text: a task
    scored before its instruction was edited was served from the cache as new (and the run's record then named the
    new table). Each task's instruction is recorded and a changed one scores the task again; the others are kept."""
    from poolattn.prompts import TASK_INSTRUCTIONS

    tiny_model("llama", 5).save_pretrained(tmp_path / "m")
    output = tmp_path / "results"
    run = ["run", "--model", str(tmp_path / "m"), "--tasks", "BIOSSES,STSBenchmark", "--data-dir", str(data_dir)]
    run += ["--output", str(output), "--batch-size", "8"]

    def written() -> dict[str, int]:
        return {task: next(output.rglob(f"{task}.json")).stat().st_mtime_ns for task in ("BIOSSES", "STSBenchmark")}

    assert cli.evaluate(run) == 0
    before = written()
    assert cli.evaluate(run) == 0 and written() == before  # nothing changed: the cached scores
    settings = json.loads(next(output.rglob("poolattn_run.json")).read_text())
    assert settings["task_prompts"] == {"BIOSSES": TASK_INSTRUCTIONS["STS"], "STSBenchmark": TASK_INSTRUCTIONS["STS"]}
    monkeypatch.setitem(TASK_INSTRUCTIONS, "BIOSSES", "Retrieve biomedical sentences that mean the same.")
    assert cli.evaluate(run) == 0
    after = written()
    assert after["BIOSSES"] != before["BIOSSES"] and after["STSBenchmark"] == before["STSBenchmark"]
    assert "BIOSSES was scored with another task instruction" in caplog.text


def test_the_cache_revision_covers_every_file_that_decides_a_folders_embeddings(tmp_path):
    """Two sentence-transformers folders that differ only in a sharded weight file, or only in their pooling
    module's config, get different revisions (they shared one: config.json and model.safetensors were all that was
    hashed); a poolattn export keeps the revision it always had; a folder with nothing to hash is refused."""
    import hashlib

    from poolattn.model_folder import model_fingerprint
    from poolattn.records import ManifestError

    def folder(name: str, shard: bytes, pooling: str) -> Path:
        path = tmp_path / name
        (path / "1_Pooling").mkdir(parents=True)
        (path / "config.json").write_text('{"model_type": "bert"}')
        (path / "model-00001-of-00002.safetensors").write_bytes(b"same")
        (path / "model-00002-of-00002.safetensors").write_bytes(shard)
        (path / "1_Pooling" / "config.json").write_text(pooling)
        (path / "README.md").write_text(name)  # a card is not the model
        return path

    base = model_fingerprint(folder("a", b"one", '{"pooling_mode_mean_tokens": true}'))
    assert base == model_fingerprint(folder("a-copy", b"one", '{"pooling_mode_mean_tokens": true}'))
    assert base != model_fingerprint(folder("b", b"two", '{"pooling_mode_mean_tokens": true}'))
    assert base != model_fingerprint(folder("c", b"one", '{"pooling_mode_cls_token": true}'))

    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text('{"model_type": "poolattn"}')
    (export / "model.safetensors").write_bytes(b"weights")
    (export / "tokenizer.json").write_text("{}")
    (export / "training_manifest.json").write_text('{"schema_version": 1, "backbone": "b"}')  # exported before 12-07
    assert model_fingerprint(export) == hashlib.sha256(b'{"model_type": "poolattn"}weights').hexdigest()[:16]
    (export / "model.safetensors").unlink()  # a sharded export: every shard counts
    (export / "model-00001-of-00001.safetensors").write_bytes(b"weights")
    sharded = model_fingerprint(export)
    (export / "model-00001-of-00001.safetensors").write_bytes(b"other")
    assert model_fingerprint(export) != sharded
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no config.json, weights or other files to fingerprint"):
        model_fingerprint(tmp_path / "empty")


def test_a_poolattn_folders_revision_follows_its_tokenizer_files(tmp_path):
    """The tokenizer decides the embeddings too: a poolattn folder whose tokenizer was edited after its export kept
    its revision, so the scores cached for the old tokenizer came back (exit 0). The export records its tokenizer's
    hash: unchanged, the revision is what it always was (config + weights); edited, a new one; undone, the old one
    again. A `save_pretrained` folder (no manifest) always counts its tokenizer."""
    import hashlib

    from conftest import SENTENCES, tiny_tokenizer

    from poolattn.export import export_model
    from poolattn.manifest import TrainingManifest
    from poolattn.model_folder import model_fingerprint

    model = tiny_model("llama", 5)
    export = export_model(
        model,
        tiny_tokenizer(),
        tmp_path / "export",
        check_texts=SENTENCES[:2],
        manifest=TrainingManifest(variant=5, backbone="tiny"),
    )
    weights = (export / "config.json").read_bytes() + (export / "model.safetensors").read_bytes()
    revision = model_fingerprint(export)
    assert revision == hashlib.sha256(weights).hexdigest()[:16]
    tokenizer_config = export / "tokenizer_config.json"
    original = tokenizer_config.read_text()
    tokenizer_config.write_text(json.dumps({**json.loads(original), "do_lower_case": True}))
    assert model_fingerprint(export) != revision
    tokenizer_config.write_text(original)
    assert model_fingerprint(export) == revision

    model.tokenizer = tiny_tokenizer()
    model.save_pretrained(tmp_path / "saved")
    saved = model_fingerprint(tmp_path / "saved")
    (tmp_path / "saved" / "special_tokens_map.json").write_text('{"pad_token": "<unk>"}')
    assert model_fingerprint(tmp_path / "saved") != saved


@pytest.mark.parametrize("value", ["0", "-3"])
@pytest.mark.parametrize("flag", ["--batch-size", "--budget", "--max-length", "--truncate-dim"])
def test_counts_below_one_are_refused_before_anything_loads(tmp_path, data_dir, capsys, flag, value):
    from poolattn import evaluation

    tiny_model("llama", 5).save_pretrained(tmp_path / "m")
    run = ["run", "--model", str(tmp_path / "m"), "--tasks", "BIOSSES", "--data-dir", str(data_dir)]
    with pytest.raises(SystemExit) as refused:  # argparse: usage and one error line, exit 2
        cli.evaluate([*run, "--output", str(tmp_path / "out"), flag, value])
    assert refused.value.code == 2
    assert f"argument {flag}: '{value}' is not a whole number >= 1" in capsys.readouterr().err
    name = flag.removeprefix("--").replace("-", "_")
    with pytest.raises(evaluation.EvaluationError, match=f"^{flag} {value}: give the "):  # the library's door
        evaluation.evaluate_models(
            [str(tmp_path / "m")], output=tmp_path / "out", tasks=["BIOSSES"], **{name: int(value)}
        )
    assert not (tmp_path / "out").exists()


def test_an_output_that_is_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "taken").write_text("")
    for command in (["run", "--model", str(tmp_path), "--tasks", "BIOSSES"], ["compare", str(tmp_path)]):
        with pytest.raises(SystemExit, match=r"--output .*taken is a file; give a folder"):
            cli.evaluate([*command, "--output", str(tmp_path / "taken")])


def test_a_model_folder_with_a_damaged_config_is_named(tmp_path):
    tiny_model("llama", 5).save_pretrained(tmp_path / "model")
    config = tmp_path / "model" / "config.json"
    config.write_text(config.read_text()[:40])
    with pytest.raises(SystemExit, match=r"--model .*model: its config.json is damaged"):
        cli.evaluate(
            ["run", "--model", str(tmp_path / "model"), "--tasks", "BIOSSES", "--output", str(tmp_path / "o")]
        )


def test_a_training_checkpoint_is_refused_not_scored_as_its_bare_backbone(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (checkpoint / "adapter_model.safetensors").write_bytes(b"")
    (checkpoint / "poolattn_checkpoint.json").write_text("{}")
    with pytest.raises(
        SystemExit, match=r"evaluate run: --model .*checkpoint-4 is a training checkpoint .*load_checkpoint"
    ):
        cli.evaluate(["run", "--model", str(checkpoint), "--tasks", "BIOSSES", "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "results").exists()


def test_a_logged_run_leaves_out_the_libraries_loading_bars(tmp_path, data_dir):
    """evaluate.py with its output going to a file (a job's log): one "Loading weights" / "Generating split" bar per
    model and task filled it. They are left out where stderr is not a terminal; the scores are printed as ever, and an
    environment asking for the bars (HF_HUB_DISABLE_PROGRESS_BARS=0) keeps them."""
    import os
    import subprocess
    import sys

    tiny_model("llama", 5).save_pretrained(tmp_path / "m")
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, str(root / "evaluate.py"), "run", "--model", str(tmp_path / "m"), "--tasks", "BIOSSES"]
    command += ["--data-dir", str(data_dir), "--output", str(tmp_path / "out")]
    logged = {}
    for bars in (None, "0"):
        env = {**os.environ, "PYTHONPATH": str(root)}
        env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        if bars is not None:
            env["HF_HUB_DISABLE_PROGRESS_BARS"] = bars
        run = subprocess.run(command + ["--overwrite"], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        logged[bars] = run.stderr
        assert "BIOSSES" in run.stdout  # the scores, as ever
    assert "Loading weights" not in logged[None] and "Generating test split" not in logged[None]
    assert "Loading weights" in logged["0"]


def test_every_model_of_a_run_prints_its_own_scores_also_two_seeds_of_one_name(tmp_path, data_dir, capsys):
    """Two seeds of one recipe are recorded under one model name: the run's scores were keyed by that name, so the
    second seed's replaced the first's and only one seed was printed."""
    from poolattn.manifest import TrainingManifest

    for seed in (1, 2):
        folder = tmp_path / f"seed-{seed}" / "model"
        tiny_model("llama", 5, seed=seed).save_pretrained(folder)
        TrainingManifest(variant=5, backbone="b", seed=seed, model_name="poolattn/same").write(folder)
    models = [str(tmp_path / f"seed-{seed}" / "model") for seed in (1, 2)]
    arguments = ["run", "--model", models[0], "--model", models[1], "--tasks", "BIOSSES", "--data-dir", str(data_dir)]
    assert cli.evaluate([*arguments, "--output", str(tmp_path / "out")]) == 0
    printed = [line.split() for line in capsys.readouterr().out.splitlines() if " BIOSSES " in line]
    assert [line[0] for line in printed] == models
    assert printed[0][2] != printed[1][2]  # each seed's own score


def test_compare_pairs_runs_of_one_data_however_its_folder_was_spelled_and_refuses_other_data(tmp_path, monkeypatch):
    """Two models scored on the same task copy, one given it as a relative path and one as an absolute path, are
    paired (the paired tests were skipped as "different data"); a model scored on another copy of a task is refused
    (its scores were set beside the others' and tested as a model difference)."""
    from conftest import biosses_copy

    from poolattn.evaluation.comparison import compare_results
    from poolattn.evaluation.requests import EvaluationError
    from poolattn.evaluation.scoring import evaluate_models

    biosses_copy(tmp_path / "data", 30)
    biosses_copy(tmp_path / "other", 20)
    for variant in (1, 5):
        tiny_model("llama", variant).save_pretrained(tmp_path / f"v{variant}")
    monkeypatch.chdir(tmp_path)
    evaluate_models([str(tmp_path / "v1")], output=tmp_path / "r", tasks=["BIOSSES"], data_dir="data", batch_size=8)
    evaluate_models([str(tmp_path / "v5")], output=tmp_path / "r", tasks=["BIOSSES"], data_dir=tmp_path / "data")
    evaluate_models([str(tmp_path / "v5")], output=tmp_path / "o", tasks=["BIOSSES"], data_dir="other", batch_size=8)
    monkeypatch.chdir(tmp_path.parent)  # compared from elsewhere: the recorded folders still load the gold
    folders = sorted(path for path in (tmp_path / "r" / "results").iterdir() if path.is_dir())
    comparison = compare_results(folders, output=tmp_path / "compared")
    paired = (tmp_path / "compared" / "paired_tests.csv").read_text()
    assert "BIOSSES" in paired and "Not tested" not in comparison.report
    other = next(path for path in (tmp_path / "o" / "results").iterdir() if path.is_dir())
    with pytest.raises(EvaluationError, match="scored tasks on different data \\(BIOSSES: the runs scored different"):
        compare_results([folders[0], other], output=tmp_path / "refused")


def _tiny_sentence_transformers(folder: Path, words: list[str], prompts: dict) -> Path:
    """A 2-layer random BERT with mean pooling, saved as a sentence-transformers folder with `prompts`."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "zzz", *sorted(set(words) - {"zzz"})[:300]]
    (folder / "hf").mkdir(parents=True)
    (folder / "hf" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    BertModel(config.__class__(**{**config.to_dict(), "intermediate_size": 64})).save_pretrained(folder / "hf")
    BertTokenizerFast(vocab_file=str(folder / "hf" / "vocab.txt")).save_pretrained(folder / "hf")
    transformer = models.Transformer(str(folder / "hf"), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, models.Pooling(32, "mean")], prompts=prompts)
    model.save(str(folder / "model"))
    return folder / "model"


def test_no_instructions_gives_a_sentence_transformers_model_none_of_its_own_prompts(tmp_path):
    """`--no-instructions` on a sentence-transformers folder whose config gives a prompt: scored without it (as the
    same weights without prompts score), and kept apart from its prompted scores; it used to change nothing."""
    from conftest import biosses_copy

    from poolattn.evaluation.scoring import evaluate_models

    data = biosses_copy(tmp_path / "data", 30)
    words = " ".join(json.loads(line)["sentence1"] for line in (data / "BIOSSES" / "test.jsonl").open()).lower()
    prompted = _tiny_sentence_transformers(tmp_path / "prompted", words.split(), {"STS": "zzz zzz zzz "})
    plain = _tiny_sentence_transformers(tmp_path / "plain", words.split(), {})

    def score(model: Path, instructions: bool) -> tuple[float, str]:
        selection = dict(tasks=["BIOSSES"], data_dir=data, instructions=instructions)
        run = evaluate_models([str(model)], output=tmp_path / "r", **selection)
        return run.scores[str(model)]["BIOSSES"], run.folders[str(model)].name

    with_prompt, revision = score(prompted, True)
    without, plain_revision = score(prompted, False)
    assert without == pytest.approx(score(plain, True)[0], abs=1e-6)
    assert without != pytest.approx(with_prompt, abs=1e-6)
    assert plain_revision == f"{revision}-no-instructions"


def test_runs_of_hub_data_are_one_data_whatever_folder_their_run_recorded_and_a_spaced_name_is_no_model(
    tmp_path, monkeypatch
):
    """A run records one data dir for its folder (the last run's), and per task the fingerprint of a local copy: a
    task read from the Hub by two runs is the same data even where one of them also scored a local copy; a local copy
    against the Hub is not. Offline, a name no repository id can be is refused in one line (it was a traceback)."""
    from types import SimpleNamespace

    from poolattn.evaluation.encoders import check_model_source
    from poolattn.evaluation.pairing import different_data
    from poolattn.evaluation.requests import EvaluationError

    hub_a = SimpleNamespace(task_data={"ArguAna": "abc"}, data_dir="/data")  # STSBenchmark from the Hub
    hub_b = SimpleNamespace(task_data={}, data_dir=None)
    local = SimpleNamespace(task_data={"STSBenchmark": "def"}, data_dir="/data")
    assert different_data("STSBenchmark", [hub_a, hub_b]) is None
    assert "others the Hub's" in different_data("STSBenchmark", [hub_a, local])
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    for name in ("my model", "outputs..x"):
        with pytest.raises(EvaluationError, match="not a Hub repository in the local cache"):
            check_model_source(name)
