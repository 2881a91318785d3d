"""The study: designs, baselines and ablation arms trained, scored and reported with paired tests.

`runner` (plan, run, report), `tuning` (rates chosen on held-out training rows, the plateau settings), `ablation`
(the arms: PoolAttnConfig overrides of a base variant)."""

import importlib

# Imported on first use (PEP 562): the parsers and the record types stay light, the stack behind a name loads when
# it is asked for.
_LAZY = {
    "StudyPlan": "runner",
    "StudyRow": "runner",
    "StudyError": "runner",
    "plan_study": "runner",
    "run_study": "runner",
    "write_report": "runner",
    "collect": "runner",
    "comparisons": "runner",
    "card_section": "runner",
    "row_job": "runner",
    "RowResults": "runner",
    "figure_groups": "runner",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
