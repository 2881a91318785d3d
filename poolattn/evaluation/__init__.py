"""Evaluation: models scored through mteb on local task copies, results read, paired tests, comparisons.

`requests` (which tasks, the revision results are filed under), `encoders` (a folder, Hub id or sentence-transformers
model as mteb's encoder: `get_model`), `mteb_encoder` (the poolattn encoder mteb calls), `scoring` (`evaluate_models`:
run, cache by weights and settings, failures), `cache_keys` (what else a cached task score is kept under: its data,
subsets, prompts, ONNX graph), `pairing` (per-unit scores, paired tests per task), `comparison` (`compare_results`:
evaluate.py compare), `local_tasks` (offline task copies), `budget` (the seeded per-task sample), `results` (mteb
results as typed records), `paired` (the paired bootstrap)."""

from ..lazy import lazy_exports

# Imported on first use (PEP 562): the parsers and the record types stay light, the stack behind a name loads when
# it is asked for.
_LAZY = {
    "get_model": "encoders",
    "load_encoder": "encoders",
    "evaluate_models": "scoring",
    "compare_results": "comparison",
    "evaluation_revision": "requests",
    "EvaluationError": "requests",
    "EvaluationRun": "scoring",
    "TaskFailure": "scoring",
    "LOCAL_BENCHMARK": "requests",
    "paired_tests": "pairing",
}
__all__ = sorted(_LAZY)


__getattr__ = lazy_exports(__name__, _LAZY)
