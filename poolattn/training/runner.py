"""Training runs as library functions: model, `ContrastiveTrainer`, resume, export and publishing, from the parsed
flags of `arguments` (`parse_arguments`) or a `TrainingJob` (`run_job`).

`main(argv)` runs what `python train.py ...` (and the `poolattn-train` command) runs and returns the exported model
folders; `run(model_args, data_args, training_args)` is the same from parsed arguments. Each variant is written to
`<output_dir>/model` (per variant `<output_dir>/v<N>/model` with `--variant all`) by `export.export_model`, with its
`TrainingManifest`. Errors are exceptions (`TripletDataError`, `HubPushError`, `ValueError`); `poolattn.cli` turns
them into exit codes.
"""

import copy
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import set_seed

from ..backbones import resolve_backbone
from ..export import export_model
from ..files import folder_lock
from ..hub.repository import HubPushError, check_push_possible, publish, repository_id
from ..launch import finish_collectives
from ..manifest import MANIFEST_FILE, TrainingManifest, library_versions
from ..modeling_poolattn import PoolAttnEmbeddingModel
from ..records import ContrastiveBatch, StopRecord, TrainableParameters
from ..shared_data import require_shared_data
from .arguments import DataArguments, ModelArguments, TrainingSetupError, parse_arguments
from .batching import SourceBatchStream
from .checkpoints import restore_finished_run, run_callbacks, training_manifest
from .collator import TripletCollator
from .data import Triplets
from .job import TrainingJob
from .losses import world_size
from .preflight import (
    PlannedRun,
    batch_sampling,
    check_batches,
    check_designs_build,
    check_output_dir,
    check_output_outside_data,
    check_output_writable,
    check_prompt_lengths,
    check_resume,
    default_run_tag,
    held_out_rows,
    planned_runs,
    warn_head_rate_unused,
)
from .recipes import check_control, check_resume_recipe, finished_run_trains_on, resume_recipe, train_seconds_before
from .trainer_arguments import TrainingRunArguments, last_complete_checkpoint, trainer_arguments
from .training_data import check_data_unchanged, training_triplets

logger = logging.getLogger(__name__)


class Passes(torch.utils.data.IterableDataset):
    """The dataset training reads with `--streaming`: a `SourceBatchStream`'s passes one after another
    (`SourceBatchStream.passes`), so the Trainer sees one epoch as long as `--max_steps`. A batch's place in it is then
    the number of batches trained before it, and a resume that skips `global_step` batches continues where the
    uninterrupted run was, in the first pass or a later one (the Trainer's own epochs of an iterable dataset of
    unknown length would restart a resumed run at the first pass)."""

    def __init__(self, stream: SourceBatchStream):
        self.stream = stream

    def __iter__(self):
        return self.stream.passes()


def build_model(model_args: ModelArguments, backbone_path: str, variant: int | str):
    """The PoolAttnEmbeddingModel with a fresh head, wrapped with LoRA unless --full_finetune."""
    model = PoolAttnEmbeddingModel.from_backbone(
        backbone_path,
        variant=variant,
        dtype=getattr(torch, model_args.model_dtype),
        **({"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}),
        **model_args.overrides,
    )
    tokenizer = model.get_tokenizer()
    if model_args.full_finetune:
        return model, tokenizer
    from peft import LoraConfig, get_peft_model

    targets = [name.strip() for name in model_args.lora_target_modules.split(",") if name.strip()]
    linear = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.model.named_modules()
            if isinstance(module, torch.nn.Linear)
        }
    )
    if not targets or set(targets) - set(linear):
        unknown = ", ".join(sorted(set(targets) - set(linear))) or "no module named"
        raise TrainingSetupError(
            f"--lora_target_modules {model_args.lora_target_modules!r}: {unknown} is not a "
            f"linear layer of this backbone. Its linear layers: {', '.join(linear)}."
        )
    lora = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=targets,
        modules_to_save=["pooler"] if model.pooler is not None else None,
    )
    import warnings

    with warnings.catch_warnings():  # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` itself
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated", category=FutureWarning)
        return get_peft_model(model, lora), tokenizer


