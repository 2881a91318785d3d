"""The key a cached task score is kept under (`poolattn.evaluation.cache_keys`): every input that decides the score
and is not in the results folder's revision scores the task again when it changes (tiny random poolattn models)."""

import json
from pathlib import Path

import pytest
from conftest import tiny_model

pytest.importorskip("mteb")
from poolattn.evaluation.cache_keys import stale_results  # noqa: E402
from poolattn.evaluation.scoring import evaluate_models  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _score(model: Path, output: Path, data: Path, task: str, **options) -> float:
    run = evaluate_models([str(model)], output=output, tasks=[task], data_dir=data, batch_size=8, **options)
    return run.scores[next(iter(run.scores))][task]


def test_a_task_scored_on_other_subsets_is_scored_again(tmp_path, caplog):
    """A multi-subset task scored on two subsets, then asked for one of them with --subsets: mteb's cache holds every
    asked subset, so the two-subset result came back as the one-subset score (its mean over both). The subsets
    scored are part of each task's key; the narrower run gets the score a fresh run gives."""
    lines = (SHARED / "STSBenchmark" / "test.jsonl").read_text().splitlines()
    for subset, rows in (("en-en", lines[:30]), ("en-de", lines[100:130])):
        (tmp_path / "data" / "STS17" / subset).mkdir(parents=True)
        (tmp_path / "data" / "STS17" / subset / "test.jsonl").write_text("\n".join(rows) + "\n")
    tiny_model("llama", 5).save_pretrained(tmp_path / "m")
    data, output = tmp_path / "data", tmp_path / "results"
    both = _score(tmp_path / "m", output, data, "STS17")
    one = _score(tmp_path / "m", output, data, "STS17", subsets=["en-en"])
    fresh = _score(tmp_path / "m", tmp_path / "fresh", data, "STS17", subsets=["en-en"])
    assert one == pytest.approx(fresh, abs=1e-12) and abs(one - both) > 1e-6
    assert "STS17 was scored on the subsets ['en-de', 'en-en'] (now ['en-en'])" in caplog.text
    written = next(output.rglob("STS17.json")).stat().st_mtime_ns
    assert _score(tmp_path / "m", output, data, "STS17", subsets=["en-en"]) == pytest.approx(one, abs=1e-6)
    assert next(output.rglob("STS17.json")).stat().st_mtime_ns == written  # nothing changed: the cached score


def test_the_folders_own_query_prompt_is_part_of_the_key(tmp_path, monkeypatch, caplog):
    """The queries of a task type the instruction table has no entry for (instruction retrieval, bitext mining, ...;
    here retrieval with its entry taken out) get the folder's own query prompt (`config_sentence_transformers.json`).
    That file is not in the weights' revision and the table's instruction (none) did not change, so an edited prompt
    was served the old prompt's score. The key holds the prompt each kind of text gets."""
    from poolattn.prompts import TASK_INSTRUCTIONS

    monkeypatch.delitem(TASK_INSTRUCTIONS, "Retrieval")
    task = tmp_path / "data" / "TinyRetrieval"
    for part in ("corpus", "queries", "qrels"):
        (task / part).mkdir(parents=True)
    sources = [json.loads(line) for line in (SHARED / "STSBenchmark" / "test.jsonl").read_text().splitlines()[:24]]
    rows = {"corpus": [{"_id": f"d{i}", "text": row["sentence2"]} for i, row in enumerate(sources)]}
    rows["queries"] = [{"_id": f"q{i}", "text": row["sentence1"]} for i, row in enumerate(sources)]
    rows["qrels"] = [{"query-id": f"q{i}", "corpus-id": f"d{i}", "score": 1} for i in range(len(sources))]
    for part, name in (("corpus", "corpus"), ("queries", "queries"), ("qrels", "test")):
        (task / part / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[part]))
    tiny_model("llama", 5).save_pretrained(tmp_path / "m")
    settings = tmp_path / "m" / "config_sentence_transformers.json"

    def score(output: Path, query_prompt: str) -> float:
        settings.write_text(json.dumps({"prompts": {"query": query_prompt, "document": ""}}))
        return _score(tmp_path / "m", output, tmp_path / "data", "TinyRetrieval")

    paraphrase = "Instruct: Given a sentence, find its paraphrase\nQuery: "
    before = score(tmp_path / "results", "Instruct: Find the answer\nQuery: ")
    after = score(tmp_path / "results", paraphrase)
    assert after == pytest.approx(score(tmp_path / "fresh", paraphrase))
    assert after != before
    assert "TinyRetrieval was scored with another task instruction or prompt" in caplog.text


def _scored_folder(tmp_path: Path, settings: dict) -> Path:
    folder = tmp_path / "revision"
    (folder / "predictions").mkdir(parents=True)
    (folder / "BIOSSES.json").write_text("{}")
    (folder / "poolattn_run.json").write_text(json.dumps(settings))
    return folder


