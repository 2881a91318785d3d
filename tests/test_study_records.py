"""A study's records copied without its weights (`study.py --copy-records`): the study resumes on the copy keeping
every scored run, its report is the original's, and a run whose scores are incomplete is refused."""

import json
import random

import pytest
from test_study import read_csv, study_arguments

from poolattn import cli
from poolattn.evaluation import paired
from poolattn.files import folder_lock
from poolattn.study import records
from poolattn.study import runner as study_runner
from poolattn.study.plan import StudyPlan
from poolattn.training import runner as training_runner

pytest.importorskip("mteb")


def _small_study(backbone: str, triplets: str, tmp_path) -> list[str]:
    """The tiny study with variants 1 and 2, one seed, and their untrained controls."""
    argv = study_arguments(backbone, triplets, tmp_path)
    argv[argv.index("--designs") + 1], argv[argv.index("--seeds") + 1] = "1,2", "1"
    return ["--controls", *argv]


def test_a_study_resumes_from_its_records_without_weights_and_reports_the_same(
    tiny_backbone_folder, triplets_file, tmp_path, monkeypatch
):
    argv = _small_study(tiny_backbone_folder, triplets_file, tmp_path)
    assert cli.run_study_command(argv) == 0
    study, copy = tmp_path / "study", tmp_path / "records"
    assert cli.run_study_command(["--copy-records", str(study), str(copy)]) == 0
    assert not list(copy.rglob("*.safetensors")) and not list(copy.rglob("checkpoint-*"))
    recorded = sorted(path.parent.relative_to(copy).as_posix() for path in copy.rglob("weights_record.json"))
    assert recorded == [f"runs/{row}/seed-42/{name}" for row in ("v1", "v2") for name in ("model", "step0")]

    def no_work(*args, **kwargs):
        raise AssertionError("a run of the records was trained or scored again")

    monkeypatch.setattr(training_runner, "train_variant", no_work)
    monkeypatch.setattr(study_runner, "evaluate_models", no_work)
    copied_argv = [*argv]
    copied_argv[copied_argv.index("--output") + 1] = str(copy)
    assert cli.run_study_command(copied_argv) == 0
    for name in ("study_table.csv", "study_tests.csv", "per_task.csv"):
        assert read_csv(copy / "report" / name) == read_csv(study / "report" / name), name

    # evaluate.py on a model of the copy: refused before anything loads, saying where its scores are
    with pytest.raises(SystemExit, match="copied without its weights.*scores are in the study's results"):
        cli.evaluate(
            ["run", "--model", str(copy / "runs" / "v2" / "seed-42" / "model"), "--tasks", "BIOSSES"]
            + ["--output", str(tmp_path / "scores")]
        )

    # a copied score keyed otherwise than scoring now would key it (another mteb version, another prompt): the
    # score does not stand, and the run cannot be scored again: refused, naming the task, why and what to do
    revision = next((copy / "results" / "results").glob("*v2/*"))
    settings = json.loads((revision / "poolattn_run.json").read_text())
    kept = json.dumps(settings)
    settings["task_keys"]["BIOSSES"]["mteb"] = "1.0.0"
    (revision / "poolattn_run.json").write_text(json.dumps(settings))
    with pytest.raises(SystemExit, match="copied without its weights.*BIOSSES was scored by mteb 1.0.0 .now "):
        cli.run_study_command(copied_argv)
    (revision / "poolattn_run.json").write_text(kept)
    # a copied run missing one task's scores: likewise
    (revision / "BIOSSES.json").unlink()
    with pytest.raises(SystemExit, match="copied without its weights.*lacks BIOSSES.*remove its run folder"):
        cli.run_study_command(copied_argv)
    control = next((copy / "results" / "results").glob("*v2-step0/*"))
    (control / "BIOSSES.json").unlink()
    with pytest.raises(
        SystemExit, match="step0 was copied without its weights.*lacks BIOSSES.*remove its step0 folder"
    ):
        cli.run_study_command(copied_argv)


