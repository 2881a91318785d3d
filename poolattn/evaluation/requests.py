"""What an evaluation is asked: which tasks (a list, categories, a benchmark, the local copies of a data folder) and
the revision its results are filed under; a request that cannot run is an `EvaluationError` naming what to change."""

from dataclasses import dataclass, field
from pathlib import Path

from .budget import budget_revision
from .local_tasks import scan, task_type
from .results import CATEGORY_ORDER


class EvaluationError(ValueError):
    """A selection or input that cannot be evaluated; the message says what was given and what to do."""


NO_INSTRUCTIONS = "no-instructions"


def evaluation_revision(
    revision: str,
    *,
    budget: int | None = None,
    instructions: bool = True,
    onnx_file: str | None = None,
    truncate_dim: int | None = None,
    max_length: int | None = None,
) -> str:
    """The revision results are stored under: the weights' fingerprint, `-budget<N>` on a budget,
    `-no-instructions` when a poolattn model was scored without its task instructions, `-onnx` (`-onnx-qint8`,
    ...) when its ONNX export was scored in ONNX Runtime, `-dim<N>` for embeddings cut to their first N dims and
    `-len<N>` for texts cut to N tokens (`--max-length`), so that no two settings ever share (or are skipped as
    already done by) each other's results. The task data, subsets, prompts and ONNX graph are checked per task
    (`cache_keys.stale_results`).

    >>> evaluation_revision("0123abcd", budget=100, instructions=False)
    '0123abcd-budget100-no-instructions'
    >>> evaluation_revision("0123abcd", onnx_file="onnx/model_qint8.onnx", truncate_dim=64, max_length=128)
    '0123abcd-onnx-qint8-dim64-len128'
    """
    revision = budget_revision(revision, budget)
    revision = revision if instructions else f"{revision}-{NO_INSTRUCTIONS}"
    if onnx_file:
        stem = Path(onnx_file).name.removesuffix(".onnx").removeprefix("model").strip("_-")
        revision = f"{revision}-onnx" + (f"-{stem}" if stem else "")
    revision = f"{revision}-dim{truncate_dim}" if truncate_dim else revision
    return f"{revision}-len{max_length}" if max_length else revision


LOCAL_BENCHMARK = "local"  # every task folder of --data-dir


@dataclass
class TaskSelection:
    """The tasks a run scores, by name, with what the selection passed over and why."""

    names: list[str]
    passed_over: dict[str, str] = field(default_factory=dict)  # local folder or task -> reason


def select_tasks(
    *, tasks: list[str] | None = None, categories: list[str] | None = None, benchmark: str | None = None, data_dir=None
) -> TaskSelection:
    """Task names from `tasks`, from `categories` (of the task folders in `data_dir`, or of `benchmark`), or from
    `benchmark` (an mteb benchmark, or `"local"`: every task folder of `data_dir`)."""
    import mteb

    if not (tasks or categories or benchmark):
        raise EvaluationError("choose tasks with --tasks, --categories or --benchmark.")
    if tasks and (categories or benchmark):
        raise EvaluationError("--tasks names the tasks itself; drop --categories/--benchmark.")
    if categories:
        unknown = set(categories) - set(CATEGORY_ORDER)
        if unknown:
            raise EvaluationError(f"unknown categories {sorted(unknown)}; allowed: {', '.join(CATEGORY_ORDER)}.")
    if tasks:
        for name in tasks:  # an unknown name fails here, with close names, before any model is loaded
            task_type(name, data_dir)
        return TaskSelection(list(dict.fromkeys(tasks)))
    passed_over = {}
    if benchmark and benchmark != LOCAL_BENCHMARK:
        try:
            found_benchmark = mteb.get_benchmark(benchmark)
        except KeyError as error:  # mteb's message names the close ones ("Did you mean: MTEB(eng, v2)?")
            raise EvaluationError(
                f"--benchmark {benchmark!r}: {str(error).strip(chr(34))} Or --benchmark {LOCAL_BENCHMARK} with "
                "--data-dir for every local task copy."
            ) from None
        chosen = {task.metadata.name: task.metadata.type for task in found_benchmark.tasks}
    elif data_dir:
        found = scan(data_dir)
        passed_over = found.passed_over
        chosen = {name: task_type(name, data_dir) for name in found.tasks}
    else:
        raise EvaluationError(
            f"--categories and --benchmark {LOCAL_BENCHMARK} need --data-dir (local copies); "
            "or name an mteb benchmark to choose from."
        )
    if categories:
        passed_over.update(
            {
                name: f"category {kind}, not in {','.join(categories)}"
                for name, kind in chosen.items()
                if kind not in categories
            }
        )
        chosen = {name: kind for name, kind in chosen.items() if kind in categories}
    return TaskSelection(list(chosen), passed_over)
