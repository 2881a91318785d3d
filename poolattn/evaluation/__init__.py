"""Evaluation: models scored through mteb on local task copies, results read, paired tests, comparisons.

`scoring` (evaluate_models, compare_results), `local_tasks` (offline task copies), `mteb_encoder` (the encoder mteb
calls), `budget` (the seeded per-task sample), `results` (mteb results as typed records), `paired` (paired
bootstrap tests)."""

import importlib

# Imported on first use (PEP 562): the parsers and the record types stay light, the stack behind a name loads when
# it is asked for.
_LAZY = {
    "evaluate_models": "scoring",
    "compare_results": "scoring",
    "evaluation_revision": "scoring",
    "EvaluationError": "scoring",
    "EvaluationRun": "scoring",
    "TaskFailure": "scoring",
    "LOCAL_BENCHMARK": "scoring",
    "paired_tests": "scoring",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
