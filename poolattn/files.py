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

import json
import os
import tempfile
from pathlib import Path


class DamagedFileError(ValueError):
    """A file the package wrote that cannot be read back (truncated, emptied, edited); the message names it."""


def write_text(path, text: str, *, encoding: str = "utf-8") -> None:
    """`path.write_text(text)`, atomically: temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding=encoding, newline="") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_json(path, value, **dumps) -> None:
    """`value` as indented JSON, atomically (`write_text`)."""
    write_text(path, json.dumps(value, indent=2, **dumps) + "\n")


def read_json(path, *, recovery: str = "delete it and run the command again"):
    """A JSON file the package wrote; a damaged one raises `DamagedFileError` naming it and `recovery`."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DamagedFileError(f"{path} is damaged (not valid JSON: {error.msg} at character {error.pos}); "
                               f"{recovery}.") from None
    except UnicodeDecodeError:
        raise DamagedFileError(f"{path} is damaged (not UTF-8 text); {recovery}.") from None
