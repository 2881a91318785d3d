"""Peak resident memory of this process, for the benchmarks (Linux `/proc/self/status`).

glibc malloc is told (`DETERMINISTIC_MALLOC`, set in the measured process's environment) to give large blocks back at
once, so the resident set follows the live tensors; without it, the peaks of two identical runs differed by up to 20%
here (freed blocks stay resident or not, by chance).
"""

from pathlib import Path

DETERMINISTIC_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "1"}


def peak_rss_mib() -> float:
    return _status_mib("VmHWM")


def rss_mib() -> float:
    return _status_mib("VmRSS")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current resident set


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")
