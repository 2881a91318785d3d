"""PoolAttnOnnxModel: a poolattn model (backbone and pooling head) run by ONNX Runtime, with `encode` as in PyTorch.

    >>> from poolattn import PoolAttnOnnxModel  # doctest: +SKIP
    >>> model = PoolAttnOnnxModel.from_pretrained("runs/v5/model")  # doctest: +SKIP
    >>> model.encode(["A cat sat on the mat."], prompt="Instruct: ...\\nQuery: ").shape  # doctest: +SKIP
    (1, 576)

Reads `onnx/model.onnx` (written by `poolattn.export_onnx`, or `onnx/model_qint8.onnx` for the int8 copy) and the
folder's config and tokenizer. Tokenization, prompts, EOS, length sorting and batching are
`modeling_poolattn.encode_texts`, the same code as `PoolAttnEmbeddingModel.encode`; only the forward runs in ONNX
Runtime. The graph takes `input_ids`, `attention_mask`, `pooling_mask` (each (batch, seq), int64) and returns the
unnormalised `embeddings` (batch, hidden).

Shipped beside the Hub pair in every repository folder (the sentence-transformers module imports it) and in folders
exported to ONNX; imports only torch, transformers, onnxruntime and the pair,
so `SentenceTransformer(folder, backend="onnx", trust_remote_code=True)` runs it without poolattn installed.
"""

import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer

from .configuration_poolattn import PoolAttnConfig
from .modeling_poolattn import PoolAttnEmbeddingOutput, check_masks, encode_texts, uses_pooling_mask

ONNX_FOLDER = "onnx"
ONNX_FILE = "onnx/model.onnx"
ONNX_INT8_FILE = "onnx/model_qint8.onnx"
INPUT_NAMES = ("input_ids", "attention_mask", "pooling_mask")
OUTPUT_NAME = "embeddings"
DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
EXPORT_RECORD = "export.json"  # in ONNX_FOLDER: what the export measured, and the weights it was made from
WEIGHTS_FILE = "model.safetensors"


def weights_sha256(folder) -> str | None:
    """The SHA-256 of a model folder's `model.safetensors` (None without one): an export records it, and a folder
    whose weights were saved again after its export is told apart."""
    import hashlib

    path = os.path.join(folder, WEIGHTS_FILE)
    if not os.path.isfile(path):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def check_export_weights(folder) -> None:
    """A local folder's ONNX export was made from the weights the folder holds now (its export record's
    `weights_sha256`): a model saved again after its export would otherwise be served by the old graph."""
    record_path = os.path.join(folder, ONNX_FOLDER, EXPORT_RECORD)
    if not os.path.isfile(record_path):
        return
    import json

    with open(record_path) as handle:
        recorded = json.load(handle).get("weights_sha256")
    if recorded is not None and (now := weights_sha256(folder)) is not None and now != recorded:
        raise ValueError(
            f"{folder}: its ONNX export was made from other weights than its {WEIGHTS_FILE} holds now (saved again "
            f"after the export?), so it would give the old model's embeddings. Export it again: poolattn-export-onnx "
            f"{folder}."
        )


