"""Checkpoints and what they record: the recipe a resumed run must match, a checkpoint as a model, a finished run
restored, and the manifest's stop record."""

import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

from transformers import PreTrainedConfig

from ..backbones import resolve_backbone
from ..configuration_poolattn import PoolAttnConfig
from ..files import write_json
from ..manifest import TrainingManifest, library_versions, recipe_arguments
from ..model_folder import CHECKPOINT_RECORD
from ..modeling_poolattn import PoolAttnEmbeddingModel
from ..prompts import QUERY_PROMPT_FORMAT
from ..records import ContrastiveBatch, DataRecord, StopRecord, TrainableParameters, TrainingSettings
from .arguments import DataArguments, ModelArguments, TrainingSetupError
from .data import Triplets
from .plateau import PlateauRule, PlateauStopping
from .preflight import batch_sampling
from .sources import fingerprint_files
from .trainer_arguments import TrainingRunArguments

logger = logging.getLogger(__name__)


def training_manifest(
    variant: int | str,
    base,
    trainer,
    result,
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingRunArguments,
    triplets: Triplets,
    *,
    batch: ContrastiveBatch,
    parameters: TrainableParameters,
    seconds: float,
) -> TrainingManifest:
    """What ran, for `training_manifest.json` (and the model card)."""
    arguments = run_arguments(model_args, data_args, training_args)
    return TrainingManifest(
        variant=variant,
        backbone=model_args.backbone,
        model_name=model_args.model_name_for(variant),
        seed=training_args.seed,
        data=DataRecord(
            source=triplets.source,
            files=triplets.files,
            examples=triplets.examples,
            skipped_rows=triplets.skipped,
            hard_negatives=triplets.has_negatives,
            query_instruction=data_args.query_instruction,
            query_prompt_format=QUERY_PROMPT_FORMAT,
            fingerprint=triplets.fingerprint or fingerprint_files(data_args.train_data),
            sources=[asdict(source) for source in triplets.sources],
            batch_sampling=batch_sampling(data_args, triplets),
            negatives_per_query=triplets.negatives_per_query,
            streaming=triplets.stream is not None,
        ),
        settings=run_settings(arguments, base),
        contrastive_batch=batch,
        trainable_parameters=parameters,
        global_steps=result.global_step,
        stop=stop_record(trainer, training_args),
        train_runtime_s=round(seconds, 1),
        loss_history=[(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry],
        eval_history=[
            (entry["step"], entry["eval_loss"], entry.get("eval_recall_at_1"))
            for entry in trainer.state.log_history
            if "eval_loss" in entry
        ],
        libraries=library_versions(),
        poolattn_config=base.config.to_diff_dict(),
        hyperparameters=arguments,
    )


def run_arguments(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingRunArguments) -> dict:
    """Every argument of a run, flat and JSON-safe (`TrainingManifest.hyperparameters`)."""
    arguments = {**asdict(model_args), **asdict(data_args), **training_args.to_sanitized_dict()}
    return json.loads(json.dumps(arguments, default=str))


def run_settings(arguments: dict, base) -> TrainingSettings:
    """The settings a run trained with: a model without a pooling head (EOS-last, mean pooling) had no weight at
    `--head_learning_rate`, so none is recorded for it (the arguments keep the flag as given)."""
    settings = TrainingSettings.from_arguments(arguments)
    return settings if getattr(base, "pooler", None) is not None else replace(settings, head_learning_rate=None)


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
    if differences := recipe_differences(recorded, recipe):
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


def recipe_differences(recorded: dict, recipe: dict) -> list[str]:
    """`key: recorded there, now` for every setting that differs."""
    keys = (set(recorded) | set(recipe)) - {key for key in RECIPE_KEYS_SINCE if key not in recorded}
    return [
        f"{key}: {recorded.get(key)!r} there, {recipe.get(key)!r} now"
        for key in sorted(keys)
        if recorded.get(key) != recipe.get(key)
    ]


def check_finished_recipe(model_folder: Path, recipe: dict, checkpoint) -> None:
    """Refuse to keep a finished run (its exported model) as this run's when it was trained with another recipe:
    compared with its last checkpoint's record (recipe, design, seed, data fingerprint) where one is left, else
    with the hyperparameters, design and seed of its manifest."""
    recorded, compared = (recorded_recipe(checkpoint) if checkpoint else None), recipe
    if recorded is None:
        manifest = TrainingManifest.read(model_folder)
        recorded = {**recipe_arguments(manifest.hyperparameters), "variant": manifest.variant, "seed": manifest.seed}
        if manifest.data and manifest.data.fingerprint:  # manifests before 2026-12 record no data fingerprint
            recorded["data_fingerprint"] = manifest.data.fingerprint
        arguments = manifest.hyperparameters
        recorded |= {key: arguments[key] for key in RECIPE_KEYS_SINCE if key in arguments}
        compared = {key: recipe.get(key) for key in recorded}
    if differences := recipe_differences(recorded, compared):
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


class CheckpointRecord:
    """A Trainer callback that writes `poolattn_checkpoint.json` into every checkpoint: the backbone (as given and as
    resolved), the model's `PoolAttnConfig`, which the adapter files alone do not hold (`load_checkpoint`), and the
    recipe a resumed run is checked against (`check_resume_recipe`), and the training time spent so far, over
    every resume (`train_seconds_before`)."""

    def __init__(self, backbone: str, backbone_path: str, config, recipe: dict | None = None):
        self.record = {
            "backbone": backbone,
            "backbone_path": str(backbone_path),
            "poolattn_config": config.to_diff_dict(),
            "recipe": recipe,
        }
        self.started = time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.time() - train_seconds_before(args.resume_from_checkpoint)

    def __getattr__(self, name):  # every other TrainerCallback event: nothing to do
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_save(self, args, state, control, **kwargs):
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            seconds = round(time.time() - self.started, 1)
            write_json(folder / CHECKPOINT_RECORD, {**self.record, "train_seconds": seconds})


def load_checkpoint(checkpoint, *, merge: bool = True) -> PoolAttnEmbeddingModel:
    """A training checkpoint as a model: the backbone it was trained on (resolved again where the recorded path is
    gone, e.g. on another machine), the recorded `PoolAttnConfig`, then peft's adapter and the trained head
    (`PeftModel.from_pretrained`); merged (`merge=True`) it is a plain `PoolAttnEmbeddingModel` like an export,
    otherwise a `PeftModel` to train further.

        model = poolattn.load_checkpoint("outputs/smollm2-135m-v5/checkpoint-30")
    """
    from peft import PeftModel

    checkpoint = Path(checkpoint)
    record_file = checkpoint / CHECKPOINT_RECORD
    if not record_file.is_file():
        raise TrainingSetupError(
            f"{checkpoint}: no {CHECKPOINT_RECORD} here; give a checkpoint-<step> folder "
            "written by poolattn's train.py (older checkpoints lack it: use the export)."
        )
    record = json.loads(record_file.read_text())
    recorded = Path(record["backbone_path"])
    backbone = str(recorded) if recorded.is_dir() else resolve_backbone(record["backbone"])
    own_fields = set(PoolAttnConfig.__dataclass_fields__) - set(PreTrainedConfig.__dataclass_fields__)
    own_fields -= {"text_config", "variant"}  # the variant is set back after the merge
    fields = {key: value for key, value in record["poolattn_config"].items() if key in own_fields}
    model = PoolAttnEmbeddingModel.from_backbone(backbone, variant=None, **fields)
    peft_model = PeftModel.from_pretrained(model, str(checkpoint))
    if not merge:
        return peft_model
    merged = peft_model.merge_and_unload()
    merged.config.variant = record["poolattn_config"].get("variant")
    return merged.eval()


def restore_finished_run(trainer, checkpoint: str | None):
    """When `checkpoint` (the one to resume from) reached max_steps, the plateau or an early stop, load it (or, with
    `--load_best_model_at_end`, the run's best checkpoint) and return its TrainOutput, else None.

    The Trainer's loop checks for the end only after a step, so resuming a finished run would train one step more
    (and export a different model than the uninterrupted run, e.g. after a crash during the export).
    """
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import TrainOutput

    if not checkpoint or not (Path(checkpoint) / "trainer_state.json").is_file() or trainer.args.max_steps <= 0:
        return None  # nothing to restore here: the Trainer resumes (or explains why it cannot)
    state_file = Path(checkpoint) / "trainer_state.json"
    state = TrainerState.load_from_json(str(state_file))
    rule = plateau_rule(trainer.args)
    at_plateau = rule is not None and rule.step(state.log_history) is not None
    control = (state.stateful_callbacks or {}).get("TrainerControl", {})
    stopped = isinstance(control, dict) and bool(control.get("args", {}).get("should_training_stop"))  # early stop
    if state.global_step < trainer.args.max_steps and not at_plateau and not stopped:
        return None
    best = _best_checkpoint(trainer.args, state, folder=Path(checkpoint).parent)
    if best is not None and not best.is_dir():
        raise TrainingSetupError(
            f"{checkpoint} finished with --load_best_model_at_end, but its best checkpoint {best} is gone; train "
            "again with --overwrite_output_dir true (or another --output_dir)."
        )
    # the weights (adapter + head, or the full model) the uninterrupted run exported: its best, or its last step
    trainer._load_from_checkpoint(str(best or checkpoint))
    trainer.state = state
    logger.info(
        "%s already %s: exporting it without training",
        checkpoint,
        "reached the plateau"
        if at_plateau
        else f"reached max_steps={trainer.args.max_steps}"
        if state.global_step >= trainer.args.max_steps
        else "stopped early (--early_stopping_patience)",
    )
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    return TrainOutput(state.global_step, sum(losses) / len(losses) if losses else float("nan"), {})


def run_callbacks(model_args, data_args, training_args, backbone_path: str, config, recipe: dict) -> list:
    """The Trainer's callbacks of a run: the checkpoint record (recipe, backbone, config, training time), the plateau
    rule and early stopping, as asked."""
    callbacks = [CheckpointRecord(model_args.backbone, backbone_path, config, recipe)]
    if training_args.plateau_patience:
        callbacks.append(PlateauStopping(plateau_rule(training_args)))
    if data_args.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=data_args.early_stopping_patience))
    return callbacks


