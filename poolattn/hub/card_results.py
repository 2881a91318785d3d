"""Which evaluation results a model's card shows: the model's own, the other variants', and those left out.

A model's results are found by its name and its weights' fingerprint (`results.find_model_results`). When
`publish.py --results` holds none under its name (scored under another name: by its Hub id, from a renamed or
copied folder), they are looked up by the fingerprint alone, under every model name: the revision that is the
fingerprint itself goes on the card when exactly one model name holds it; revisions of the fingerprint with a
suffix (a budget, no instructions, ...) are named on the card, as under the model's own name. Anything else is
said in a warning that names the folder searched and what it holds.
"""

import dataclasses
import logging
from pathlib import Path

from ..evaluation.results import (
    describe_revision_settings,
    find_model_results,
    other_settings,
    read_results,
    results_folder,
    results_root,
    unscored_categories,
)
from ..model_folder import ExportedModel

logger = logging.getLogger(__name__)


def card_results(repo_id: str, model: ExportedModel, results, others) -> tuple:
    """(the model's own results, its peers', {revision: why} of its results left off the card), with a warning for
    each result left out, each core category the card has no score for, and results given that hold none of this
    model's."""
    own, peers = find_model_results(results, model, others) if results else (None, [])
    left_out_results = other_settings(results, model) if results and own is None else {}
    if results and own is None and not left_out_results:
        own, left_out_results = results_by_fingerprint(repo_id, model, results)
        peers = [peer for peer in peers if peer.revision != model.fingerprint]  # not these weights against themselves
    for revision, why in left_out_results.items():
        logger.warning(
            "%s: results %s left out of the card: scored with %s; score the full tasks with "
            "`evaluate.py run` (no --budget) to put scores on the card",
            repo_id,
            revision,
            why,
        )
    if own is not None and (unscored := unscored_categories(own)):
        logger.warning(
            "%s: the card reports no %s score (not scored on those categories); score them with `evaluate.py run "
            "--categories %s` and publish again with --results",
            repo_id,
            ", ".join(unscored),
            ",".join(unscored),
        )
    return own, peers, left_out_results


def fingerprint_revisions(output, fingerprint: str) -> list[Path]:
    """Every revision folder with results under an evaluation's `output` whose revision is `fingerprint` or starts
    with `fingerprint-` (`evaluation_revision`), under any model name."""
    return sorted(
        path
        for path in results_root(output).glob(f"*/{fingerprint}*")
        if path.is_dir()
        and (path.name == fingerprint or path.name.startswith(f"{fingerprint}-"))
        and any(path.glob("*.json"))
    )


def results_by_fingerprint(repo_id: str, model: ExportedModel, output) -> tuple:
    """(the model's results found by its weights' fingerprint under another model name, or None; {name/revision: why}
    of those scored under other settings), for a model with no results under its own name; a warning where the
    fingerprint names no single plain run."""
    fingerprint, root = model.fingerprint, results_root(output)
    found = fingerprint_revisions(output, fingerprint)
    plain = [path for path in found if path.name == fingerprint]
    searched = (
        f"searched {results_folder(output, model.mteb_name, fingerprint).parent} and every model's revision "
        f"{fingerprint}* under {root}"
    )
    if len(plain) == 1:
        logger.warning(
            "%s: no results under the model's name %s; the results of these exact weights (fingerprint %s) found "
            "under %s go on the card",
            repo_id,
            model.mteb_name,
            fingerprint,
            plain[0],
        )
        return dataclasses.replace(read_results(plain[0]), name=model.mteb_name), {}
    if len(plain) > 1:
        logger.warning(
            "%s: no results on the card: none under the model's name %s, and the results of these exact weights "
            "(fingerprint %s) under %s are under %d model names (%s), of which none is chosen; keep one of them in "
            "--results (move the others out) and publish again",
            repo_id,
            model.mteb_name,
            fingerprint,
            root,
            len(plain),
            ", ".join(str(path) for path in plain),
        )
        return None, {}
    if found:  # scored under other settings only: named on the card, as under the model's own name
        return None, {
            f"{path.parent.name}/{path.name}": describe_revision_settings(path.name, fingerprint) for path in found
        }
    held = sorted(path.name.replace("__", "/", 1) for path in root.iterdir() if path.is_dir())
    held = held[:10] + [f"{len(held) - 10} more"] if len(held) > 10 else held
    logger.warning(
        "%s: --results %s holds no results of this model (%s, weights fingerprint %s): %s; it holds %s; the card "
        "says 'Not evaluated yet'. Score these weights with `evaluate.py run --model %s --output %s` and publish "
        "again",
        repo_id,
        output,
        model.mteb_name,
        fingerprint,
        searched,
        f"results of other weights ({', '.join(held)})" if held else "no results at all",
        model.folder,
        output,
    )
    return None, {}
