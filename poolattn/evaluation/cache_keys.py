"""What a cached task score depends on besides the results folder's revision (the weights and the encoding settings,
`requests.evaluation_revision`), and the check that removes a task's results when any of it changed.

Each scored task's key (`scoring_key`) is recorded in the run's `poolattn_run.json` (`task_keys`): the data it was
read from (the local copy's fingerprint, else the Hub dataset and revision), its evaluation splits and subsets, the
budget's sampler, the mteb version that scored it, the prompt each kind of text got, and the ONNX graph scored.
`stale_results` compares the key a task would be scored under now with the recorded one, so a changed input scores
the task again instead of returning the old number.

>>> key_changes({"data": "a1", "subsets": ["en"]}, {"data": "a1", "subsets": ["de", "en"]})
"was scored on the subsets ['en'] (now ['de', 'en'])"
"""

import json
import os
from pathlib import Path

from ..files import content_hash
from .budget import sampler_key
from .results import PREDICTIONS_FOLDER, read_run_settings

KEYS_FIELD = "task_keys"  # in poolattn_run.json: task -> the key it was scored under
FIRST_SAMPLER = {"version": 1, "seed": 42, "corpus_per_query": 10}  # the budget sampler of keys recorded without one


def task_data_fingerprint(name: str, data_dir) -> str | None:
    """A hash of a task's local copy (`<data_dir>/<name>`: every file's path and bytes), or None for a task read
    from the Hub (mteb pins its dataset revision itself)."""
    folder = Path(data_dir) / name if data_dir else None
    if folder is None or not folder.is_dir():
        return None
    return content_hash(folder, sorted(_files_following_links(folder)))


def _files_following_links(folder: Path) -> list[Path]:
    """Every file below `folder`, through linked folders too (a corpus shared by two tasks' folders; `rglob` does not
    follow them, the loaders do), each folder once (no loop)."""
    files, seen = [], set()
    for root, folders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            folders[:] = []
            continue
        seen.add(real)
        files += [Path(root) / name for name in names if (Path(root) / name).is_file()]
    return files


def files_fingerprint(path) -> str:
    """A hash of a file and of its external-data file (`<file>.data`, an ONNX export's weights) where there is one."""
    path = Path(path)
    return content_hash(path.parent, [item for item in (path, Path(f"{path}.data")) if item.is_file()])


def scoring_key(task, fingerprint: str | None, encoder, *, budget: int | None = None) -> dict:
    """The key `task` is scored under by `encoder` (as JSON stores it): the data (`fingerprint` of its local copy,
    else the Hub dataset at mteb's pinned revision), the splits and subsets scored, the sampler that kept `budget`'s
    units (`budget.sampler_key`; the size is in the revision), the mteb version scoring it (its metrics and its
    evaluators' own sampling), and what the encoder says decides its embeddings of the task's texts besides the
    weights (`PoolAttnEncoder.scoring_key`: prompts, ONNX graph)."""
    import mteb

    metadata = task.metadata
    data = fingerprint or f"{metadata.dataset['path']}@{metadata.dataset.get('revision')}"
    own = encoder.scoring_key(metadata) if hasattr(encoder, "scoring_key") else {}
    key = {"data": data, "splits": sorted(task.eval_splits), "subsets": sorted(task.hf_subsets)}
    key |= {"sample": sampler_key(budget), "mteb": mteb.__version__, **own}
    return json.loads(json.dumps(key))


KEY_WORDS = {
    "data": "on other data ({then}) than it is read from now ({now})",
    "splits": "on the splits {then} (now {now})",
    "subsets": "on the subsets {then} (now {now})",
    "sample": "on another budget sample ({then}) than the sampler keeps now ({now})",
    "mteb": "by mteb {then} (now {now})",
    "prompts": "with another task instruction or prompt ({then!r}) than now ({now!r})",
    "graph": "with another ONNX graph ({then}) than the folder holds now ({now})",
}


def key_changes(then: dict, now: dict) -> str | None:
    """Why a task scored under the key `then` is not what the key `now` would score, in words; None when equal."""
    fields = [name for name in dict.fromkeys([*then, *now]) if then.get(name) != now.get(name)]
    words = KEY_WORDS.get
    said = [words(name, f"with another {name} ({{then}}, now {{now}})") for name in fields]
    return (
        "; ".join(
            "was scored " + phrase.format(then=then.get(name), now=now.get(name)) for name, phrase in zip(fields, said)
        )
        or None
    )