def plateau_rule(training_args) -> PlateauRule | None:
    """The run's plateau rule (`--plateau_patience`), or None."""
    patience = getattr(training_args, "plateau_patience", None)
    return PlateauRule(patience, training_args.plateau_min_improvement) if patience else None


def stop_record(trainer, training_args) -> StopRecord:
    """Why and where training ended: the plateau rule, the Trainer's early stopping (only when its callback ended
    the run before the steps planned), the cap, or the end of the epochs asked for."""
    from transformers import EarlyStoppingCallback

    state, rule = trainer.state, plateau_rule(training_args)
    evaluations = [(entry["step"], entry["eval_loss"]) for entry in state.log_history if "eval_loss" in entry]
    best = min(evaluations, key=lambda item: item[1]) if evaluations else (None, None)
    plateau_at = rule.step(state.log_history) if rule else None
    stopping = any(isinstance(callback, EarlyStoppingCallback) for callback in trainer.callback_handler.callbacks)
    reason = (
        "plateau"
        if plateau_at is not None
        else "early_stopping"
        if stopping and state.global_step < state.max_steps
        else "max_steps"
        if state.global_step >= training_args.max_steps > 0
        else "end_of_data"
    )
    every = trainer.args.eval_steps if evaluations else None  # the Trainer's: it may set a default
    best_checkpoint = _best_checkpoint(trainer.args, state)
    return StopRecord(
        reason=reason,
        step=state.global_step,
        cap=training_args.max_steps,
        rule=rule.describe(every=every, cap=training_args.max_steps) if rule else None,
        best_step=best[0],
        best_eval_loss=best[1],
        exported_step=int(best_checkpoint.name.split("-")[-1]) if best_checkpoint else state.global_step,
    )


def _best_checkpoint(args, state, folder=None) -> Path | None:
    """The checkpoint `--load_best_model_at_end` exports (the Trainer's `best_model_checkpoint`, found by its name in
    `folder`, default the run's output folder, so that a moved run still finds it), or None."""
    if not getattr(args, "load_best_model_at_end", False) or not state.best_model_checkpoint:
        return None
    return Path(folder or args.output_dir) / Path(state.best_model_checkpoint).name
