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
from poolattn.files import LOCK_FILE, FolderBusyError, folder_lock


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


def _gone_pid() -> int:
    import subprocess

    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)
