"""The study: designs, baselines and ablation arms trained, scored and reported with paired tests.

`plan` (what a study trains and scores: `StudyPlan`, `study.json`), `runner` (run it: tuning, controls, training,
scoring, progress, resume), `compare` (rows as seed replicates, the category tests), `report` / `recipe_report` (the
report, its CSVs and figures), `tuning` (rates chosen on held-out training rows, the plateau settings), `ablation`
(the arms: PoolAttnConfig overrides of a base variant)."""

import importlib

# Imported on first use (PEP 562): the parsers and the record types stay light, the stack behind a name loads when
# it is asked for.
_LAZY = {
    "StudyPlan": "plan",
    "StudyRow": "plan",
    "StudyError": "plan",
    "plan_study": "plan",
    "run_study": "runner",
    "write_report": "report",
    "collect": "compare",
    "comparisons": "plan",
    "card_section": "report",
    "row_job": "runner",
    "RowResults": "compare",
    "figure_groups": "report",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
