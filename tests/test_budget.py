"""Budget mode: a seeded sample of units per task, stored apart from full runs, never compared with them."""

import json
from pathlib import Path

import pytest
from conftest import tiny_model
from test_local_tasks import wikiqa_subset

mteb = pytest.importorskip("mteb")
from poolattn import cli  # noqa: E402
from poolattn.evaluation.budget import cap_task  # noqa: E402
from poolattn.evaluation.local_tasks import load_task  # noqa: E402
from poolattn.evaluation.results import read_results  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def copy_rows(task: str, destination: Path, rows: int | None = None, files=("test.jsonl",)) -> None:
    (destination / task).mkdir(parents=True)
    for name in files:
        lines = (SHARED / task / name).read_text().splitlines()
        (destination / task / name).write_text("\n".join(lines[:rows]) + "\n")


def test_row_tasks_keep_a_seeded_sample_of_their_evaluation_split(tmp_path):
    copy_rows("STSBenchmark", tmp_path, rows=50)
    copy_rows("Banking77Classification", tmp_path, files=("train.jsonl", "test.jsonl"))
    first, second = (cap_task(load_task("STSBenchmark", data_dir=tmp_path), 20) for _ in range(2))
    assert len(first.dataset["test"]) == 20
    assert first.dataset["test"]["sentence1"] == second.dataset["test"]["sentence1"]  # the same sample every time
    full = load_task("STSBenchmark", data_dir=tmp_path)
    full.load_data()
    assert set(first.dataset["test"]["sentence1"]) < set(full.dataset["test"]["sentence1"])
    banking = cap_task(load_task("Banking77Classification", data_dir=tmp_path), 30)
    assert len(banking.dataset["test"]) == 30 and len(banking.dataset["train"]) == 10003  # train: mteb samples it


def test_clustering_sets_and_retrieval_keep_their_structure(tmp_path):
    copy_rows("TwentyNewsgroupsClustering", tmp_path, rows=2)
    clustering = cap_task(load_task("TwentyNewsgroupsClustering", data_dir=tmp_path), 40)
    for row in clustering.dataset["test"]:
        assert len(row["sentences"]) == len(row["labels"]) == 40

    folder = wikiqa_subset("WikiQARetrieval", tmp_path / "MyRetrieval", queries=12)
    split = cap_task(load_task("MyRetrieval", data_dir=tmp_path), 2).dataset["default"]["test"]
    queries, corpus = set(split["queries"]["id"]), set(split["corpus"]["id"])
    assert len(queries) == 2 and set(split["relevant_docs"]) == queries
    judged = {doc for docs in split["relevant_docs"].values() for doc in docs}
    assert judged <= corpus and len(corpus) == max(20, len(judged))  # judged documents, then others up to 10 x 2
    assert len(corpus) < len((folder / "corpus" / "corpus.jsonl").read_text().splitlines())

    reranking = wikiqa_subset("WikiQAReranking", tmp_path / "MyReranking", queries=12)
    split = cap_task(load_task("MyReranking", data_dir=tmp_path), 5).dataset["default"]["test"]
    ranked = {doc for docs in split["top_ranked"].values() for doc in docs}
    assert len(split["top_ranked"]) == 5 and ranked == set(split["corpus"]["id"])  # candidates only
    assert len(ranked) < len((reranking / "corpus" / "corpus.jsonl").read_text().splitlines())


def test_budget_runs_live_apart_from_full_runs_and_are_not_compared_with_them(tmp_path, capsys):
    copy_rows("STSBenchmark", tmp_path / "data", rows=40)
    tiny_model("llama", 5).save_pretrained(tmp_path / "v5")
    output = tmp_path / "results"
    common = [
        "run",
        "--model",
        str(tmp_path / "v5"),
        "--tasks",
        "STSBenchmark",
        "--data-dir",
        str(tmp_path / "data"),
        "--output",
        str(output),
    ]
    assert cli.evaluate([*common, "--batch-size", "8"]) == 0
    assert "encode: 100%" in capsys.readouterr().err  # progress within a task: a bar over its batches
    assert cli.evaluate([*common, "--budget", "40"]) == 0  # a budget as large as the task: the same units
    assert cli.evaluate([*common, "--budget", "15"]) == 0
    model_folder = next((output / "results").iterdir())
    by_name = {folder.name: read_results(folder) for folder in model_folder.iterdir()}
    assert len(by_name) == 3  # the full run and the two budget runs, each in its own folder
    full = next(result for name, result in by_name.items() if "-budget" not in name)
    whole, small = by_name[f"{full.folder.name}-budget40"], by_name[f"{full.folder.name}-budget15"]
    assert (whole.revision, small.revision) == (f"{full.revision}-budget40", f"{full.revision}-budget15")
    assert whole.scores["STSBenchmark"] == pytest.approx(full.scores["STSBenchmark"], abs=1e-6)
    assert small.scores["STSBenchmark"] != pytest.approx(full.scores["STSBenchmark"], abs=1e-6)
    assert json.loads((small.folder / "poolattn_run.json").read_text())["budget"] == 15
    with pytest.raises(SystemExit, match="mix evaluation budgets"):
        cli.evaluate(["compare", str(full.folder), str(small.folder), "--output", str(tmp_path / "cmp")])
    with pytest.raises(SystemExit) as refused:  # while the flags are parsed (test_evaluate: every count flag)
        cli.evaluate([*common, "--budget", "0"])
    assert refused.value.code == 2 and "--budget: '0' is not a whole number >= 1" in capsys.readouterr().err


def test_a_clustering_task_of_one_text_a_row_is_capped_by_rows(tmp_path):
    """mteb's v2 clustering tasks (e.g. `TwentyNewsgroupsClustering.v2`) hold one text and its label a row, not sets:
    the budget sampled characters of each text as if it were a set, then failed on its labels, outside mteb's own
    error handling (the whole run stopped)."""
    first = json.loads((SHARED / "TwentyNewsgroupsClustering" / "test.jsonl").read_text().splitlines()[0])
    (tmp_path / "TwentyNewsgroupsClustering.v2").mkdir()  # the v2 task reads the sets and makes rows of them
    (tmp_path / "TwentyNewsgroupsClustering.v2" / "test.jsonl").write_text(
        json.dumps({"sentences": first["sentences"][:60], "labels": first["labels"][:60]}) + "\n"
    )
    full = load_task("TwentyNewsgroupsClustering.v2", data_dir=tmp_path)
    full.load_data()
    texts = full.dataset["test"]["sentences"]
    assert all(isinstance(text, str) for text in texts) and len(texts) > 25  # one text a row
    split = cap_task(load_task("TwentyNewsgroupsClustering.v2", data_dir=tmp_path), 25).dataset["test"]
    assert len(split) == 25 and set(split["sentences"]) < set(texts)


def test_a_budget_keeping_too_few_texts_a_label_of_a_clustering_set_says_so(caplog):
    """A budget at or below a set's count of labels scored every model v-measure 1.0, a tie nothing warned of."""
    import datasets

    from poolattn.evaluation.budget import _cap_clustering_sets

    one_set = {"sentences": [f"t{i}" for i in range(40)], "labels": [i % 16 for i in range(40)]}
    sets = datasets.Dataset.from_list([one_set])
    with caplog.at_level("WARNING", logger="poolattn.evaluation.budget"):
        _cap_clustering_sets(sets, 40, 42)
        assert "too few texts a label" not in caplog.text
        _cap_clustering_sets(sets, 2, 42)
    assert "budget 2 keeps 2 texts of 2 labels" in caplog.text
