"""What a run was trained with, and whether an earlier run's checkpoint or finished model was trained so too: the
recipe (`resume_recipe`), checked on resume (`check_resume_recipe`), on a finished run (`finished_run_trains_on`)
and on an untrained control (`check_control`), where a more patient plateau rule keeps what the old rule did not stop
(`recipe_differences`)."""

import json
from dataclasses import asdict
from pathlib import Path

from ..manifest import TrainingManifest, recipe_arguments
from ..model_folder import CHECKPOINT_RECORD
from .arguments import DataArguments, ModelArguments, TrainingSetupError
from .sources import fingerprint_files
from .trainer_arguments import TrainingRunArguments


def run_arguments(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingRunArguments) -> dict:
    """Every argument of a run, flat and JSON-safe (`TrainingManifest.hyperparameters`)."""
    arguments = {**asdict(model_args), **asdict(data_args), **training_args.to_sanitized_dict()}
    return json.loads(json.dumps(arguments, default=str))


def resume_recipe(
    variant,
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingRunArguments,
    data_fingerprint: str | None = None,
) -> dict:
    """What a checkpoint must have been trained with for a run to resume from it: the recipe, the design, the seeds
    and the data's fingerprint (`Triplets.fingerprint`, taken when the rows were read; else the files' content now,
    `sources.fingerprint_files`)."""
    arguments = run_arguments(model_args, data_args, training_args)
    return {
        **recipe_arguments(arguments),
        "variant": variant,
        "seed": training_args.seed,
        "data_seed": training_args.data_seed,
        "data_fingerprint": data_fingerprint or fingerprint_files(data_args.train_data),
        "eval_fraction": data_args.eval_fraction,  # the rows held out are not trained on
        "evaluation": evaluation_recipe(data_args, training_args),
    }


def evaluation_recipe(data_args: DataArguments, training_args: TrainingRunArguments) -> dict | None:
    """What the held-out evaluations were, where a rule reads them to stop the run or to choose the checkpoint it
    exports (the plateau rule, early stopping, `--load_best_model_at_end`): a run resumed with other held-out data,
    batches or interval would mix two curves in one decision. None where no rule reads them."""
    rules = (training_args.plateau_patience, data_args.early_stopping_patience, training_args.load_best_model_at_end)
    if not any(rules):
        return None
    return {
        "eval_data": fingerprint_files(data_args.eval_data) if data_args.eval_data else None,
        "per_device_eval_batch_size": training_args.per_device_eval_batch_size,
        "eval_strategy": str(training_args.eval_strategy),
        "eval_steps": training_args.eval_steps,
    }


# Recipe keys added after runs were recorded without them (key: since when): a record without one is not compared
# on it, so those runs still resume; every record written since holds it.
RECIPE_KEYS_SINCE = {"eval_fraction": "2026-12-07", "evaluation": "2026-12-08"}


def check_resume_recipe(checkpoint, recipe: dict) -> None:
    """Refuse to resume from a checkpoint written by another recipe (learning rates, data, seed, design...), naming
    each difference, or from one without a readable record of its recipe: a run killed between the Trainer's save
    (which rotates the older checkpoints first) and the record, or a damaged or foreign checkpoint, whose recipe
    nothing can check."""
    recorded = recorded_recipe(checkpoint)
    if recorded is None:
        raise TrainingSetupError(
            f"{checkpoint} records no recipe ({CHECKPOINT_RECORD} missing or damaged: a run killed while saving "
            "it, or a checkpoint of another tool), so nothing can check that it was trained with these settings. "
            "Resume from another checkpoint, or train again with --overwrite_output_dir true (or another "
            "--output_dir)."
        )
    if differences := recipe_differences(recorded, recipe, more_patient_kept=True):  # the rule had not fired
        raise TrainingSetupError(
            f"{checkpoint} was trained with other settings than this run ({'; '.join(differences)}), so resuming "
            "would train the rest of the run on the old ones. Resume with the same flags, or train again with "
            "--overwrite_output_dir true (or another --output_dir)."
        )


def recorded_recipe(checkpoint) -> dict | None:
    """The recipe a checkpoint's record holds, or None (no record: an older poolattn, or damaged)."""
    return _checkpoint_record(checkpoint).get("recipe")


def train_seconds_before(checkpoint) -> float:
    """The training time a run had spent when it saved `checkpoint` (its record's `train_seconds`, summed over every
    earlier resume), so that a resumed run reports its whole training time; 0 with no checkpoint, or for one saved
    by a poolattn that did not record it."""
    seconds = _checkpoint_record(checkpoint).get("train_seconds") if checkpoint else None
    return float(seconds) if isinstance(seconds, int | float) else 0.0


