"""ContrastiveTrainer: the HF Trainer with an InfoNCE loss, cross-device negatives and GradCache; plus the export.

GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"): embed the whole
contrastive batch in chunks without a graph, compute the loss and its gradient with respect to every embedding, then
re-embed chunk by chunk with a graph and backpropagate each chunk's cached embedding gradient. Peak activation memory
is that of one chunk; gradients equal plain training's (the random state of each chunk is replayed, so dropout too).
Chunks group texts of similar length and drop their padding, so a chunk of short texts costs what short texts cost.
"""

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import Trainer

from .losses import contrastive_loss, world_size

logger = logging.getLogger(__name__)


class RandomStateReplay:
    """Capture the CPU (and current CUDA device's) random state now; `replay()` restores it for a re-run."""

    def __init__(self):
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

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

    Args (besides the Trainer's):
        temperature: InfoNCE temperature over cosine similarities (0.05 = the paper code's scale 20).
        gather_across_devices: score each rank's queries against the documents of every rank.
        gradcache_chunk_size: embed in chunks of this many texts with GradCache (0 = plain backpropagation).
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args, temperature: float = 0.05, gather_across_devices: bool = True,
                 gradcache_chunk_size: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be > 0 (0.05 is the paper's scale 20).")
        if gradcache_chunk_size < 0:
            raise ValueError(f"gradcache_chunk_size={gradcache_chunk_size} must be >= 0 (0 disables GradCache).")
        if gradcache_chunk_size and self.is_deepspeed_enabled:
            raise ValueError(
                "GradCache backpropagates several times per step, which DeepSpeed's engine does not allow through the "
                "Trainer. Use torchrun/DDP with --gradcache_chunk_size (LoRA needs no optimizer sharding), or DeepSpeed "
                "with --gradcache_chunk_size 0."
            )
        self.temperature = temperature
        self.gather_across_devices = gather_across_devices
        self.gradcache_chunk_size = gradcache_chunk_size

    def _loss(self, query_embeddings, document_embeddings):
        return contrastive_loss(
            query_embeddings, document_embeddings, temperature=self.temperature, gather=self.gather_across_devices
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        query_embeddings = model(**inputs["queries"]).embeddings
        document_embeddings = model(**inputs["documents"]).embeddings
        loss = self._loss(query_embeddings, document_embeddings)
        return (loss, {"query_embeddings": query_embeddings.detach()}) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not self.gradcache_chunk_size:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._prepare_inputs(inputs)
        loss, cached = self._gradcache_loss_and_embedding_gradients(model, inputs)
        self._gradcache_backward(model, cached)
        return loss.detach() / self.current_gradient_accumulation_steps

    def _gradcache_loss_and_embedding_gradients(self, model, inputs):
        """Steps 1-2: embed every chunk without a graph, then the loss and d(loss)/d(embedding) for each chunk."""
        cached, embeddings_by_side = [], {}  # cached: (chunk, random state, embeddings) per chunk, queries first
        for side in ("queries", "documents"):
            chunks, order = length_grouped_chunks(inputs[side], self.gradcache_chunk_size)
            side_cache = []
            for chunk in chunks:
                random_state = RandomStateReplay()
                with torch.no_grad(), self.compute_loss_context_manager():
                    embeddings = model(**chunk).embeddings
                side_cache.append((chunk, random_state, embeddings.detach().requires_grad_()))
            stacked = torch.cat([embeddings for _, _, embeddings in side_cache])  # (rows, hidden), length order
            embeddings_by_side[side] = stacked[torch.argsort(order)]  # back to the batch's row order
            cached += side_cache
        loss = self._loss(embeddings_by_side["queries"], embeddings_by_side["documents"])
        loss.backward()  # fills .grad of every cached embedding (cross-rank terms included by the gather's backward)
        return loss, [(chunk, state, embeddings.grad) for chunk, state, embeddings in cached]

    def _gradcache_backward(self, model, cached):
        """Step 3: re-embed each chunk with a graph (same random state) and backpropagate its cached gradient."""
        scale = 1.0 / self.current_gradient_accumulation_steps
        for position, (chunk, random_state, embedding_gradient) in enumerate(cached):
            last = position == len(cached) - 1  # DDP all-reduces once, after the last chunk
            sync = contextlib.nullcontext() if last else self.accelerator.no_sync(model)
            with sync, random_state.replay(), self.compute_loss_context_manager():
                embeddings = model(**chunk).embeddings
                surrogate = (embeddings * embedding_gradient).sum() * scale
            self.accelerator.backward(surrogate)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        return (loss.detach(), None, None) if prediction_loss_only else (loss.detach(), outputs["query_embeddings"], None)


def contrastive_batch_summary(*, per_device_batch: int, has_negatives: bool, gather: bool) -> dict:
    """Queries x candidates that one loss call sees, across devices."""
    world = world_size()
    documents_per_device = per_device_batch * (2 if has_negatives else 1)
    candidates = documents_per_device * (world if gather else 1)
    return {
        "world_size": world,
        "queries_per_device": per_device_batch,
        "queries_per_loss_call": per_device_batch * world,
        "candidates_per_query": candidates,
        "hard_negatives": has_negatives,
        "cross_device_negatives": gather and world > 1,
    }


def trainable_parameters(model) -> dict[str, int]:
    """Trainable parameter counts split into LoRA, pooling head and the rest (backbone under full fine-tuning)."""
    counts = {"lora": 0, "head": 0, "backbone": 0}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            kind = "lora" if "lora_" in name else "head" if "pooler." in name else "backbone"
            counts[kind] += parameter.numel()
    return counts


def atomic_save(save: callable, destination: Path) -> Path:
    """Run `save(folder)` into a temp folder beside `destination`, then swap it in: never a half-written model."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.tmp-"))
    try:
        save(staging)
        if destination.exists():
            retired = destination.with_name(f".{destination.name}.old-{os.getpid()}")
            destination.rename(retired)
            staging.rename(destination)
            shutil.rmtree(retired)
        else:
            staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination


@torch.no_grad()
def export_model(model, tokenizer, destination: Path, *, check_texts: list[str], manifest: dict,
                 tolerance: float | None = None) -> Path:
    """Merge LoRA into the backbone, check merged vs adapter embeddings, and save one Hub-loadable folder atomically.

    `model` is a `PoolAttnEmbeddingModel`, bare (full fine-tuning) or wrapped by peft. Raises `RuntimeError` when
    merged and adapter embeddings differ by more than `tolerance` (default 1e-4 in fp32, 2e-2 in 16-bit).
    """
    base = model.get_base_model() if hasattr(model, "merge_and_unload") else model
    base.tokenizer = tokenizer
    before = base.encode(check_texts, batch_size=len(check_texts), convert_to_numpy=False)
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    after = merged.encode(check_texts, batch_size=len(check_texts), convert_to_numpy=False)
    difference = (after - before).abs().max().item()
    if tolerance is None:
        tolerance = 1e-4 if merged.dtype == torch.float32 else 2e-2
    if not difference <= tolerance:
        raise RuntimeError(
            f"Merged and adapter embeddings differ by {difference:.3g} > {tolerance:.3g} on {len(check_texts)} texts; "
            "the export was not written. Check the LoRA config (e.g. unsupported layers) or raise the tolerance."
        )
    manifest = {**manifest, "export_check": {"texts": len(check_texts), "max_abs_difference": difference,
                                             "tolerance": tolerance}}

    def save(folder: Path):
        merged.save_pretrained(folder)
        (folder / "training_manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")

    logger.info("merged vs adapter embeddings: max |diff| %.3g (tolerance %.3g)", difference, tolerance)
    return atomic_save(save, destination)
