"""Writing and reading the package's small files safely: every text or JSON file is written to a temp file in the
same folder, flushed to disk and renamed over the target, so a kill or a full disk leaves the old file or the new one,
never half of one; a JSON file that cannot be read is named, with what to do.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "plan.json"
>>> write_json(path, {"seeds": [42, 43]})
>>> read_json(path)
{'seeds': [42, 43]}
>>> _ = path.write_text('{"seeds": [4')  # half-written by something else
>>> read_json(path, recovery="delete it and run again")
Traceback (most recent call last):
...
poolattn.files.DamagedFileError: ...plan.json is damaged (not valid JSON: ...); delete it and run again.
"""

import contextlib
import errno
import json
import logging
import os
import shlex
import shutil
import socket
import sys
import tempfile
import typing
from pathlib import Path

from .launch import is_main_process

logger = logging.getLogger(__name__)


class DamagedFileError(ValueError):
    """A file the package wrote that cannot be read back (truncated, emptied, edited); the message names it."""


def write_text(path, text: str, *, encoding: str = "utf-8") -> None:
    """`path.write_text(text)`, atomically (`write_with`)."""
    write_with(path, lambda file: file.write(text.encode(encoding)))


def write_with(path, write: typing.Callable[[typing.BinaryIO], object]) -> None:
    """`write(file)` into a temp file in `path`'s folder, opened in binary mode, then fsync and rename over `path`
    (a figure's `savefig`, a text): a kill or a full disk leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(temp, 0o666 & ~_umask())  # mkstemp's 0600 would make the file private; give it a new file's mode
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def content_hash(root: Path, paths) -> str:
    """A hash of files' names (relative to `root`) and bytes, read in blocks: an edited, added, removed or renamed file
    changes it (the training data's and the task copies' fingerprints)."""
    import hashlib

    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(Path(path).relative_to(root)).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def unwritable_folder(folder) -> str | None:
    """Why `folder` cannot be written into, said from its name on ("out is a file; give a folder ..."), or None: it is
    a file, or the nearest folder of its path that exists (it is created if missing) is not writable."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        return f"{folder} is a file; give a folder (it is created if missing)."
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{folder}: {existing} is not writable; give a folder you can write to."
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path, value, **dumps) -> None:
    """`value` as indented JSON, atomically (`write_text`)."""
    write_text(path, json.dumps(value, indent=2, **dumps) + "\n")


def read_json(path, *, recovery: str = "delete it and run the command again"):
    """A JSON file the package wrote; a damaged one raises `DamagedFileError` naming it and `recovery`."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DamagedFileError(
            f"{path} is damaged (not valid JSON: {error.msg} at character {error.pos}); {recovery}."
        ) from None
    except UnicodeDecodeError:
        raise DamagedFileError(f"{path} is damaged (not UTF-8 text); {recovery}.") from None


def atomic_save(save: typing.Callable[[Path], None], destination: Path) -> Path:
    """Run `save(folder)` into a temp folder beside `destination`, then swap it in: never a half-written folder. A
    second save into `destination` while one runs (another process), or into a folder another live run holds
    (`folder_lock`), is refused with `FolderBusyError`, naming the holder."""
    destination = Path(destination)
    if is_main_process():
        _refuse_a_locked_parent(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    # one save into `destination` at a time: a second would take the first's temp folder for a killed save's
    with held(destination.parent / f".{destination.name}.lock", destination, what="save"):
        return _swap_in(save, destination)


def _swap_in(save: typing.Callable[[Path], None], destination: Path) -> Path:
    clean_interrupted_save(destination)
    staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.tmp-"))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 would make the folder private; give it a new folder's mode
    try:
        save(staging)
        if destination.exists():
            retired = destination.with_name(f".{destination.name}.old-{os.getpid()}")
            destination.rename(retired)
            staging.rename(destination)
            shutil.rmtree(retired)
        else:
            staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination


def clean_interrupted_save(destination: Path) -> None:
    """Undo what a killed `atomic_save` into `destination` left: a previous folder moved aside but not yet replaced is
    put back; half-written temp folders are removed."""
    for retired in sorted(destination.parent.glob(f".{destination.name}.old-*")):
        if not destination.exists():
            retired.rename(destination)
            logger.warning("%s: put back from %s, left by an interrupted save", destination, retired.name)
        else:
            shutil.rmtree(retired, ignore_errors=True)
    for staging in destination.parent.glob(f".{destination.name}.tmp-*"):
        shutil.rmtree(staging, ignore_errors=True)
        logger.info("removed %s, left by an interrupted save", staging)


LOCK_FILE = ".poolattn.lock"


class FolderBusyError(RuntimeError):
    """Another live process is writing into the folder; the message names it."""


@contextlib.contextmanager
def folder_lock(folder, *, what: str = "run"):
    """Hold `<folder>/.poolattn.lock` (pid, host and command of the holder) while a run writes into `folder`: a second
    run into it is refused, naming the holder. A lock whose process is gone (killed) is taken over with a warning.
    Only the main process of a torchrun job locks (the others write nothing of their own)."""
    if not is_main_process():
        yield
        return
    folder = Path(folder)
    _refuse_a_locked_parent(folder)
    _refuse_a_locked_child(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with held(folder / LOCK_FILE, folder, what=what):
        # again now that it is held: of two runs taking nested folders at once, at least one sees the other's lock
        _refuse_a_locked_parent(folder)
        _refuse_a_locked_child(folder)
        yield


@contextlib.contextmanager
def held(path: Path, where: Path, *, what: str):
    """Hold the lock file `path` for writing `where`: created whole (a complete record linked into place, so another
    process never reads half of one), refused while its holder lives, taken over when it is gone (only the very lock
    judged gone is removed), and removed at the end if it is still this process's."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": shlex.join(sys.argv), "what": what}
    record["started"] = _start_time(os.getpid())
    for _ in range(5):
        if _create_whole(path, record):
            break
        raw = _read_bytes(path)
        holder = _parse_holder(raw)
        if holder is not None and _alive(holder):
            raise FolderBusyError(
                f"{where} is being written by another {holder.get('what', 'run')} (pid {holder.get('pid')} on "
                f"{holder.get('host')}: {holder.get('command')}); wait for it to end, or give another output "
                f"folder. If that process is gone, delete {path}."
            )
        if raw is not None:
            logger.warning(
                "%s: taking over the lock of a %s that is gone (%s)",
                where,
                (holder or {}).get("what", "run"),
                (holder or {}).get("command", "unreadable lock"),
            )
            _remove_if_unchanged(path, raw)
    else:
        raise FolderBusyError(f"{where}: other processes kept taking its lock {path}; run the command again.")
    try:
        yield
    finally:
        if _parse_holder(_read_bytes(path)) == record:
            path.unlink(missing_ok=True)