def _checkpoint_record(checkpoint) -> dict:
    try:
        record = json.loads((Path(checkpoint) / CHECKPOINT_RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


# The plateau rule's settings, and the direction in which a rule is more patient (stops later): a run the rule did not
# stop (a checkpoint, a run at the cap) trained as it would have under a more patient rule, up to where it is.
PATIENCE = {"plateau_patience": 1, "plateau_min_improvement": -1}


def recipe_differences(recorded: dict, recipe: dict, *, more_patient_kept: bool = False) -> list[str]:
    """`key: recorded there, now` for every setting that differs; with `more_patient_kept`, not the plateau rule's
    where the rule now is at least as patient in both (`PATIENCE`): the caller knows the old rule did not stop it.

    >>> then, now = {"plateau_patience": 3, "plateau_min_improvement": 0.01}, {"plateau_patience": 5}
    >>> recipe_differences(then, {**then, **now}, more_patient_kept=True), recipe_differences({**then, **now}, then)
    ([], ['plateau_patience: 5 there, 3 now'])
    """
    keys = (set(recorded) | set(recipe)) - {key for key in RECIPE_KEYS_SINCE if key not in recorded}
    if more_patient_kept and _at_least_as_patient(recorded, recipe):
        keys -= set(PATIENCE)
    return [
        f"{key}: {recorded.get(key)!r} there, {recipe.get(key)!r} now"
        for key in sorted(keys)
        if recorded.get(key) != recipe.get(key)
    ]


def _at_least_as_patient(recorded: dict, recipe: dict) -> bool:
    values = [(recorded.get(key), recipe.get(key), sign) for key, sign in PATIENCE.items()]
    if any(not isinstance(value, int | float) for then, now, _ in values for value in (then, now)):
        return False  # a rule added or removed: a run without one was not stopped by any
    return all((now - then) * sign >= 0 for then, now, sign in values)


def finished_run_trains_on(model_folder: Path, recipe: dict, checkpoint) -> bool:
    """Whether a finished run (its exported model) is to train on from its last checkpoint (True) or be kept as this
    run's (False); refused when it was trained with another recipe: compared with its last checkpoint's record
    (recipe, design, seed, data fingerprint) where one is left, else with the hyperparameters, design and seed of its
    manifest. It trains on where only the plateau rule changed, to a more patient one, and the old rule stopped it
    (the new one would have gone on; its model is replaced when the run exports again); a run that reached the cap is
    kept under a more patient rule (it trained as it would have under it)."""
    recorded, compared = (recorded_recipe(checkpoint) if checkpoint else None), recipe
    manifest = TrainingManifest.read(model_folder)
    if recorded is None:
        recorded = {**recipe_arguments(manifest.hyperparameters), "variant": manifest.variant, "seed": manifest.seed}
        if manifest.data and manifest.data.fingerprint:  # manifests before 2026-12 record no data fingerprint
            recorded["data_fingerprint"] = manifest.data.fingerprint
        arguments = manifest.hyperparameters
        recorded |= {key: arguments[key] for key in RECIPE_KEYS_SINCE if key in arguments}
        compared = {key: recipe.get(key) for key in recorded}
    stopped_by_rule = (
        manifest.stop is None or manifest.stop.reason == "plateau"
    )  # a run at the cap: a more patient rule is no change
    differences = recipe_differences(recorded, compared, more_patient_kept=not stopped_by_rule)
    if not differences:
        return False
    if checkpoint and stopped_by_rule and not recipe_differences(recorded, compared, more_patient_kept=True):
        return True  # the rule alone changed, to a more patient one, and the checkpoint the old one stopped at is here
    raise TrainingSetupError(
        f"{model_folder} is a finished run trained with other settings than this one ({'; '.join(differences)}); "
        "keeping it would report the old model as this run's. Run with the same flags, or train again with "
        "--overwrite_output_dir true (or another --output_dir)."
    )


def check_control(folder: Path, variant, seed: int, backbone: str, overrides: dict) -> None:
    """Refuse to keep an untrained control (`step0/`) written for another design, seed or backbone: it would be
    scored as this run's starting point."""
    manifest = TrainingManifest.read(folder)
    given = manifest.hyperparameters.get("config_overrides")
    recorded = {
        "variant": manifest.variant,
        "seed": manifest.seed,
        "backbone": manifest.backbone,
        "config_overrides": json.loads(given) if isinstance(given, str) else given or {},
    }
    if differences := recipe_differences(
        recorded, {"variant": variant, "seed": seed, "backbone": backbone, "config_overrides": overrides}
    ):
        raise TrainingSetupError(
            f"{folder} is the untrained control of another run ({'; '.join(differences)}); scoring it as this run's "
            "would report another model's starting point. Move it away (it is written again), or use another "
            "--output_dir."
        )