def test_a_copy_leaves_out_a_model_not_yet_scored_so_the_study_trains_it_there_again(
    tiny_backbone_folder, triplets_file, tmp_path, capsys
):
    """A study stopped while a run was being scored (or while mteb wrote a predictions file): its weights stay behind,
    so the copy cannot score it; it was copied and then refused on the copy. It is left out, named, and the study on
    the copy trains and scores it."""
    argv = _small_study(tiny_backbone_folder, triplets_file, tmp_path)
    assert cli.run_study_command(argv) == 0
    study, copy = tmp_path / "study", tmp_path / "records"
    revision = next((study / "results" / "results").glob("*v2/*"))
    (revision / "BIOSSES.json").unlink()  # stopped before v2's last task was scored
    # and v1's predictions of a task cut short while mteb wrote them (the copy stopped on it, naming no file)
    predictions = next((study / "results" / "results").glob("*v1/*")) / "predictions" / "BIOSSES_predictions.json"
    predictions.write_text(predictions.read_text()[:100])
    capsys.readouterr()
    assert cli.run_study_command(["--copy-records", str(study), str(copy)]) == 0
    out = capsys.readouterr().out
    assert "left out, its scores not complete" in out and "runs/v2/seed-42/model (lacks BIOSSES)" in out
    assert "left out, damaged (a study stopped while writing it?): results/results/" in out
    assert "/predictions/BIOSSES_predictions.json" in out and "runs/v1/seed-42/model (lacks BIOSSES)" in out
    assert not (copy / "runs" / "v2" / "seed-42" / "model").exists()
    assert (copy / "runs" / "v2" / "seed-42" / "step0" / "weights_record.json").is_file()  # its control stands
    copied_argv = [*argv]
    copied_argv[copied_argv.index("--output") + 1] = str(copy)
    assert cli.run_study_command(copied_argv) == 0
    assert (copy / "runs" / "v2" / "seed-42" / "model" / "model.safetensors").is_file()
    for name in ("study_table.csv", "per_task.csv"):
        assert read_csv(copy / "report" / name) == read_csv(study / "report" / name), name


def test_a_copy_is_refused_into_a_folder_that_holds_files_from_a_running_study_and_of_no_study(tmp_path):
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "study.json").write_text("{}")
    with pytest.raises(SystemExit, match="study.json is not a study plan"):
        cli.run_study_command(["--copy-records", str(tmp_path / "study"), str(tmp_path / "new")])
    StudyPlan(backbone="smollm2-135m", seeds=[42], rows=[], train_argv=[]).write(tmp_path / "study")
    holder = folder_lock(tmp_path / "study", what="study")  # a study running in the folder (this process holds it)
    with holder, pytest.raises(SystemExit, match="being written by another study"):
        cli.run_study_command(["--copy-records", str(tmp_path / "study"), str(tmp_path / "new")])
    assert not (tmp_path / "new").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="taken exists and is not an empty folder"):
        cli.run_study_command(["--copy-records", str(tmp_path / "study"), str(tmp_path / "taken")])
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_cut_retrieval_predictions_keep_every_querys_ndcg_at_10():
    """The copy keeps each query's best `TOP_DOCUMENTS` documents: nDCG@10 per query from the cut predictions equals
    the full ones' (ties included: both keep mteb's order among equal scores)."""
    rng = random.Random(0)
    documents = [f"d{index}" for index in range(1000)]
    queries = {
        f"q{index}": {doc: round(rng.random(), 2) for doc in documents} for index in range(20)
    }  # 2 decimals: many ties
    relevant = {query: {doc: 1 for doc in rng.sample(documents, 3)} for query in queries}
    saved = {"mteb_model_meta": {"name": "x"}, "default": {"test": queries}}
    cut = records._top_documents(json.loads(json.dumps(saved)))
    assert cut["mteb_model_meta"] == saved["mteb_model_meta"]
    assert all(len(scores) == records.TOP_DOCUMENTS for scores in cut["default"]["test"].values())
    for query in queries:
        full = paired.ndcg_at_10(queries[query], relevant[query])
        assert paired.ndcg_at_10(cut["default"]["test"][query], relevant[query]) == full
