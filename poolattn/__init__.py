"""poolattn: decoder LLMs as text-embedding models with the pooling and attention designs of arXiv 2409.02727."""

from .lazy import lazy_exports

# Imported on first use (PEP 562), so that `poolattn.cli` can answer `--help` without loading torch's model stack.
_LAZY = {
    "PAPER_VARIANTS": "configuration_poolattn",
    "PoolAttnConfig": "configuration_poolattn",
    "resolve_layers": "configuration_poolattn",
    "PoolAttnEmbeddingModel": "modeling_poolattn",
    "PoolAttnEmbeddingOutput": "modeling_poolattn",
    "PoolAttnOnnxModel": "onnx_poolattn",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "PAPER_VARIANTS",
    "PoolAttnConfig",
    "PoolAttnEmbeddingModel",
    "PoolAttnEmbeddingOutput",
    "PoolAttnOnnxModel",
    "export_onnx",
    "from_backbone",
    "load_checkpoint",
    "resolve_layers",
]
__version__ = "0.1.0"


def from_backbone(name_or_path: str, variant: int | str | None = 5, **overrides):
    """`PoolAttnEmbeddingModel.from_backbone` that also takes poolattn's named backbones, e.g. `"smollm2-135m"`.

    >>> model = from_backbone("smollm2-135m", variant=5)  # doctest: +SKIP
    >>> model.encode(["A man is playing a guitar."]).shape  # doctest: +SKIP
    (1, 576)

    A named backbone is resolved to a local folder first (`poolattn.backbones.resolve_backbone`: the cache, the Hub,
    or built offline from its wheel); any other name or path (a local folder, a Hub id) is passed on unchanged.
    `variant` and `overrides` are those of `PoolAttnEmbeddingModel.from_backbone`.
    """
    from .backbones import resolve_backbone  # imported here so `python -m poolattn.backbones` runs it only once
    from .modeling_poolattn import PoolAttnEmbeddingModel

    return PoolAttnEmbeddingModel.from_backbone(resolve_backbone(name_or_path), variant=variant, **overrides)


def load_checkpoint(checkpoint, *, merge: bool = True):
    """A training checkpoint (`<output_dir>/checkpoint-<step>`) as a model: `poolattn.training.load_checkpoint`."""
    from .training.checkpoints import load_checkpoint as load  # peft and the Trainer: only when asked

    return load(checkpoint, merge=merge)


def export_onnx(model_folder, *, quantize: bool = False, tolerance: float = 1e-4, **kwargs):
    """A model folder to ONNX (`onnx/model.onnx`), checked against PyTorch: `poolattn.hub.onnx_export.export_onnx`."""
    from .hub.onnx_export import export_onnx as export  # pulls in the exporter only when asked

    return export(model_folder, quantize=quantize, tolerance=tolerance, **kwargs)
