"""poolattn models in mteb 2.x: an `AbsEncoder` with a proper `ModelMeta`, prompting with the task instruction table
(`prompts.TASK_INSTRUCTIONS`).

>>> from poolattn.evaluation.mteb_encoder import query_prompt
>>> query_prompt("STSBenchmark", "STS", prompt_type=None)
'Instruct: Retrieve semantically similar text.\\nQuery: '
>>> query_prompt("ArguAna", "Retrieval", prompt_type="document") is None  # documents get no instruction
True

Instructions follow the e5-mistral / paper convention: queries of retrieval and reranking tasks and the texts of
symmetric tasks (STS, classification, clustering, pair classification) get `Instruct: {instruction}\\nQuery: `;
documents get none. Instruction tokens are left out of pooling (`encode(..., prompt=...)`).
"""

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import torch
from mteb.models import ModelMeta
from mteb.models.abs_encoder import AbsEncoder, get_prompt_name
from mteb.types import PromptType

from ..prompts import TASK_INSTRUCTIONS, sentence_transformers_prompts
from .requests import EvaluationError

# What mteb.evaluate (2.x) writes into `encode_kwargs["batch_size"]` when its caller gives none.
MTEB_DEFAULT_BATCH_SIZE = 32


def query_prompt(
    task_name: str,
    task_type: str,
    *,
    prompt_type,
    instructions: dict = TASK_INSTRUCTIONS,
    model_query_prompt: str = "",
) -> str | None:
    """The prompt for a task's texts, picked as mteb's stock sentence-transformers route picks it from a poolattn
    folder's `config_sentence_transformers.json` (the same table, `prompts.sentence_transformers_prompts`, and mteb's
    own lookup): the task's instruction (by name, else by type) on queries and symmetric texts, none on documents,
    and on the queries of a task type without an instruction (instruction retrieval, ...) the model's own query
    prompt, as `encode_query` gives. None where that is empty, and always None without `instructions`."""
    if not instructions:
        return None
    prompts = sentence_transformers_prompts(model_query_prompt, instructions)
    kind = PromptType(getattr(prompt_type, "value", prompt_type)) if prompt_type else None
    key = get_prompt_name(prompts, SimpleNamespace(name=task_name, type=task_type), kind)
    return prompts[key] or None if key else None


