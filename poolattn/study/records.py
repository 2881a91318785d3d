"""A study's records without its weights (`study.py --copy-records STUDY_DIR DEST`): what another machine needs to
continue the study or write its report, small enough to keep under version control.

A study of many rows trains for longer than one machine may live (a preemptible instance, a session that ends): its
results, plan and tuning are kilobytes, its weights and checkpoints gigabytes. The copy keeps

- `study.json`, `tuning.json` and the other files at the study folder's top (an earlier study's tests);
- each exported model's `config.json` and `training_manifest.json`, and in place of its weights a `weights_record.json`
  (`model_folder.WEIGHTS_RECORD`): the fingerprint the weights had (the revision their scores are stored under) and
  the size of their layer-weight matrix;
- every result, with a retrieval task's saved predictions cut to each query's `TOP_DOCUMENTS` best documents (its
  main score, nDCG@10, and the paired tests read the first ten; the full ranking of a budget's 1,000 documents is
  3 MB a model, most of what a copy would hold);
- the report.

Checkpoints, proxy folders and locks are left out. A study folder that a running study holds is refused (its runs and
results are being written); stop the study, copy, and run it again. The study command on the copy keeps every run found
there ("done already") and scores none of them again; a run whose scores are incomplete, or were scored on task data
that has changed since, is refused with what to do, since its weights are not there to score it again."""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..evaluation.cache_keys import readable_json
from ..evaluation.results import PREDICTIONS_FOLDER, read_results
from ..files import LOCK_FILE, atomic_save, folder_lock
from ..manifest import MANIFEST_FILE
from ..model_folder import WEIGHTS_RECORD, layer_weight_size, model_fingerprint, weights_record
from .plan import StudyError, StudyPlan, run_folder

TOP_DOCUMENTS = 20  # per query, of a retrieval task whose main score is nDCG@10 (which reads the first 10)
EXPORTS = ("model", "step0")  # a run folder's exported model and its untrained control
# of each export: what the study and its report read besides the weights, and its prompts (its scores' keys read them)
KEPT_FILES = ("config.json", MANIFEST_FILE, "config_sentence_transformers.json")


@dataclass
class RecordsCopy:
    """What `copy_records` wrote."""

    destination: Path
    models: int  # exported models, their weights replaced by a record
    result_folders: int
    size: int  # bytes
    left_out: list[str]  # exports whose scores did not stand (not yet scored), and why: trained again on the copy
    damaged: list[str]  # result files left out, damaged (their tasks count as not scored)


def copy_records(study, destination) -> RecordsCopy:
    """Copy the records of the study in `study` to the new folder `destination` (see the module doc), atomically."""
    study, destination = Path(study), Path(destination)
    if destination.exists() and (destination.is_file() or any(destination.iterdir())):
        raise StudyError(f"{destination} exists and is not an empty folder; give a new folder for the records.")
    counts = {"models": 0, "results": 0, "left_out": [], "damaged": []}

    def save(folder: Path) -> None:
        plan = StudyPlan.read(study)  # refuses a folder that is not a study's
        for path in study.iterdir():
            if path.is_file() and path.name != LOCK_FILE:
                shutil.copy2(path, folder / path.name)
        counts["results"], counts["damaged"] = _copy_results(study / "results", folder / "results")
        counts["models"], counts["left_out"] = _copy_exports(plan, study, folder)
        if (study / "report").is_dir():
            shutil.copytree(study / "report", folder / "report")

    with folder_lock(study, what="copy of the study's records"):  # a study writing its folder: refused, by name
        atomic_save(save, destination)
    size = sum(path.stat().st_size for path in destination.rglob("*") if path.is_file())
    return RecordsCopy(destination, counts["models"], counts["results"], size, counts["left_out"], counts["damaged"])


def _copy_exports(plan: StudyPlan, study: Path, destination: Path) -> tuple[int, list[str]]:
    """Each exported model as its records (`KEPT_FILES`, `weights_record`); one whose scores do not stand in the
    copied results (`score_problems`: a run stopped while it was scored) is left out, named: on the copy it is
    trained (or exported) and scored again, since no weights go with it."""
    copied, left_out = 0, []
    for row in plan.rows:
        for seed in plan.seeds:
            for name in EXPORTS:
                source = run_folder(study, row, seed) / name
                if not (source / MANIFEST_FILE).is_file():
                    continue
                target = run_folder(destination, row, seed) / name
                target.mkdir(parents=True)
                for kept in KEPT_FILES:
                    if (source / kept).is_file():
                        shutil.copy2(source / kept, target / kept)
                record = weights_record(source) or {
                    "fingerprint": model_fingerprint(source),
                    "layer_weight_size": layer_weight_size(source),
                    "left_out": sorted(path.name for path in source.iterdir() if path.name not in KEPT_FILES),
                }
                (target / WEIGHTS_RECORD).write_text(json.dumps(record, indent=2) + "\n")
                # checked on the copy, whose record holds the fingerprint: the weights are hashed once
                if problems := export_problems(plan, row, target, destination):
                    left_out.append(f"{source.relative_to(study).as_posix()} ({'; '.join(problems)})")
                    shutil.rmtree(target)
                    continue
                copied += 1
    return copied, left_out