def resolve_file(name_or_path, file_name: str, **hub_kwargs) -> str:
    """A local path for `file_name` of a folder or a Hub repository (downloaded with its external-data file)."""
    if os.path.isabs(file_name) or ".." in file_name.replace("\\", "/").split("/"):
        raise FileNotFoundError(
            f"{file_name}: give the ONNX file as a path inside the model's folder (e.g. {ONNX_FILE}); an export "
            "elsewhere is another model's."
        )
    local = os.path.join(name_or_path, file_name)
    if os.path.isdir(name_or_path):
        if not os.path.isfile(local):
            onnx_folder = os.path.join(name_or_path, ONNX_FOLDER)
            names = os.listdir(onnx_folder) if os.path.isdir(onnx_folder) else []
            found = sorted(f"{ONNX_FOLDER}/{name}" for name in names if name.endswith(".onnx"))
            has = f"this folder has {', '.join(found)}" if found else "no ONNX export here"
            raise FileNotFoundError(
                f"{local} does not exist; {has}. "
                "Export the model first: `poolattn-export-onnx FOLDER` (or `poolattn.export_onnx(FOLDER)`)."
            )
        return local
    from transformers.utils import cached_file

    path = cached_file(name_or_path, file_name, **hub_kwargs)
    cached_file(name_or_path, file_name + ".data", _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    return path


class PoolAttnOnnxModel(nn.Module):
    """The ONNX Runtime twin of `PoolAttnEmbeddingModel`: same config, tokenizer, `forward` inputs and `encode`.

    A `nn.Module` without parameters so that sentence-transformers can hold it as its `auto_model`; the weights live
    in the ONNX Runtime session.
    """

    def __init__(self, session, config: PoolAttnConfig, tokenizer=None):
        super().__init__()
        names = tuple(node.name for node in session.get_inputs())
        if names != INPUT_NAMES:
            raise ValueError(
                f"This ONNX graph takes inputs {names}; a poolattn export takes {INPUT_NAMES}. "
                "Export the model with `poolattn-export-onnx`."
            )
        self.session, self.config, self.tokenizer = session, config, tokenizer

    @classmethod
    def from_pretrained(
        cls,
        name_or_path,
        *,
        file_name: str = ONNX_FILE,
        provider: str | None = None,
        num_threads: int | None = None,
        session_options=None,
        **hub_kwargs,
    ) -> "PoolAttnOnnxModel":
        """Load `file_name` of a model folder or Hub repository into an ONNX Runtime session.

        `provider` defaults to CUDA where ONNX Runtime has it, with the CPU behind it; `num_threads` sets the intra-op
        threads (default: ONNX Runtime's, one per physical core). A local folder's export must have been made from
        the weights it holds (`check_export_weights`).
        """
        try:
            import onnxruntime
        except ImportError as error:
            raise ImportError(
                "PoolAttnOnnxModel needs onnxruntime: pip install onnxruntime (or poolattn[onnx])."
            ) from error
        path = resolve_file(name_or_path, file_name, **hub_kwargs)
        if os.path.isdir(name_or_path):
            check_export_weights(name_or_path)
        options = session_options or onnxruntime.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        available = onnxruntime.get_available_providers()
        # not ORT's own order, whose first may be TensorRT (CPU its only fallback) or Azure
        providers = [provider] if provider else [p for p in DEFAULT_PROVIDERS if p in available] or available[:1]
        session = onnxruntime.InferenceSession(path, sess_options=options, providers=providers)
        config = PoolAttnConfig.from_pretrained(name_or_path, **hub_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, config=config, **hub_kwargs)  # no remote code run
        return cls(session, config, tokenizer)

    def forward(
        self, input_ids, attention_mask=None, pooling_mask=None, normalize: bool | None = None, **kwargs
    ) -> PoolAttnEmbeddingOutput:
        """(batch, seq) tensors -> `PoolAttnEmbeddingOutput(embeddings=...)` (no hidden states: the graph returns the
        embeddings only). Defaults as in PyTorch: every token attended, pooling over `attention_mask`."""
        input_ids = torch.as_tensor(input_ids)
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else torch.as_tensor(attention_mask)
        pooling_mask = attention_mask if pooling_mask is None else torch.as_tensor(pooling_mask) * attention_mask
        check_masks(attention_mask, pooling_mask, uses_pooling_mask=uses_pooling_mask(self.config))  # as PyTorch
        feed = {
            name: tensor.detach().to("cpu", torch.long).numpy()
            for name, tensor in zip(INPUT_NAMES, (input_ids, attention_mask, pooling_mask))
        }
        embeddings = torch.from_numpy(self.session.run([OUTPUT_NAME], feed)[0])
        if self.config.normalize if normalize is None else normalize:
            embeddings = F.normalize(embeddings, p=2, dim=-1)
        return PoolAttnEmbeddingOutput(embeddings=embeddings)

    def get_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("No tokenizer: set `model.tokenizer` or load with `PoolAttnOnnxModel.from_pretrained`.")
        return self.tokenizer

    def encode(
        self,
        texts,
        *,
        prompt=None,
        batch_size: int = 32,
        max_length: int | None = None,
        normalize: bool | None = None,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        truncate_dim: int | None = None,
    ):
        """`PoolAttnEmbeddingModel.encode`, run by ONNX Runtime (same arguments, same tokens, same output)."""
        return encode_texts(
            lambda batch: self(**batch, normalize=False).embeddings,
            texts,
            tokenizer=self.get_tokenizer(),
            config=self.config,
            prompt=prompt,
            batch_size=batch_size,
            max_length=max_length,
            normalize=normalize,
            show_progress_bar=show_progress_bar,
            convert_to_numpy=convert_to_numpy,
            truncate_dim=truncate_dim,
        )
