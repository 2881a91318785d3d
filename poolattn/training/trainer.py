"""ContrastiveTrainer: the HF Trainer with an InfoNCE loss, cross-device negatives and GradCache.

GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"): embed the whole
contrastive batch in chunks without a graph, compute the loss and its gradient with respect to every embedding, then
re-embed chunk by chunk with a graph and backpropagate each chunk's cached embedding gradient. Peak activation memory
is that of one chunk; gradients equal plain training's (the random state of each chunk is replayed, so dropout too).
Chunks group texts of similar length and drop their padding, so a chunk of short texts costs what short texts cost.
"""

import contextlib
import logging

import torch
from transformers import Trainer

from ..records import head_parameter
from .losses import contrastive_loss, duplicate_documents, world_size
from .trainer_arguments import ContrastiveTrainingArguments, TrainingDivergedError, last_complete_checkpoint

__all__ = [
    "ContrastiveTrainer",
    "ContrastiveTrainingArguments",
    "RandomStateReplay",
    "TrainingDivergedError",
    "last_complete_checkpoint",
    "length_grouped_chunks",
]

logger = logging.getLogger(__name__)


class RandomStateReplay:
    """Capture the CPU (and current CUDA device's) random state now; `replay()` restores it for a re-run."""

    def __init__(self):
        self.cpu_state = torch.get_rng_state()
        cuda_in_use = torch.cuda.is_available() and torch.cuda.is_initialized()
        self.cuda_state = torch.cuda.get_rng_state() if cuda_in_use else None

    @contextlib.contextmanager
    def replay(self):
        cpu_state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state() if self.cuda_state is not None else None
        torch.set_rng_state(self.cpu_state)
        if self.cuda_state is not None:
            torch.cuda.set_rng_state(self.cuda_state)
        try:
            yield
        finally:
            torch.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state(cuda_state)


@contextlib.contextmanager
def unchanged_random_state():
    """Run the block, then put Python's, numpy's and torch's random states (CPU, and every initialised CUDA device)
    back as they were before it."""
    import random

    import numpy as np

    python_state, numpy_state, cpu_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def length_grouped_chunks(batch: dict[str, torch.Tensor], chunk_size: int) -> tuple[list[dict], torch.Tensor]:
    """Rows sorted longest first into chunks of `chunk_size`, each chunk cut to its own longest row.

    Returns the chunks and `order`: row i of the chunks stacked in turn is row `order[i]` of `batch`. Every tensor of
    `batch` is (rows, seq) with `attention_mask` among them; padding on either side is dropped column by column, which
    changes no embedding (padded keys are masked and position ids are counted over real tokens), so a chunk of short
    texts costs what short texts cost instead of the batch's longest row.
    """
    mask = batch["attention_mask"]
    order = torch.argsort(mask.sum(dim=1), descending=True, stable=True)
    chunks = []
    for start in range(0, len(order), chunk_size):
        rows = order[start : start + chunk_size]
        columns = mask[rows].any(dim=0)  # (seq,) positions where some row of this chunk has a real token
        chunks.append({key: value[rows][:, columns] for key, value in batch.items()})
    return chunks, order


