"""Where the project's shared data is (local MTEB task copies, training triplets in `train/`): an explicit setting
(`$POOLATTN_DATA`) or `../shared/data` beside a source checkout, never a path inside an installed package. Light: the
command-line parsers read their defaults from here."""

import os
from pathlib import Path

UNSET_DATA = "$POOLATTN_DATA"  # stands for the shared data where it is not set (`require_shared_data`)


def shared_data() -> Path | None:
    """The project's shared data (local MTEB task copies, training triplets in `train/`): $POOLATTN_DATA, else
    `../shared/data` beside a source checkout when it is there; None otherwise (an installed wheel sits elsewhere)."""
    if os.environ.get("POOLATTN_DATA"):
        return Path(os.environ["POOLATTN_DATA"])
    beside_checkout = Path(__file__).resolve().parents[2] / "shared" / "data"
    return (
        beside_checkout
        if (Path(__file__).resolve().parents[1] / "pyproject.toml").is_file() and beside_checkout.is_dir()
        else None
    )


SHARED_DATA = shared_data()


class SharedDataError(ValueError):
    """A default that points at the project's shared data where none is set; the message says what to set."""


def require_shared_data(value: str, flag: str) -> str:
    """`value`, unless it stands for shared data that is not set: then a clear error saying what to set."""
    if str(value).startswith(UNSET_DATA):
        raise SharedDataError(
            f"{flag} defaults to the project's shared data, which is not set here: set "
            "POOLATTN_DATA to its folder (the one holding the task copies and train/), or give "
            f"{flag} explicitly."
        )
    return value