def task_prompts(instructions: dict | None, infos) -> dict[str, str | None]:
    """The instruction each task's texts get from a table (by the task's name, else its type, as the encoder looks it
    up; None without one or without instructions)."""
    table = instructions or {}
    return {info.name: table.get(info.name) or table.get(info.type) for info in infos}


def stale_results(folder: Path, keys: dict[str, dict], *, instructions=None, infos=(), fingerprints=None):
    """Remove the results (and predictions) in `folder` of every task whose key (`scoring_key`) differs from the one
    it was scored under, or whose result or predictions file is damaged (mteb writes them in place: a run killed
    while writing), so that mteb scores it again; name -> why. Results of runs that recorded no key (before
    2026-12) are checked as those runs recorded them: the data fingerprint and the task instruction."""
    settings = read_run_settings(folder)
    older = _older_changes(settings, fingerprints or {}, instructions, infos)
    changed = recorded_key_changes(folder, keys)
    stale = {}
    for name in keys:
        result, predictions = folder / f"{name}.json", folder / PREDICTIONS_FOLDER / f"{name}_predictions.json"
        if not result.is_file():
            continue
        why = changed[name] if name in changed else older.get(name)
        if not why and name in unkeyed_results(folder, keys):  # its sampler and mteb version, as its file says
            why = key_changes(_filled({}, keys[name], result), {field: keys[name].get(field) for field in FILLED})
        if why:
            stale[name] = why
        elif damaged := [path.name for path in (result, predictions) if path.is_file() and not readable_json(path)]:
            stale[name] = f"has a damaged {' and '.join(damaged)} (a run killed while writing?)"
        if name in stale:
            result.unlink()
            predictions.unlink(missing_ok=True)
    return stale


def recorded_key_changes(folder: Path, keys: dict[str, dict]) -> dict[str, str]:
    """Name -> why, for each task of `keys` whose result in `folder` was scored under another recorded key (read only;
    results without a recorded key are left to the caller: `stale_results` checks them as their run recorded them)."""
    recorded = read_run_settings(folder).get(KEYS_FIELD, {})
    changed = {}
    for name, key in keys.items():
        result = folder / f"{name}.json"
        if name in recorded and result.is_file() and (why := key_changes(_filled(recorded[name], key, result), key)):
            changed[name] = why
    return changed


def unkeyed_results(folder: Path, keys: dict[str, dict]) -> list[str]:
    """The tasks of `keys` with a result in `folder` and no recorded key (scored before keys were recorded): kept
    when what they did record stands (`stale_results`), but no key is written for them that they were not checked on
    (their splits and subsets)."""
    recorded = read_run_settings(folder).get(KEYS_FIELD, {})
    return [name for name in keys if name not in recorded and (folder / f"{name}.json").is_file()]


FILLED = ("sample", "mteb")  # the fields `_filled` gives a key recorded without them


def _filled(recorded: dict, now: dict, result: Path) -> dict:
    """A key recorded before its `sample` and `mteb` fields were: the budget sampler was then version 1 (scored on a
    budget, as the revision says, where `now` has a sample), and the mteb version is the one its result file names."""
    filled = dict(recorded)
    if "sample" not in filled:
        filled["sample"] = FIRST_SAMPLER if now.get("sample") else None
    if "mteb" not in filled:
        try:
            filled["mteb"] = json.loads(result.read_text()).get("mteb_version")
        except (OSError, ValueError, AttributeError):
            filled["mteb"] = None
    return filled


def _older_changes(settings: dict, fingerprints: dict, instructions, infos) -> dict[str, str]:
    """For results recorded without a key: the tasks whose data fingerprint (none recorded for a local copy, or one
    recorded where the task is now read from the Hub) or task instruction differs now; name -> why."""
    recorded = settings.get("task_data", {})
    now = task_prompts(instructions, infos)
    # the prompt each task was scored with; results of runs that recorded none: the table recorded beside them
    then = {**task_prompts(settings.get("instructions"), infos), **settings.get("task_prompts", {})}
    asked = "instructions" in settings or "task_prompts" in settings
    changed = {}
    for name, fingerprint in fingerprints.items():
        if recorded.get(name) != fingerprint:
            changed[name] = "was scored on other data than the task's folder holds now (or on an unrecorded copy)"
        elif asked and name in now and then.get(name) != now[name]:
            changed[name] = f"was scored with another task instruction ({then.get(name)!r}) than now ({now[name]!r})"
    return changed


def readable_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False