def _create_whole(path: Path, record: dict) -> bool:
    """Create the lock file `path` holding `record` unless it exists (False then): the record is written to a temp
    file and hard-linked into place, so the lock is never visible empty or half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(record, file)
        os.link(temp, path)
        return True
    except FileExistsError:
        return False
    except OSError as error:  # a file system without hard links: created exclusively, then written
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(handle, "w") as file:
            json.dump(record, file)
        return True
    finally:
        os.unlink(temp)


def _remove_if_unchanged(path: Path, raw: bytes) -> None:
    """Remove the lock judged gone, and only it: it is moved aside first, and put back if it is no longer what was
    read (another process took the lock over in between and holds it now)."""
    aside = path.with_name(f"{path.name}.{os.getpid()}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another process removed it first
    try:
        if _read_bytes(aside) != raw:
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
    finally:
        aside.unlink(missing_ok=True)


def _refuse_a_locked_parent(folder: Path) -> None:
    """A run into a folder inside one that another live process holds (a study's `runs/<row>/seed-<S>`, a
    multi-variant run's `<output>/v5`) is refused: the holder writes there too. This process's own locks (a study
    training its rows) are not in the way."""
    for parent in folder.resolve().parents:
        if holder := _other_live_holder(parent / LOCK_FILE):
            raise FolderBusyError(
                f"{folder} is inside {parent}, which another {holder.get('what', 'run')} is writing (pid "
                f"{holder.get('pid')} on {holder.get('host')}: {holder.get('command')}); wait for it to end, or give "
                f"a folder outside it. If that process is gone, delete {parent / LOCK_FILE}."
            )


LOCK_DEPTH = 4  # folders below a lock's that are looked in for other locks: a study's `runs/<row>/seed-<S>` is 3


def _refuse_a_locked_child(folder: Path) -> None:
    """A run into a folder holding one that another live process holds (train.py into `<output>` while another writes
    `<output>/v5`, a study's folder while a run writes one of its rows) is refused: it would write into (or with
    --overwrite_output_dir remove) what the holder writes. Folders down to `LOCK_DEPTH` levels below are looked in,
    hidden ones passed over; this process's own locks are not in the way."""
    if not folder.is_dir():
        return
    for root, folders, names in os.walk(folder):
        depth = len(Path(root).relative_to(folder).parts)
        folders[:] = [name for name in folders if not name.startswith(".")] if depth < LOCK_DEPTH else []
        if depth and LOCK_FILE in names and (holder := _other_live_holder(Path(root) / LOCK_FILE)):
            raise FolderBusyError(
                f"{folder} holds {root}, which another {holder.get('what', 'run')} is writing (pid "
                f"{holder.get('pid')} on {holder.get('host')}: {holder.get('command')}); wait for it to end, or give "
                f"a folder that does not hold it. If that process is gone, delete {Path(root) / LOCK_FILE}."
            )


def _other_live_holder(path: Path) -> dict | None:
    """The holder of the lock file `path` when it is another process that still runs (not this one), else None."""
    holder = _lock_holder(path) if path.is_file() else None
    ours = holder is not None and (holder.get("pid"), holder.get("host")) == (os.getpid(), socket.gethostname())
    return holder if holder is not None and not ours and _alive(holder) else None


def _lock_holder(path: Path) -> dict | None:
    return _parse_holder(_read_bytes(path))


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _parse_holder(raw: bytes | None) -> dict | None:
    try:
        holder = json.loads(raw) if raw is not None else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def _start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, Linux's /proc), or None where it cannot be read: with the
    pid it names one process, so a pid the system gave again to another process is not taken for the lock's holder."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    """Whether the lock's process still runs (on another host: assumed so)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        if int(holder["pid"]) <= 0:  # never a process (0 and -1 would signal a whole group)
            return False
        os.kill(int(holder["pid"]), 0)
    except (ProcessLookupError, ValueError, KeyError, TypeError, OverflowError):
        return False
    except PermissionError:
        pass
    started = holder.get("started")
    return started is None or _start_time(int(holder["pid"])) in (None, started)