def train_variant(
    variant: int | str,
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingRunArguments,
    triplets: Triplets,
    backbone_path: str,
    held_out: list[dict] | None = None,
) -> Path:
    """One variant: model, trainer, training (or resume), export. Returns the exported folder. `held_out` rows are
    scored during training (`ContrastiveTrainer.evaluation_loop`)."""
    from .trainer import ContrastiveTrainer  # transformers' Trainer, when a run trains

    set_seed(training_args.seed)
    model, tokenizer = build_model(model_args, backbone_path, variant)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if triplets.stream is not None:
        triplets.stream.seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    recipe = resume_recipe(variant, model_args, data_args, training_args, triplets.fingerprint)
    if training_args.resume_from_checkpoint:
        check_resume_recipe(training_args.resume_from_checkpoint, recipe)
    trainer = ContrastiveTrainer(
        model=model,
        args=trainer_arguments(training_args, streaming=triplets.stream is not None, evaluating=bool(held_out)),
        data_collator=_collator(tokenizer, data_args, triplets, add_eos=base.config.add_eos),
        processing_class=tokenizer,
        **_datasets(data_args, triplets, held_out),
        callbacks=run_callbacks(model_args, data_args, training_args, backbone_path, base.config, recipe),
    )
    batch, parameters = _run_shape(variant, model, training_args, triplets, trainer.is_world_process_zero())
    resume = training_args.resume_from_checkpoint  # a checkpoint folder or None (`run` resolves "true")
    started = time.time() - train_seconds_before(resume)  # the whole run's training time, over every resume
    result = restore_finished_run(trainer, resume) or trainer.train(resume_from_checkpoint=resume)
    manifest = training_manifest(
        variant,
        base,
        trainer,
        result,
        model_args,
        data_args,
        training_args,
        triplets,
        batch=batch,
        parameters=parameters,
        seconds=time.time() - started,
    )
    if not trainer.is_world_process_zero():
        return Path(training_args.output_dir) / "model"
    if triplets.stream is not None:  # rows read as it trained: the files must still hold them
        check_data_unchanged(data_args, triplets)
    check_texts = [row["query"] for row in triplets.rows[: training_args.export_check_texts]]
    destination = export_model(
        model, tokenizer, Path(training_args.output_dir) / "model", check_texts=check_texts, manifest=manifest
    )
    logger.info("variant %s: model written to %s", variant, destination)
    return destination


def _collator(tokenizer, data_args, triplets: Triplets, *, add_eos: bool) -> TripletCollator:
    return TripletCollator(
        tokenizer,
        query_max_length=data_args.query_max_length,
        document_max_length=data_args.document_max_length,
        add_eos=add_eos,
        query_instruction=data_args.query_instruction,
        source_instructions=[item.instruction for item in triplets.sources],
    )


def _datasets(data_args, triplets: Triplets, held_out: list[dict] | None) -> dict:
    """The trainer's datasets and sampling: the rows or the stream's passes, held-out rows, one source per batch."""
    import datasets

    one_source = batch_sampling(data_args, triplets) == "one_source_per_batch" and triplets.stream is None
    weighted = bool(data_args.weights_per_source)  # a file stem's weight is shared by that file's parts
    rows = datasets.Dataset.from_list(triplets.rows) if triplets.stream is None else Passes(triplets.stream)
    return {
        "train_dataset": rows,
        "eval_dataset": datasets.Dataset.from_list(held_out) if held_out else None,
        "source_of_rows": triplets.source_of_rows() if one_source else None,
        "source_weights": dict(enumerate(item.weight for item in triplets.sources)) if weighted else None,
        "source_weight_groups": dict(enumerate(item.weight_key for item in triplets.sources)) if weighted else None,
    }


