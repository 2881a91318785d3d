"""Shipping a model: Hub folders and publishing, model cards, the allow-list and load checks, ONNX export.

`repository` (write_repository_folder, publish), `model_card` (the card), `card_results` (which results it shows),
`shipping` (what a folder may carry, checks that it loads), `onnx_export` (ONNX graph and its check)."""

from ..lazy import lazy_exports

# Imported on first use (PEP 562): the parsers and the record types stay light, the stack behind a name loads when
# it is asked for.
_LAZY = {
    "publish": "repository",
    "write_repository_folder": "repository",
    "HubPushError": "repository",
    "export_onnx": "onnx_export",
}
__all__ = sorted(_LAZY)


__getattr__ = lazy_exports(__name__, _LAZY)