def folder_query_prompt(folder) -> str:
    """The query prompt a poolattn folder gives sentence-transformers' `encode_query` ("" without one)."""
    try:
        config = json.loads((Path(folder) / "config_sentence_transformers.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return ""
    return (config.get("prompts") or {}).get("query") or ""


def encoding_key(task_metadata, instructions: dict, model_query_prompt: str, graph: str | None = None) -> dict:
    """What decides a poolattn encoder's embeddings of a task's texts besides its weights and the settings in the
    results' revision: the prompt each kind of text gets (`query_prompt`: the instruction table, the prompt format,
    the folder's own query prompt) and the ONNX graph scored. Read from the folder's files, not its weights, so a
    study's records copied without weights can be checked against it (`study.records`)."""
    prompts = {
        kind or "text": query_prompt(
            task_metadata.name,
            task_metadata.type,
            prompt_type=kind,
            instructions=instructions,
            model_query_prompt=model_query_prompt,
        )
        for kind in (None, "query", "document")
    }
    return {"prompts": prompts, "graph": graph}


class PoolAttnEncoder(AbsEncoder):
    """Wraps a poolattn folder, loaded with the package's own `PoolAttnEmbeddingModel` (no code from the folder runs;
    `trust_remote_code` only for a tokenizer that asks for its own code), for `mteb.evaluate`.

    `name` (ORG/NAME, mteb's rule) and `revision` identify the model in mteb's results; poolattn's evaluation passes
    the exported model's name and weights fingerprint (`model_folder.ExportedModel`). `batch_size` is the one
    `encode` uses unless the caller of `mteb.evaluate` asks for another (`encode_batch_size`).
    """

    def __init__(
        self,
        path: str,
        *,
        name: str,
        revision: str,
        batch_size: int = 32,
        max_length: int | None = None,
        instructions: dict = TASK_INSTRUCTIONS,
        onnx_file: str | None = None,
        truncate_dim: int | None = None,
        trust_remote_code: bool = False,
    ):
        self.graph = None  # the ONNX graph scored (its files' hash), part of each task's cache key
        if onnx_file:  # the folder's ONNX export (`poolattn-export-onnx`) in ONNX Runtime, same `encode`
            from ..onnx_poolattn import PoolAttnOnnxModel, resolve_file
            from .cache_keys import files_fingerprint

            self.model = PoolAttnOnnxModel.from_pretrained(path, file_name=onnx_file)
            self.graph = files_fingerprint(resolve_file(path, onnx_file))
            framework = ["ONNX"]
        else:  # the package's own class: no code from the folder runs
            from ..modeling_poolattn import PoolAttnEmbeddingModel

            self.model = PoolAttnEmbeddingModel.from_pretrained(path, trust_remote_code=trust_remote_code).eval()
            if torch.cuda.is_available():  # as the sentence-transformers route does: a GPU scores when there is one
                self.model.to("cuda")
            try:  # now, not at the first batch: what is scored is what the revision names
                self.model.get_tokenizer()
            except ValueError as error:  # a tokenizer asking to run the folder's code, none saved
                raise EvaluationError(f"--model {path}: {error} (evaluate.py: --trust-remote-code)") from None
            framework = ["PyTorch", "Transformers"]
        self.batch_size, self.max_length, self.instructions = batch_size, max_length, instructions
        self.model_query_prompt = folder_query_prompt(path)  # for task types without an instruction, as in ST
        self.truncate_dim = truncate_dim  # a Matryoshka size the model was trained for (encode checks it)
        config = self.model.config
        self.mteb_model_meta = ModelMeta(
            loader=None,
            name=name,
            revision=revision,
            release_date=None,
            languages=["eng-Latn"],
            n_parameters=sum(p.numel() for p in self.model.parameters()) or None,
            memory_usage_mb=None,
            max_tokens=max_length or config.max_length,
            embed_dim=truncate_dim or config.text_config.hidden_size,
            license=None,
            open_weights=True,
            public_training_code=None,
            public_training_data=None,
            framework=framework,
            similarity_fn_name="cosine",
            use_instructions=True,
            training_datasets=None,
        )

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
        texts = [text for batch in inputs for text in batch["text"]]
        prompt = query_prompt(
            task_metadata.name,
            task_metadata.type,
            prompt_type=prompt_type,
            instructions=self.instructions,
            model_query_prompt=self.model_query_prompt,
        )
        # only when asked: the remote code of folders exported before Matryoshka sizes has no `truncate_dim`
        sizes = {"truncate_dim": self.truncate_dim} if self.truncate_dim else {}
        batch_size = self.encode_batch_size(kwargs.get("batch_size"))
        # a bar per encode call (every task's texts), when the command shows progress (INFO): scoring moves within
        # a task too, not only between tasks
        progress = logging.getLogger("poolattn").isEnabledFor(logging.INFO) and len(texts) > batch_size
        return self.model.encode(
            texts,
            prompt=prompt,
            batch_size=batch_size,
            max_length=self.max_length,
            show_progress_bar=progress,
            **sizes,
        )

    def scoring_key(self, task_metadata) -> dict:
        """What decides this encoder's embeddings of a task's texts besides the weights and the settings in the
        results' revision (`cache_keys.scoring_key`): the prompt each kind of text gets, as `encode` picks it (the
        instruction table, the prompt format, the folder's own query prompt), and the ONNX graph scored."""
        return encoding_key(task_metadata, self.instructions, self.model_query_prompt, self.graph)

    def encode_batch_size(self, requested: int | None) -> int:
        """The encoder's own `batch_size` (the one `get_model` was given, often chosen to fit memory), unless the
        caller of `mteb.evaluate` asked for another in `encode_kwargs`. mteb fills a missing `batch_size` with 32
        before `encode` runs, so a requested 32 cannot be told from mteb's default: only another value counts as
        the caller's."""
        return self.batch_size if requested in (None, MTEB_DEFAULT_BATCH_SIZE) else requested
