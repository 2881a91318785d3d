"""Two writers at once: the folder lock (`files.folder_lock`) is whole when seen, taken over only from a process that
is gone, and honoured by every writer (atomic saves, evaluations). The second process is played in-process, at the
point where it would do harm, so each test is deterministic."""

import contextlib
import json
import os
import socket
import sys
from pathlib import Path

import pytest

from poolattn import files
from poolattn.files import LOCK_FILE, FolderBusyError, atomic_save, folder_lock


def test_a_lock_being_taken_is_never_seen_empty_by_a_second_run(tmp_path):
    """At every line of taking and releasing the lock, a second run either finds no lock or is refused: it never
    reads a lock created but not yet written as a damaged one and takes it over (both runs would then write)."""
    folder, outcomes = tmp_path / "run", []

    def second_run() -> None:
        if not (folder / LOCK_FILE).exists():
            return
        try:
            with folder_lock(folder, what="second run"):
                outcomes.append("took the lock")
        except FolderBusyError:
            outcomes.append("refused")

    def trace(frame, event, arg):
        if frame.f_code.co_filename != files.__file__:
            return None
        if event == "line":
            second_run()  # tracing is off while the trace function runs: the second run is not traced itself
        return trace

    sys.settrace(trace)
    try:
        with folder_lock(folder, what="training run"):
            pass
    finally:
        sys.settrace(None)
    assert outcomes and set(outcomes) == {"refused"}
    assert not (folder / LOCK_FILE).exists()


