"""Where this process stands in a launch (`torchrun`, `accelerate launch`), read from the launcher's environment
before any process group exists: the one place that knows the process rank.

>>> process_rank(), launched_processes(), is_main_process()  # a plain `python train.py`
(0, 1, True)
"""

import os


def process_rank() -> int:
    """This process's global rank (0 without a launcher)."""
    return int(os.environ.get("RANK", 0))


def launched_processes() -> int:
    """How many processes the launcher started (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """Whether this process writes what only one process may write (reports, locks, shared files)."""
    return process_rank() == 0
