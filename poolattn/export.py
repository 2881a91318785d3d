"""Writing a trained model folder: merged weights, config, tokenizer, the manifest, and the sentence-transformers files
(so that every route reads the folder as `encode` does), written atomically."""

import dataclasses
import logging
from pathlib import Path

from .files import atomic_save, write_json
from .manifest import TrainingManifest
from .model_folder import tokenizer_fingerprint
from .modeling_poolattn import write_sentence_transformers_modules
from .prompts import sentence_transformers_prompts
from .records import ExportCheck

logger = logging.getLogger(__name__)


PACKAGE_DIR = Path(__file__).resolve().parent


def write_sentence_transformers_files(folder: Path, *, max_length: int, query_prompt: str) -> None:
    """The sentence-transformers files of a poolattn folder: `write_sentence_transformers_modules` (modules.json,
    sentence_bert_config.json, the module's code; `save_pretrained` writes them too) and its prompts."""
    write_sentence_transformers_modules(folder, max_length, [PACKAGE_DIR])
    write_sentence_transformers_prompts(folder, query_prompt)


def write_sentence_transformers_prompts(folder: Path, query_prompt: str) -> None:
    """config_sentence_transformers.json: the prompts mteb's stock route looks up, with the query prompt the model
    was trained with."""
    write_json(
        folder / "config_sentence_transformers.json",
        {
            "prompts": sentence_transformers_prompts(query_prompt),
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )


def export_model(
    model,
    tokenizer,
    destination: Path,
    *,
    check_texts: list[str],
    manifest: TrainingManifest,
    tolerance: float | None = None,
) -> Path:
    """Merge LoRA into the backbone, check merged vs adapter embeddings, and save one Hub-loadable folder atomically.

    `model` is a `PoolAttnEmbeddingModel`, bare (full fine-tuning) or wrapped by peft. Raises `RuntimeError` when
    merged and adapter embeddings differ by more than `tolerance` (default 1e-4 in fp32, 2e-2 in 16-bit).
    """
    import torch

    with torch.no_grad():
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
    manifest = dataclasses.replace(
        manifest, export_check=ExportCheck(texts=len(check_texts), max_abs_difference=difference, tolerance=tolerance)
    )

    def save(folder: Path):
        merged.save_pretrained(folder)
        dataclasses.replace(manifest, tokenizer_fingerprint=tokenizer_fingerprint(folder)).write(folder)
        # every route reads the folder right: SentenceTransformer(folder, trust_remote_code=True) runs the head
        query_prompt = manifest.data.query_prompt if manifest.data else ""
        write_sentence_transformers_prompts(folder, query_prompt)  # save_pretrained wrote the module's files

    logger.info("merged vs adapter embeddings: max |diff| %.3g (tolerance %.3g)", difference, tolerance)
    return atomic_save(save, destination)