def test_a_stale_lock_is_taken_over_by_one_run_only(tmp_path, monkeypatch):
    """Two runs find the lock of a killed run; the second takes it over first. The first must then be refused, not
    remove the second's fresh lock and write beside it."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_FILE).write_text(json.dumps({"pid": _gone_pid(), "host": socket.gethostname(), "command": "x"}))
    second, started = contextlib.ExitStack(), []
    warning = files.logger.warning

    def second_run_takes_over(*args):  # the first run has judged the lock gone, and not yet removed it
        warning(*args)
        if not started:
            started.append(True)
            second.enter_context(folder_lock(folder, what="second run"))

    monkeypatch.setattr(files.logger, "warning", second_run_takes_over)
    with second:
        with pytest.raises(FolderBusyError, match="being written by another second run"), folder_lock(folder):
            pass
        assert json.loads((folder / LOCK_FILE).read_text())["what"] == "second run"
    assert not (folder / LOCK_FILE).exists()


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/stat").is_file(), reason="process start times are read in /proc")
def test_a_lock_whose_pid_now_names_another_process_is_taken_over(tmp_path, caplog):
    """A killed run's pid given again to an unrelated process (a restarted container numbers from 1): the lock
    records when its process started, so the new process is not taken for the holder."""
    folder = tmp_path / "run"
    folder.mkdir()
    reused = {"pid": os.getpid(), "host": socket.gethostname(), "command": "train.py", "what": "training run"}
    (folder / LOCK_FILE).write_text(json.dumps({**reused, "started": 1}))  # not when this process started
    with folder_lock(folder, what="training run"):
        assert json.loads((folder / LOCK_FILE).read_text())["started"] != 1
    assert "taking over the lock of a training run that is gone" in caplog.text
    (folder / LOCK_FILE).write_text(json.dumps(reused))  # a lock of an older poolattn, without a start time
    with pytest.raises(FolderBusyError), folder_lock(folder):
        pass


def test_a_second_save_into_a_destination_being_saved_is_refused_not_mixed(tmp_path):
    """A save's temp folder is not a killed save's leftover while its process runs: a second save into the same
    destination is refused (it removed the first's temp folder, which then failed or swapped in half a folder)."""
    destination, refusals = tmp_path / "mined", []

    def first(folder: Path) -> None:
        (folder / "a.jsonl").write_text("first\n")
        try:
            atomic_save(lambda other: (other / "a.jsonl").write_text("second\n"), destination)
        except FolderBusyError as error:
            refusals.append(str(error))
        (folder / "b.jsonl").write_text("first\n")

    atomic_save(first, destination)
    assert refusals and f"{destination} is being written by another save (pid {os.getpid()}" in refusals[0]
    assert {path.name: path.read_text() for path in destination.iterdir()} == {
        "a.jsonl": "first\n",
        "b.jsonl": "first\n",
    }
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mined"]  # no lock or temp folder left


def test_a_save_into_a_folder_another_live_run_writes_is_refused(tmp_path):
    """An ONNX export or a mining run into a folder a training run or study holds (`folder_lock`) is refused
    before its work, naming the holder; the holder's own saves are not in the way."""
    run = tmp_path / "run"
    with folder_lock(run, what="training run"):
        atomic_save(lambda folder: (folder / "config.json").write_text("{}"), run / "model")  # its own export
    holder = {"pid": os.getpid() + 10**6, "host": "another-host", "command": "train.py", "what": "training run"}
    (run / LOCK_FILE).write_text(json.dumps(holder))
    with pytest.raises(FolderBusyError, match=r"run/model/onnx is inside .*run, which another training run"):
        atomic_save(lambda folder: pytest.fail("worked inside a busy folder"), run / "model" / "onnx")


def test_every_command_ends_a_busy_folder_with_one_line_naming_the_holder(tmp_path):
    """mine.py, publish.py, export-onnx and evaluate.py refuse a folder another live process writes as train.py and
    study.py do: one line naming the holder and what to do, no traceback."""
    from poolattn.cli.common import storage_errors_in_one_line

    holder = {"pid": 4321, "host": "another-host", "command": "train.py --output_dir runs", "what": "training run"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(holder))

    @storage_errors_in_one_line("mine")
    def mine() -> int:
        atomic_save(lambda folder: pytest.fail("mined into a busy folder"), tmp_path / "mined")
        return 0

    with pytest.raises(
        SystemExit, match=r"^mine: .*mined is inside .*, which another training run is writing \(pid 4321"
    ):
        mine()


def test_scoring_a_model_already_being_scored_into_the_same_folder_is_refused_in_one_line(
    tmp_path, monkeypatch, capsys
):
    """evaluate.py on the same weights and settings into the same results folder, while one scoring runs: the second
    is refused naming the first (it took the first's finished tasks, whose run settings are written last, for
    unrecorded ones and removed them); the first's results are kept."""
    from poolattn import cli
    from poolattn.evaluation import scoring

    command = _scoring_command(tmp_path)
    run_mteb, second = scoring._run_mteb, []

    def first_scores_then_a_second_starts(*args, **kwargs):
        result = run_mteb(*args, **kwargs)  # the first's task results are written, its run settings not yet
        if not second:
            second.append("the second run was not refused")
            with pytest.raises(SystemExit) as refusal:
                cli.evaluate(command)
            second[0] = str(refusal.value.code)
        return result

    monkeypatch.setattr(scoring, "_run_mteb", first_scores_then_a_second_starts)
    assert cli.evaluate(command) == 0
    assert second[0].startswith("evaluate: ") and "being written by another evaluation" in second[0]
    assert len(list((tmp_path / "out").rglob("BIOSSES.json"))) == 1
    assert not list((tmp_path / "out").rglob(LOCK_FILE))


def test_a_comparison_into_a_folder_another_comparison_is_writing_is_refused(tmp_path, monkeypatch):
    """Two evaluate.py compare runs into one --output (its default is `comparison`): the second is refused naming the
    first, instead of both ending 0 with one's tables beside the other's figure."""
    from poolattn import cli, plots

    assert cli.evaluate(_scoring_command(tmp_path)) == 0
    (results,) = (tmp_path / "out" / "results").iterdir()
    compare = ["compare", str(results), "--output", str(tmp_path / "comparison")]
    draw, second = plots.category_bars, []

    def second_compare_while_drawing(*args):
        if not second:
            second.append("the second comparison was not refused")
            with pytest.raises(SystemExit) as refusal:
                cli.evaluate(compare)
            second[0] = str(refusal.value.code)
        draw(*args)

    monkeypatch.setattr(plots, "category_bars", second_compare_while_drawing)
    assert cli.evaluate(compare) == 0
    assert second[0].startswith("evaluate: ") and "being written by another comparison" in second[0]
    assert not (tmp_path / "comparison" / LOCK_FILE).exists()


def test_a_model_folder_replaced_while_it_loads_is_not_scored_under_its_old_revision(tmp_path, monkeypatch):
    """evaluate.py fingerprints a folder, then loads it: an export into the same folder in between gave the new
    weights' scores the old weights' revision (and their cached results to the next run of either). The folder is
    fingerprinted again once loaded (the tokenizer with it); a change ends the run in one line, nothing scored."""
    from conftest import tiny_model

    from poolattn import cli
    from poolattn.modeling_poolattn import PoolAttnEmbeddingModel

    command = _scoring_command(tmp_path)
    load = PoolAttnEmbeddingModel.from_pretrained.__func__

    def load_while_another_run_exports(cls, *args, **kwargs):
        model = load(cls, *args, **kwargs)
        tiny_model("llama", 5, seed=1).save_pretrained(tmp_path / "m")  # the other run's export lands
        return model

    monkeypatch.setattr(PoolAttnEmbeddingModel, "from_pretrained", classmethod(load_while_another_run_exports))
    with pytest.raises(SystemExit) as refusal:
        cli.evaluate(command)
    said = str(refusal.value.code)
    assert said.startswith("evaluate run: --model ") and "changed while it was being loaded" in said
    assert not list((tmp_path / "out").rglob("BIOSSES.json"))
    monkeypatch.undo()
    assert cli.evaluate(command) == 0  # the folder left alone: scored
    assert len(list((tmp_path / "out").rglob("BIOSSES.json"))) == 1


def _scoring_command(tmp_path) -> list[str]:
    """evaluate.py run of a tiny random model on 20 BIOSSES pairs into `tmp_path/out`."""
    pytest.importorskip("mteb")
    from conftest import biosses_copy, tiny_model

    data = biosses_copy(tmp_path / "data", 20)
    tiny_model("llama", 5).save_pretrained(tmp_path / "m")
    command = ["run", "--model", str(tmp_path / "m"), "--tasks", "BIOSSES", "--data-dir", str(data)]
    return [*command, "--output", str(tmp_path / "out"), "--batch-size", "8"]


def _gone_pid() -> int:
    import subprocess

    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)