class ContrastiveTrainer(Trainer):
    """Trainer for `PoolAttnEmbeddingModel` (bare or wrapped by peft) on `TripletCollator` batches.

    Its settings come from `ContrastiveTrainingArguments`: `temperature` (InfoNCE over cosine similarities),
    `gather_across_devices` (score each rank's queries against the documents of every rank) and
    `gradcache_chunk_size` (embed in chunks of this many texts with GradCache; 0 = plain backpropagation).

    GradCache runs inside `compute_loss`, so `Trainer.training_step` stays transformers' own (context parallelism,
    `optimizer.train()`, cache emptying, loss scaling and `accelerator.backward`): every chunk but the last is
    backpropagated there, and the returned loss carries the last chunk's graph, which the Trainer backpropagates.
    """

    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args,
        source_of_rows: list[int] | None = None,
        source_weights: dict[int, float] | None = None,
        source_weight_groups: dict[int, str] | None = None,
        **kwargs,
    ):
        """`source_of_rows`: each training row's source (`Triplets.source_of_rows`); with several sources every
        loss call's batch comes from one of them (`batching.SourceBatchSampler`, with `source_weights` and the
        sources that share one, `source_weight_groups`, if given), else rows are shuffled together."""
        super().__init__(*args, **kwargs)
        self.source_of_rows, self.source_weights = source_of_rows, source_weights
        self.source_weight_groups = source_weight_groups
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        # the sizes the model is trained for besides the full one: its config says, and the export records it
        self.matryoshka_dims = tuple(getattr(getattr(base, "config", None), "matryoshka_dims", None) or ())
        self._recall_counts = torch.zeros(2, dtype=torch.float64)  # in-batch hits, queries (`evaluation_loop`)
        if not isinstance(self.args, ContrastiveTrainingArguments):
            raise TypeError(
                f"ContrastiveTrainer needs ContrastiveTrainingArguments (temperature, GradCache, gather), "
                f"got {type(self.args).__name__}."
            )
        if self.args.gradcache_chunk_size and self.is_deepspeed_enabled:
            raise ValueError(
                "GradCache backpropagates several times per step, which DeepSpeed's engine does not allow through "
                "the Trainer. Use torchrun/DDP with --gradcache_chunk_size (LoRA needs no optimizer sharding), or "
                "DeepSpeed with --gradcache_chunk_size 0."
            )

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """transformers' scheduler, planned over `--lr_schedule_steps` when it is given (the run stops at its own
        `max_steps`: the first steps of that longer run, warmup and decay as there), else over the run's own steps."""
        return super().create_scheduler(self.args.lr_schedule_steps or num_training_steps, optimizer)

    def create_optimizer(self, model=None):
        """transformers' optimizer, with the pooling head's parameters (`head_parameter`) in groups of their own at
        `--head_learning_rate` when it is given; the scheduler then scales every group's rate alike."""
        optimizer = super().create_optimizer(model)
        if self.args.head_learning_rate is None or getattr(optimizer, "_poolattn_head_groups", False):
            return optimizer
        opt_model = self.model if model is None else model
        head = {id(parameter) for name, parameter in opt_model.named_parameters() if head_parameter(name)}
        groups = []
        for group in optimizer.param_groups:
            for in_head in (False, True):
                params = [parameter for parameter in group["params"] if (id(parameter) in head) == in_head]
                if params:
                    settings = {key: value for key, value in group.items() if key != "params"}
                    groups.append(
                        {**settings, "params": params, **({"lr": self.args.head_learning_rate} if in_head else {})}
                    )
        optimizer.param_groups.clear()  # no step has run: no optimizer state refers to the old groups
        for group in groups:
            optimizer.add_param_group(group)
        optimizer._poolattn_head_groups = True
        return optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        """transformers' step (forward, backward), then a check that the loss and every gradient are finite, before the
        optimizer updates anything: a diverged run stops with its weights and checkpoints finite."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        # under fp16 loss scaling an infinite gradient is routine: the scaler skips that step and lowers its scale
        gradients = [] if self.args.fp16 else [p.grad for p in model.parameters() if p.grad is not None]
        finite = (
            torch.stack(
                [torch.isfinite(loss.detach()).all()] + [torch.isfinite(gradient).all() for gradient in gradients]
            )
            .all()
            .float()
        )
        if world_size() > 1:  # every process stops together, or none does
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if not finite:
            last = last_complete_checkpoint(self.args.output_dir)
            raise TrainingDivergedError(
                f"step {self.state.global_step + 1}: the loss ({loss.item():.4g}) or a gradient is not finite; the "
                "run diverged and stopped before this step's update, so the weights and the last checkpoint "
                f"({last or 'none written yet'}) are finite. Train again with a lower --learning_rate (now "
                f"{self.args.learning_rate:g}), more --warmup_steps or --max_grad_norm 1.0, and "
                "--overwrite_output_dir true (or another --output_dir); a resume takes only the settings its "
                "checkpoint was trained with."
            )
        return loss

    def _get_train_sampler(self, train_dataset=None):
        if self.source_of_rows is not None and len(set(self.source_of_rows)) > 1:
            from .batching import SourceBatchSampler

            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            loss_batch = self.args.per_device_train_batch_size * self.args.world_size
            return SourceBatchSampler(
                self.source_of_rows,
                loss_batch,
                seed=seed,
                weights=self.source_weights,
                weight_groups=self.source_weight_groups,
            )
        return super()._get_train_sampler(train_dataset)

    def _loss(self, query_embeddings, document_embeddings, text_ids=None):
        return contrastive_loss(
            query_embeddings,
            document_embeddings,
            temperature=self.args.temperature,
            gather=self.args.gather_across_devices,
            text_ids=text_ids,
            matryoshka_dims=self.matryoshka_dims,
            label_smoothing=self.args.label_smoothing_factor,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.args.gradcache_chunk_size and model.training and torch.is_grad_enabled() and not return_outputs:
            return self._gradcache_loss(model, inputs)
        query_embeddings = model(**inputs["queries"]).embeddings
        document_embeddings = model(**inputs["documents"]).embeddings
        loss = self._loss(query_embeddings, document_embeddings, inputs.get("text_ids"))
        return (loss, {"query_embeddings": query_embeddings.detach()}) if return_outputs else loss

    def _gradcache_loss(self, model, inputs):
        """The batch's loss; the gradients of every chunk but the last are accumulated already, the last chunk's
        graph is in the returned tensor (its value is the loss)."""
        loss, cached = self._gradcache_loss_and_embedding_gradients(model, inputs)
        return loss.detach() + self._gradcache_backward(model, cached)

    def _gradcache_loss_and_embedding_gradients(self, model, inputs):
        """Steps 1-2: embed every chunk without a graph, then the loss and d(loss)/d(embedding) for each chunk."""
        cached, embeddings_by_side = [], {}  # cached: (chunk, random state, embeddings) per chunk, queries first
        for side in ("queries", "documents"):
            chunks, order = length_grouped_chunks(inputs[side], self.args.gradcache_chunk_size)
            side_cache = []
            for chunk in chunks:
                random_state = RandomStateReplay()
                with torch.no_grad():
                    embeddings = model(**chunk).embeddings
                side_cache.append((chunk, random_state, embeddings.detach().requires_grad_()))
            stacked = torch.cat([embeddings for _, _, embeddings in side_cache])  # (rows, hidden), length order
            embeddings_by_side[side] = stacked[torch.argsort(order)]  # back to the batch's row order
            cached += side_cache
        loss = self._loss(embeddings_by_side["queries"], embeddings_by_side["documents"], inputs.get("text_ids"))
        loss.backward()  # fills .grad of every cached embedding (cross-rank terms included by the gather's backward)
        return loss, [(chunk, state, embeddings.grad) for chunk, state, embeddings in cached]

    def _gradcache_backward(self, model, cached) -> torch.Tensor:
        """Step 3: re-embed each chunk with a graph (same random state) and backpropagate its cached gradient.

        Every chunk but the last is backpropagated here without DDP's all-reduce, scaled as the Trainer scales a loss
        (1 / gradient accumulation steps). The last chunk's surrogate is returned with value 0: the Trainer's own
        backward then runs it, and DDP all-reduces once, after the last chunk.
        """
        scale = 1.0 / self.current_gradient_accumulation_steps
        *earlier, last = cached
        for chunk, random_state, embedding_gradient in earlier:
            with self.accelerator.no_sync(model), random_state.replay():
                surrogate = (model(**chunk).embeddings * embedding_gradient).sum()
                self.accelerator.backward(surrogate * scale)
        chunk, random_state, embedding_gradient = last
        with random_state.replay():
            surrogate = (model(**chunk).embeddings * embedding_gradient).sum()
        return surrogate - surrogate.detach()

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The contrastive loss of a held-out batch, and (counted for `evaluation_loop`) how many of its queries rank
        their own positive first among the batch's documents (in-batch recall@1, duplicates of the positive left
        out as in the loss)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            query_embeddings = model(**inputs["queries"]).embeddings
            document_embeddings = model(**inputs["documents"]).embeddings
            loss = self._loss(query_embeddings, document_embeddings, inputs.get("text_ids"))
            scores = (
                torch.nn.functional.normalize(query_embeddings.float(), dim=-1)
                @ torch.nn.functional.normalize(document_embeddings.float(), dim=-1).T
            )
            if inputs.get("text_ids") is not None:
                scores = scores.masked_fill(
                    duplicate_documents(
                        inputs["text_ids"],
                        inputs["text_ids"]["documents"],
                        document_queries=inputs["text_ids"].get("document_queries"),
                    ),
                    float("-inf"),
                )
            hits = scores.argmax(dim=-1) == torch.arange(len(scores), device=scores.device)
        self._recall_counts += torch.stack([hits.sum(), torch.tensor(len(hits), device=hits.device)]).double().cpu()
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), query_embeddings.detach(), None

    def evaluate(self, *args, **kwargs):
        """transformers' evaluation, leaving every random generator as it found it (Python's, numpy's, torch's CPU and
        CUDA ones): an evaluation drew from torch's random state, which changed the dropout of every later training
        step, so the same run evaluated every 10 steps or every 20 trained another model, and a tuning proxy was not
        its run's first steps (tested: weights equal to the last bit whatever the evaluation cadence)."""
        with unchanged_random_state():
            return super().evaluate(*args, **kwargs)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        """transformers' loop, plus `<prefix>_recall_at_1`: the share of held-out queries whose own positive scores
        highest among their batch's documents (summed over processes)."""
        self._recall_counts = torch.zeros(2, dtype=torch.float64)
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        counts = self._recall_counts.to(self.args.device)
        if world_size() > 1:
            torch.distributed.all_reduce(counts)
        if counts[1] > 0:
            output.metrics[f"{metric_key_prefix}_recall_at_1"] = float(counts[0] / counts[1])
        return output