def test_a_task_scored_on_a_local_copy_is_scored_again_when_read_from_the_hub(tmp_path):
    """A task read from the Hub has no local fingerprint: its score from a local copy (an edited or budget-cut one)
    was served as the Hub data's, since only a present fingerprint was compared. Recorded keys and the fingerprints of
    older runs both tell the two apart."""
    local = {"data": "0123abcd01234567", "splits": ["test"], "subsets": ["default"]}
    hub = {**local, "data": "mteb/biosses-sts@0123"}
    folder = _scored_folder(tmp_path / "keyed", {"task_keys": {"BIOSSES": local}})
    assert stale_results(folder, {"BIOSSES": local}) == {}
    assert "other data (0123abcd01234567)" in stale_results(folder, {"BIOSSES": hub})["BIOSSES"]
    assert not (folder / "BIOSSES.json").exists()
    older = _scored_folder(tmp_path / "older", {"task_data": {"BIOSSES": "0123abcd01234567"}})
    assert stale_results(older, {"BIOSSES": hub}, fingerprints={"BIOSSES": "0123abcd01234567"}) == {}
    assert "BIOSSES" in stale_results(older, {"BIOSSES": hub}, fingerprints={"BIOSSES": None})


def test_a_budget_score_of_another_sampler_or_mteb_version_is_scored_again(tmp_path, monkeypatch, caplog):
    """The revision holds the budget's size, not which units it keeps: a score cached before the sampler changed
    (`budget.SAMPLER_VERSION`), or by another mteb (its metrics, its evaluators' own sampling), came back as the new
    one's. Both are in each task's key; an unchanged run is still served from the cache."""
    from conftest import biosses_copy

    from poolattn.evaluation import budget

    data = biosses_copy(tmp_path / "data", 40)
    tiny_model("llama", 5).save_pretrained(tmp_path / "m")
    output = tmp_path / "results"
    first = _score(tmp_path / "m", output, data, "BIOSSES", budget=20)
    result = next(output.rglob("BIOSSES.json"))
    written = result.stat().st_mtime_ns
    assert _score(tmp_path / "m", output, data, "BIOSSES", budget=20) == pytest.approx(first, abs=1e-6)
    assert result.stat().st_mtime_ns == written
    monkeypatch.setattr(budget, "SAMPLER_VERSION", 2)
    _score(tmp_path / "m", output, data, "BIOSSES", budget=20)
    assert "BIOSSES was scored on another budget sample" in caplog.text and result.stat().st_mtime_ns != written
    settings = json.loads((result.parent / "poolattn_run.json").read_text())
    key = settings["task_keys"]["BIOSSES"]
    assert key["sample"]["version"] == 2 and key["mteb"] == json.loads(result.read_text())["mteb_version"]


def test_keys_recorded_before_the_sampler_and_mteb_fields_are_read_as_what_they_were(tmp_path):
    """A key recorded before `sample` and `mteb` were part of it is not stale for that alone: its sampler was the
    first one and its mteb version is the one its result file names; another mteb version scores it again."""
    import mteb

    now = {"data": "0123abcd01234567", "splits": ["test"], "subsets": ["default"]}
    now |= {"sample": {"version": 1, "seed": 42, "corpus_per_query": 10}, "mteb": mteb.__version__}
    older = {name: now[name] for name in ("data", "splits", "subsets")}
    folder = _scored_folder(tmp_path / "same", {"task_keys": {"BIOSSES": older}})
    (folder / "BIOSSES.json").write_text(json.dumps({"mteb_version": mteb.__version__}))
    assert stale_results(folder, {"BIOSSES": now}) == {}
    folder = _scored_folder(tmp_path / "other", {"task_keys": {"BIOSSES": older}})
    (folder / "BIOSSES.json").write_text(json.dumps({"mteb_version": "1.0.0"}))
    assert stale_results(folder, {"BIOSSES": now}) == {"BIOSSES": f"was scored by mteb 1.0.0 (now {mteb.__version__})"}


def test_results_recorded_without_a_key_are_checked_on_their_mteb_version_and_get_no_key_they_were_not_checked_on(
    tmp_path, caplog
):
    """A result of a run that recorded no key (before keys were) was served whatever mteb scored it, and the current
    key was then written beside it, so it was served as checked ever after. Now its file's mteb version is checked
    as a recorded key's is, and a result kept on what its run recorded gets no key written for it."""
    from conftest import biosses_copy

    data = biosses_copy(tmp_path / "data", 30)
    tiny_model("llama", 5).save_pretrained(tmp_path / "m")
    output = tmp_path / "results"
    first = _score(tmp_path / "m", output, data, "BIOSSES")
    result = next(output.rglob("BIOSSES.json"))
    settings_file = result.parent / "poolattn_run.json"
    settings = json.loads(settings_file.read_text())
    del settings["task_keys"]
    settings_file.write_text(json.dumps(settings))  # as a run before 2026-12 recorded it
    assert _score(tmp_path / "m", output, data, "BIOSSES") == pytest.approx(first, abs=1e-6)  # served: it stands
    assert "BIOSSES" not in json.loads(settings_file.read_text()).get("task_keys", {})  # and was not keyed

    scored = json.loads(result.read_text())
    scored["mteb_version"] = "1.14.0"  # an older mteb scored it: scored again, and keyed now
    result.write_text(json.dumps(scored))
    _score(tmp_path / "m", output, data, "BIOSSES")
    assert "BIOSSES was scored by mteb 1.14.0" in caplog.text
    assert json.loads(result.read_text())["mteb_version"] != "1.14.0"
    assert "BIOSSES" in json.loads(settings_file.read_text())["task_keys"]