def test_a_run_into_a_folder_holding_one_another_live_run_writes_is_refused_before_removing_it(
    tiny_backbone_folder, triplets_file, tmp_path
):
    """A job into `nest` (variants 1 and 5: `nest/v1`, `nest/v5`) while another live train.py writes `nest/v5` is
    refused before anything is removed or trained, naming that run: --overwrite_output_dir would otherwise remove its
    checkpoints, and the job would train into its folder."""
    from test_training import TINY_RUN

    from poolattn import training

    busy = tmp_path / "nest" / "v5"
    (busy / "checkpoint-2").mkdir(parents=True)
    holder = {"pid": 4321, "host": "another-host", "command": "train.py --output_dir nest/v5", "what": "training run"}
    (busy / LOCK_FILE).write_text(json.dumps(holder))
    command = ["--backbone", tiny_backbone_folder, "--train_data", triplets_file, *TINY_RUN, "--max_steps", "1"]
    with pytest.raises(
        FolderBusyError,
        match=r"nest holds .*nest/v5, which another training run is writing \(pid 4321 on another-host",
    ):
        training.main(
            [*command, "--output_dir", str(tmp_path / "nest"), "--variant", "1,5", "--overwrite_output_dir", "1"]
        )
    assert (busy / "checkpoint-2").is_dir() and sorted(path.name for path in (tmp_path / "nest").iterdir()) == ["v5"]


def test_a_lock_below_a_folder_stops_its_lock_only_while_another_process_holds_it(tmp_path):
    """Locks down to a study's row folders (`runs/<row>/seed-<S>`) count; a killed holder's lock, or one this process
    holds itself (a study training its rows), is not in the way."""
    row = tmp_path / "study" / "runs" / "v5" / "seed-42"
    row.mkdir(parents=True)
    (row / LOCK_FILE).write_text(json.dumps({"pid": 4321, "host": "another-host", "command": "x", "what": "study"}))
    busy = pytest.raises(FolderBusyError, match=r"study holds .*seed-42, which another study is writing")
    with busy, folder_lock(tmp_path / "study"):
        pytest.fail("locked a folder holding a busy one")
    assert not (tmp_path / "study" / LOCK_FILE).exists()
    (row / LOCK_FILE).write_text(json.dumps({"pid": _gone_pid(), "host": socket.gethostname(), "command": "x"}))
    with folder_lock(tmp_path / "study"):  # a killed run's lock below
        pass
    (row / LOCK_FILE).unlink()
    with folder_lock(row), folder_lock(tmp_path / "study"):  # this process's own
        pass