def _run_shape(variant, model, training_args, triplets: Triplets, main_process: bool):
    """(the contrastive batch per loss call, the trainable parameters), logged on the main process."""
    batch = ContrastiveBatch.of_run(
        per_device_batch=training_args.per_device_train_batch_size,
        world_size=world_size(),
        negatives_per_query=triplets.negatives_per_query,
        gather=training_args.gather_across_devices,
        gradcache_chunk_size=training_args.gradcache_chunk_size,
        gradient_accumulation_steps=training_args.gradient_accumulation_steps,
    )
    parameters = TrainableParameters.of(model)
    if main_process:
        logger.info("variant %s: contrastive batch per loss call = %s", variant, batch.describe())
        logger.info("variant %s: trainable parameters: %s", variant, parameters.describe())
    return batch, parameters


def export_untrained(
    variant: int | str, model_args: ModelArguments, training_args: TrainingRunArguments, destination
) -> Path:
    """The control of a run: the model a run of `variant` with this seed starts from (the raw backbone and the head
    as `train_variant` initialises it: same seed, same config), exported like a trained model with a manifest of 0
    steps, so evaluation scores it as it scores the trained one. Written once; an existing export is kept."""
    destination = Path(destination)
    if (destination / MANIFEST_FILE).is_file():
        check_control(destination, variant, training_args.seed, model_args.backbone, model_args.overrides)
        return destination
    backbone_path = resolve_backbone(model_args.backbone)
    set_seed(training_args.seed)
    model = PoolAttnEmbeddingModel.from_backbone(
        backbone_path,
        variant=variant,
        dtype=getattr(torch, model_args.model_dtype),
        **({"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}),
        **model_args.overrides,
    )
    arguments = json.loads(json.dumps({**asdict(model_args), **training_args.to_sanitized_dict()}, default=str))
    manifest = TrainingManifest(
        variant=variant,
        backbone=model_args.backbone,
        model_name=model_args.model_name_for(variant),
        seed=training_args.seed,
        global_steps=0,
        stop=StopRecord(reason="untrained", step=0),
        trainable_parameters=TrainableParameters.of(model),
        libraries=library_versions(),
        poolattn_config=model.config.to_diff_dict(),
        hyperparameters=arguments,
    )
    written = export_model(
        model, model.get_tokenizer(), destination, check_texts=["an untrained control"], manifest=manifest
    )
    logger.info("variant %s, seed %d: untrained control written to %s", variant, training_args.seed, written)
    return written


def check_before_reading(model_args, data_args, training_args, runs: list) -> str:
    """The backbone, every design on it, where the data and the output are, and Hub access: checked before anything
    is read, written or trained. Returns the backbone's folder."""
    backbone_path = resolve_backbone(model_args.backbone)
    check_designs_build(model_args, backbone_path)
    warn_head_rate_unused(model_args, training_args)
    require_shared_data(data_args.train_data, "--train_data")
    check_output_outside_data(data_args, training_args)  # before the data is read: it may hold an earlier run's files
    if training_args.push_to_hub or training_args.hub_dry_run:  # every variant's repository id, as publish derives it
        for variant in dict.fromkeys(planned.variant for planned in runs):
            try:
                trained = model_args.model_name_for(variant)
                repository_id(training_args.hub_model_id, variant=variant, trained_name=trained)
            except ValueError as error:
                raise TrainingSetupError(str(error)) from None
    if training_args.push_to_hub:
        try:
            check_push_possible(training_args.hub_token)
        except HubPushError as error:
            raise TrainingSetupError(f"--push_to_hub: {error}") from None
    return backbone_path


def run(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingRunArguments) -> list[Path]:
    """Train, export and (with --push_to_hub / --hub_dry_run) publish every requested variant and seed; the exported
    folders, in `planned_runs` order.

    `--resume_from_checkpoint true` resumes the whole job: finished runs (an exported model) are kept, interrupted
    ones continue from their last complete checkpoint, the others start at step 0.
    """
    base_output = (
        training_args.output_dir
        if training_args.output_dir_was_given
        else f"outputs/{Path(model_args.backbone).name}-{default_run_tag(model_args.variant)}"
    )
    runs = planned_runs(model_args, training_args, base_output)
    resume = training_args.resume_from_checkpoint  # "true", a checkpoint folder or None (`resume_setting`)
    check_resume(resume, runs)
    backbone_path = check_before_reading(model_args, data_args, training_args, runs)
    triplets = training_triplets(data_args, training_args)
    triplets, held_out = held_out_rows(triplets, data_args, training_args)
    check_batches(triplets, data_args, training_args)
    check_prompt_lengths(backbone_path, model_args, data_args, triplets, held_out)
    check_output_writable(base_output)
    with folder_lock(base_output, what="training run"):  # a second run into this folder is refused, by name
        check_output_dir(base_output, runs, resume=bool(resume), overwrite=training_args.overwrite_output_dir)
        exported = [
            train_planned(
                planned,
                model_args,
                data_args,
                training_args,
                triplets,
                backbone_path,
                held_out=held_out,
                resume_latest=resume == "true",
            )
            for planned in runs
        ]
    finish_collectives()
    # Hub repository folders (card, sentence-transformers files), uploaded with --push_to_hub
    if (training_args.push_to_hub or training_args.hub_dry_run) and training_args.process_index == 0:
        publish(
            exported,
            hub_model_id=training_args.hub_model_id,
            push=training_args.push_to_hub,
            output_dir=training_args.hub_dry_run or Path(base_output) / "hub",
            token=training_args.hub_token,
            private=training_args.hub_private_repo,
        )
    return exported


def train_planned(
    planned: PlannedRun,
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingRunArguments,
    triplets: Triplets,
    backbone_path: str,
    *,
    held_out: list[dict] | None,
    resume_latest: bool,
) -> Path:
    """One planned run of a job: kept when finished (resuming, with the same recipe), else trained from its last
    complete checkpoint (or step 0) and exported. Returns the exported folder. The job's arguments are left as given:
    the run gets its own copy with its folder, seed and checkpoint."""
    run_args = copy.copy(training_args)  # a shallow copy: no __post_init__ runs again
    run_args.output_dir, run_args.seed = str(planned.output_dir), planned.seed
    checkpoint = last_complete_checkpoint(planned.output_dir) if resume_latest else None
    if resume_latest and (planned.model / MANIFEST_FILE).is_file():
        recipe = resume_recipe(planned.variant, model_args, data_args, run_args, triplets.fingerprint)
        if not finished_run_trains_on(planned.model, recipe, checkpoint):
            logger.info(
                "variant %s, seed %d: finished already (%s), not retrained",
                planned.variant,
                planned.seed,
                planned.model,
            )
            return planned.model
        logger.info("variant %s, seed %d: a more patient plateau rule trains on", planned.variant, planned.seed)
    if resume_latest:
        run_args.resume_from_checkpoint = checkpoint
        logger.info(
            "variant %s, seed %d: %s",
            planned.variant,
            planned.seed,
            f"resuming from {checkpoint}"
            if checkpoint
            else f"no complete checkpoint in {planned.output_dir}, training from step 0",
        )
    return train_variant(planned.variant, model_args, data_args, run_args, triplets, backbone_path, held_out=held_out)


def run_job(job: TrainingJob) -> Path:
    """One typed job (`jobs.TrainingJob`: one design, one seed, one folder): its arguments parsed and checked once,
    then trained (or resumed, or kept when finished) and exported. Returns the exported folder."""
    return run(*parse_arguments(job.argv()))[0]


def export_control(job: TrainingJob, destination) -> Path:
    """The untrained control of a job (`export_untrained`): the model its run starts from."""
    model_args, _, training_args = parse_arguments(job.argv())
    return export_untrained(model_args.variants[0], model_args, training_args, destination)


def main(argv: list[str]) -> list[Path]:
    """`train.py`'s arguments -> the exported model folders."""
    return run(*parse_arguments(argv))
