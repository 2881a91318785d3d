"""Where this process stands in a launch (`torchrun`, `accelerate launch`), read from the launcher's environment
before any process group exists: the one place that knows the process rank, and where the process group of a launch
is waited on and shut down (torch is imported there, when a run ends).

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


def finish_collectives() -> None:
    """Under torchrun, a barrier after the last collective of a run (it releases the GIL while it waits).

    gloo's worker threads free each collective's tensors after the collective returns, and freeing them needs the GIL.
    A thread still doing so when the process exits aborts the finished run ("terminate called without an active
    exception") or deadlocks in ~ProcessGroupGloo; after this barrier the threads are idle. Then
    `shut_down_process_group` at exit. Safe to call after every run: an ablation calls `run` once per arm.
    """
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def shut_down_process_group() -> None:
    """Destroy the process group once, when the process is done (after `finish_collectives`; no collective waits),
    and after the trainers of its runs are released.

    The gloo group's destructor joins its worker threads, and a worker may still need the GIL to free the tensors of
    the last collectives. The group's own Python object releases the GIL while it is destroyed; a DDP wrapper's
    Reducer does not, so a Reducer that outlives the group's Python object deadlocks the process in
    ~ProcessGroupGloo (seen in 4 of 50 two-rank runs on a loaded 2-core machine). Cyclic garbage (a Trainer and its
    DDP-wrapped model) is therefore collected first, while the group's Python object still holds the group.
    """
    import gc

    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gc.collect()
        torch.distributed.destroy_process_group()
