"""poolattn models in mteb 2.x: an `AbsEncoder` with a proper `ModelMeta`, and the task instruction table.

>>> from poolattn.mteb_encoder import query_prompt
>>> query_prompt("STSBenchmark", "STS", prompt_type=None)
'Instruct: Retrieve semantically similar text.\\nQuery: '
>>> query_prompt("ArguAna", "Retrieval", prompt_type="document") is None  # documents get no instruction
True

Instructions follow the e5-mistral / paper convention: queries of retrieval and reranking tasks and the texts of
symmetric tasks (STS, classification, clustering, pair classification) get `Instruct: {instruction}\\nQuery: `;
documents get none. Instruction tokens are left out of pooling (`encode(..., prompt=...)`).
"""

import hashlib
import json
from pathlib import Path

from mteb.models import ModelMeta
from mteb.models.abs_encoder import AbsEncoder

# Task name (or task type as a fallback) -> instruction; e5-mistral's table for the MTEB tasks shipped here.
TASK_INSTRUCTIONS = {
    "STS": "Retrieve semantically similar text.",
    "Banking77Classification": "Given a online banking query, find the corresponding intents",
    "EmotionClassification": "Classify the emotion expressed in the given Twitter message into one of the six "
    "emotions: anger, fear, joy, love, sadness, and surprise",
    "TwentyNewsgroupsClustering": "Identify the topic or theme of the given news articles",
    "TwentyNewsgroupsClustering.v2": "Identify the topic or theme of the given news articles",
    "TwitterURLCorpus": "Retrieve tweets that are semantically similar to the given tweet",
    "ArguAna": "Given a claim, find documents that refute the claim",
    "WikiQARetrieval": "Given a question, retrieve Wikipedia sentences that answer the question",
    "WikiQAReranking": "Given a question, retrieve Wikipedia sentences that answer the question",
    "Retrieval": "Given a query, retrieve relevant passages",
    "Reranking": "Given a query, retrieve relevant passages",
    "Classification": "Classify the given text",
    "Clustering": "Identify the topic or theme of the given text",
    "PairClassification": "Retrieve text that is semantically similar to the given text",
}


def query_prompt(task_name: str, task_type: str, *, prompt_type, instructions: dict = TASK_INSTRUCTIONS) -> str | None:
    """The prompt for a task's texts: None for documents and for tasks without an instruction."""
    if getattr(prompt_type, "value", prompt_type) == "document":
        return None
    instruction = instructions.get(task_name) or instructions.get(task_type)
    return f"Instruct: {instruction}\nQuery: " if instruction else None


def model_fingerprint(folder: str) -> str:
    """A revision string from the weights and config, so two models never share an mteb cache entry."""
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        path = Path(folder) / name
        if path.is_file():
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def default_model_name(folder: str) -> str:
    """The training manifest's `model_name` (train.py --model_name), else `poolattn/<backbone>-v<variant>` from it,
    else `poolattn/<folder>` (its parent for `model`)."""
    path = Path(folder).resolve()
    manifest = path / "training_manifest.json"
    if manifest.is_file():
        record = json.loads(manifest.read_text())
        return record.get("model_name") or f"poolattn/{Path(record['backbone']).name}-v{record['variant']}"
    return f"poolattn/{path.parent.name if path.name == 'model' else path.name}"


class PoolAttnEncoder(AbsEncoder):
    """Wraps `AutoModel.from_pretrained(path, trust_remote_code=True)` for `mteb.evaluate`.

    `name` must contain a "/" (mteb's rule); by default `default_model_name(path)`.
    """

    def __init__(self, path: str, *, name: str | None = None, batch_size: int = 32, max_length: int | None = None,
                 instructions: dict = TASK_INSTRUCTIONS):
        from transformers import AutoModel

        self.model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
        self.batch_size, self.max_length, self.instructions = batch_size, max_length, instructions
        config = self.model.config
        self.mteb_model_meta = ModelMeta(
            loader=None, name=name or default_model_name(path), revision=model_fingerprint(path),
            release_date=None, languages=["eng-Latn"], n_parameters=sum(p.numel() for p in self.model.parameters()),
            memory_usage_mb=None, max_tokens=max_length or config.max_length, embed_dim=config.text_config.hidden_size,
            license=None, open_weights=True, public_training_code=None, public_training_data=None,
            framework=["PyTorch", "Transformers"], similarity_fn_name="cosine", use_instructions=True,
            training_datasets=None,
        )

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
        texts = [text for batch in inputs for text in batch["text"]]
        prompt = query_prompt(task_metadata.name, task_metadata.type, prompt_type=prompt_type,
                              instructions=self.instructions)
        return self.model.encode(texts, prompt=prompt, batch_size=kwargs.get("batch_size", self.batch_size),
                                 max_length=self.max_length, show_progress_bar=False)
