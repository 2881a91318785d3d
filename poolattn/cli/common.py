"""What every command door shares: progress on the main process, comma lists, and storage errors in one line."""

import logging
import os
import sys

# Only what the parsers need is imported here; each command imports the training stack (transformers' Trainer, peft,
# datasets) or the evaluation stack (mteb) when it runs, so `--help` answers without them.


def show_progress(*, main_process: bool = True) -> None:
    """The package's INFO messages (what was trained, written, skipped) on the main process; warnings everywhere.
    Written to a file or a pipe (a study's log, a job's), the libraries' loading bars are left out
    (`quiet_loading_bars`)."""
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("poolattn").setLevel(logging.INFO if main_process else logging.WARNING)
    if not sys.stderr.isatty():
        quiet_loading_bars()


LOADING_BARS = ("Loading weights", "Writing model shards")  # transformers' bars for every model loaded or saved


def quiet_loading_bars() -> None:
    """No "Loading weights" or "Writing model shards" bar (transformers', one per model loaded or saved) and no
    "Generating split" bar (datasets'), which fill a log; the training bar, `encode`'s bar, downloads, the study's
    steps and the package's messages stay. An environment that sets HF_HUB_DISABLE_PROGRESS_BARS itself (0: every
    bar, 1: none) decides instead."""
    if "HF_HUB_DISABLE_PROGRESS_BARS" in os.environ:
        return
    if os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1") == "1" and "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()  # imported already: it read the variable at import
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_tqdm_hook(_without_loading_bars)


def _without_loading_bars(factory, args, kwargs):
    if kwargs.get("desc") in LOADING_BARS:
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


def comma_list(value) -> list[str]:
    """Names given comma-separated, space-separated (several arguments) or both."""
    values = value if isinstance(value, list) else [value]
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def positive_int(value: str) -> int:
    """An argparse `type` for counts and sizes (a batch size, a budget, a length): a whole number >= 1, refused while
    the flags are parsed, before anything is loaded."""
    import argparse

    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 1; give one (e.g. 32).")
    return number


def storage_errors_in_one_line(command: str):
    """A door's decorator: a full disk, a read-only folder, a missing permission or a file where a folder is needed
    ends the command with one line (which file, what happened, what to do) instead of a traceback; the package's
    writes are atomic, so nothing half-written is left behind. So does a folder another live process is writing
    (`files.FolderBusyError`)."""
    import errno
    import functools

    advice = {
        errno.ENOSPC: "no space left on the device: free some space (or give a folder on another disk), then "
        "run the same command again; finished work is kept",
        errno.EDQUOT: "disk quota exceeded: free some space, then run the same command again",
        errno.EROFS: "the file system is read-only: give a folder you can write to",
        errno.EACCES: "permission denied: give a folder you can write to (or fix its permissions)",
        errno.EPERM: "operation not permitted: give a folder you can write to",
        errno.ENOTDIR: "a part of that path is a file, not a folder: give a folder path (or move the file away)",
        errno.EEXIST: "it exists and is no folder, where one is needed: give another path (or move it away)",
        errno.EISDIR: "it is a folder, where a file is to be written: give another path (or move the folder away)",
    }

    def decorate(door):
        @functools.wraps(door)
        def run(*args, **kwargs):
            from ..files import FolderBusyError

            try:
                return door(*args, **kwargs)
            except FolderBusyError as error:  # another live process writes there: named, with what to do
                sys.exit(f"{command}: {error}")
            except OSError as error:
                if error.errno not in advice:
                    raise
                where = error.filename or "a file"
                sys.exit(f"{command}: could not write {where}: {advice[error.errno]}.")

        return run

    return decorate
