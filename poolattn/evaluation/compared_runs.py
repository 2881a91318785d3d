"""The runs a comparison reads (`evaluate.py compare`): every run of the folders given, each model and weights once,
scored alike: one budget, one setting (instructions, ONNX, a Matryoshka size, a length), and each task shared by
several runs on one copy of its data; anything else is refused, since the tables would set the settings' or the
data's differences beside each other as the models'."""

import re
from pathlib import Path

from .pairing import different_data
from .requests import EvaluationError
from .results import describe_revision_settings, read_runs


def load_compared_runs(result_folders: list) -> tuple[list, int | None]:
    """Every run of the folders, each model and weights once, all on one budget, one setting and one copy of each
    task's data (refused otherwise, with what to give instead); and that budget."""
    loaded = [run for folder in result_folders for run in read_runs(folder)]
    seen: dict[tuple[str, str], Path] = {}
    for results in loaded:
        if (results.name, results.revision) in seen:
            raise EvaluationError(
                f"{seen[results.name, results.revision]} and {results.folder} hold results of the "
                f"same model and weights ({results.name}, revision {results.revision}); give each "
                "model once."
            )
        seen[results.name, results.revision] = results.folder
    budgets = {results.budget for results in loaded}
    if len(budgets) > 1:
        raise EvaluationError(
            f"the results mix evaluation budgets ({', '.join(map(str, sorted(budgets, key=str)))}); "
            "compare runs scored on the same units (the same --budget, or none): give the revision "
            "folders of one budget (e.g. <model folder>/<fingerprint>-budget100)."
        )
    _check_one_setting(loaded)
    _check_same_data(loaded)
    return loaded, budgets.pop()


def _check_same_data(loaded: list) -> None:
    """Refuse runs that scored a task they share on different data (another copy, or another folder of it): the
    tables would set their scores side by side and test their differences as the models'."""
    tasks = sorted({task for results in loaded for task in results.scores})
    differing = {}
    for task in tasks:
        runs = [results for results in loaded if task in results.scores]
        if len(runs) > 1 and (why := different_data(task, runs)):
            differing[task] = f"{why}: {', '.join(f'{run.name} ({run.revision})' for run in runs)}"
    if differing:
        described = "; ".join(f"{task}: {why}" for task, why in differing.items())
        raise EvaluationError(
            f"the results scored tasks on different data ({described}); "
            "score every model on the same task copies (the same --data-dir, unchanged), then compare."
        )


def _check_one_setting(loaded: list) -> None:
    """Refuse runs scored under different settings (instructions, ONNX, a Matryoshka size, a length), which the
    revision's suffix records (`requests.evaluation_revision`): their differences would be the settings'."""
    settings: dict[str, list[str]] = {}
    for results in loaded:
        suffix = results.revision.split("-", 1)[1] if "-" in results.revision else ""
        suffix = re.sub(r"^budget\d+-?", "", suffix)  # the budget is checked on its own
        settings.setdefault(suffix, []).append(f"{results.name} ({results.revision})")
    if len(settings) > 1:
        described = "; ".join(
            f"{describe_revision_settings('-' + suffix, '') if suffix else 'the plain settings'}: {', '.join(runs)}"
            for suffix, runs in sorted(settings.items())
        )
        raise EvaluationError(
            f"the results were scored under different settings ({described}); compare runs scored alike (the "
            "same instructions, ONNX file, --truncate-dim and --max-length): give revision folders of one setting."
        )