def _copy_results(source: Path, destination: Path) -> tuple[int, list[str]]:
    """Every revision folder of `source` (mteb's layout), retrieval predictions cut (`TOP_DOCUMENTS`); a task whose
    result or predictions file is damaged (a study stopped while mteb wrote it in place) is left out with both, so
    that its model counts as not yet scored (`_copy_exports`). (the folders copied, the damaged files)"""
    if not source.is_dir():
        return 0, []
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns(LOCK_FILE))
    folders = {path.parent for path in destination.rglob("*.json") if path.parent.name != PREDICTIONS_FOLDER}
    damaged = []
    for folder in sorted(folders):
        for result in sorted(folder.glob("*.json")):
            predictions = folder / PREDICTIONS_FOLDER / f"{result.stem}_predictions.json"
            if broken := [path for path in (result, predictions) if path.is_file() and not readable_json(path)]:
                damaged += [path.relative_to(destination).as_posix() for path in broken]
                result.unlink()
                predictions.unlink(missing_ok=True)
        try:
            results = read_results(folder)
        except ValueError:  # model_meta.json alone, a folder of no task result
            continue
        for task, main_score in results.main_score_names.items():
            path = folder / PREDICTIONS_FOLDER / f"{task}_predictions.json"
            if main_score == "ndcg_at_10" and path.is_file():
                path.write_text(json.dumps(_top_documents(json.loads(path.read_text()))))
    return len(folders), damaged


def _top_documents(saved: dict) -> dict:
    """mteb's retrieval predictions ({subset: {split: {query: {document: score}}}}) with each query's best
    `TOP_DOCUMENTS` documents."""

    def cut(scores: dict) -> dict:
        return dict(sorted(scores.items(), key=lambda item: -item[1])[:TOP_DOCUMENTS])

    return {
        key: value
        if key == "mteb_model_meta"
        else {split: {query: cut(scores) for query, scores in queries.items()} for split, queries in value.items()}
        for key, value in saved.items()
    }


def check_recorded_scores(plan: StudyPlan, folder: Path, output, *, selection: dict, instructions: bool) -> None:
    """A model copied without its weights (`weights_record`) cannot be scored again: its scores on `selection` must
    all be in the study's results, each scored under the key scoring it now would use (`score_problems`). Raises
    `StudyError` naming each score that does not stand, and what to do."""
    if problems := score_problems(plan, folder, output, selection=selection, instructions=instructions):
        remove = "its step0 folder, to score the control" if folder.name == "step0" else "its run folder, to train it"
        raise StudyError(
            f"{folder} was copied without its weights (its {WEIGHTS_RECORD}), so it cannot be scored again here, and "
            f"its scores do not stand: {'; '.join(problems)}. Put its weights back (from the study folder the "
            f"records came from), or remove {remove} again."
        )


def export_problems(plan: StudyPlan, row, folder: Path, output) -> list[str]:
    """`score_problems` of every scoring an exported model of `row` gets (`StudyPlan.scorings`; `step0`: a control)."""
    scorings = plan.scorings(row, control=folder.name == "step0")
    problems = [
        problem
        for selection, instructions in scorings
        for problem in score_problems(plan, folder, output, selection=selection, instructions=instructions)
    ]
    if plan.full_sts:  # the best row on the full STS tasks (`full_sts`): once its scoring began, all of it must stand
        full = plan.full_sts_plan()
        found = score_problems(full, folder, output, selection=full.selection(), instructions=True)
        if found != [f"lacks {task}" for task in full.tasks]:
            problems += [f"full STS tasks: {problem}" for problem in found]
    return problems


def score_problems(plan: StudyPlan, folder: Path, output, *, selection: dict, instructions: bool) -> list[str]:
    """What keeps the exported model in `folder` from having its scores on `selection` in the study's results in
    `output`: each task not scored, or scored under another key than scoring it now would use (the task's data,
    splits, subsets, budget sample, mteb version and prompts: `evaluation.cache_keys.scoring_key`, read from the
    folder's files and the task data, not its weights; a result recorded before its key was: its data). [] when
    every score stands."""
    from ..evaluation.cache_keys import KEYS_FIELD, recorded_key_changes, task_data_fingerprint
    from ..evaluation.requests import evaluation_revision, select_tasks
    from ..evaluation.results import read_run_settings, results_folder
    from ..evaluation.scoring import keys_without_weights
    from ..model_folder import ExportedModel

    model = ExportedModel.read(folder)
    revision = evaluation_revision(model.fingerprint, budget=plan.budget, instructions=instructions)
    scores = results_folder(Path(output) / "results", model.mteb_name, revision)
    selected = select_tasks(**selection).names
    scored = [task for task in selected if (scores / f"{task}.json").is_file()]
    data_dir = selection["data_dir"]
    keys = keys_without_weights(folder, scored, data_dir=data_dir, budget=plan.budget, instructions=instructions)
    changed = recorded_key_changes(scores, keys)
    if unkeyed := [task for task in scored if task not in read_run_settings(scores).get(KEYS_FIELD, {})]:
        data = read_results(scores).task_data
        changed |= {
            task: "was scored on other data than the task's folder holds now"
            for task in unkeyed
            if data.get(task) != task_data_fingerprint(task, data_dir)
        }
    return [f"lacks {task}" for task in selected if task not in scored] + [
        f"{task} {why}" for task, why in changed.items()
    ]
