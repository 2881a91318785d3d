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
from ..manifest import TrainingManifest, library_versions
from ..model_folder import CHECKPOINT_RECORD
from ..modeling_poolattn import PoolAttnEmbeddingModel
from ..prompts import QUERY_PROMPT_FORMAT
from ..records import ContrastiveBatch, DataRecord, StopRecord, TrainableParameters, TrainingSettings
from .arguments import DataArguments, ModelArguments, TrainingSetupError
from .data import Triplets
from .plateau import PlateauRule, PlateauStopping
from .preflight import batch_sampling
from .recipes import run_arguments, train_seconds_before
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


def run_settings(arguments: dict, base) -> TrainingSettings:
    """The settings a run trained with: a model without a pooling head (EOS-last, mean pooling) had no weight at
    `--head_learning_rate`, so none is recorded for it (the arguments keep the flag as given)."""
    settings = TrainingSettings.from_arguments(arguments)
    return settings if getattr(base, "pooler", None) is not None else replace(settings, head_learning_rate=None)


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
            seconds = round(time.time() - self.started, 3)  # ms: a tiny run's two steps take under 0.05 s
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
    if stopped and rule is not None and not _stopped_early(state):  # the plateau rule's: the rule given now decides
        stopped = False  # (a more patient rule than the checkpoint's trains on)
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


def _stopped_early(state) -> bool:
    """Whether the Trainer's early stopping (`--early_stopping_patience`) stopped the run its state is of."""
    saved = (state.stateful_callbacks or {}).get("EarlyStoppingCallback")
    for callback in saved if isinstance(saved, list) else [saved] if saved else []:
        patience = callback.get("args", {}).get("early_stopping_patience")
        if patience and callback.get("attributes", {}).get("early_stopping_patience_counter", 0) >= patience:
            return True
    return False


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
