"""Export a poolattn model folder (backbone and pooling head) to ONNX, checked against PyTorch before it is kept.

    >>> from poolattn import export_onnx  # doctest: +SKIP
    >>> export_onnx("runs/v5/model", quantize=True).max_abs_diff  # doctest: +SKIP
    3.1e-07

`export_onnx` writes into the model folder:

- `onnx/model.onnx` + `onnx/model.onnx.data`: the whole model as one graph (`torch.onnx.export(dynamo=True)`), inputs
  `input_ids`, `attention_mask`, `pooling_mask` ((batch, seq) int64, both axes dynamic), output `embeddings`
  (batch, hidden), unnormalised: `PoolAttnOnnxModel` normalises as `config.normalize` says, like PyTorch;
- `onnx/model_qint8.onnx` with `quantize=True`: ONNX Runtime's dynamic int8 quantization of the weights (MatMul and
  Gather), with its measured distance from fp32 recorded (it is not held to the fp32 tolerance);
- `onnx/export.json`: what was checked and measured (`OnnxExport`);
- `onnx_poolattn.py`, the runtime model, beside the Hub pair.

The check: the exported graph in ONNX Runtime and the PyTorch model embed `CHECK_TEXTS` (short and long, with and
without a prompt, left and right padding, batch sizes 1 and all) through the same `encode`; beyond `tolerance`
(max absolute difference of unit-norm embeddings) the export raises `OnnxExportMismatch` and nothing is written.
The `onnx/` folder is replaced atomically.
"""

import json
import logging
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..files import atomic_save, write_json
from ..model_folder import is_poolattn_folder, model_fingerprint
from ..modeling_poolattn import PoolAttnEmbeddingModel, pad_features, pad_token_id_for, tokenize_for_embedding
from ..onnx_poolattn import (
    EXPORT_RECORD,
    INPUT_NAMES,
    ONNX_FILE,
    ONNX_FOLDER,
    ONNX_INT8_FILE,
    OUTPUT_NAME,
    WEIGHTS_FILE,
    PoolAttnOnnxModel,
    weights_sha256,
)

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the Hub pair and its twins
RUNTIME_MODULE = "onnx_poolattn.py"
TORCH_REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"
STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"  # the exporter's per-node metadata with local file paths
CHECK_PROMPT = "Instruct: Retrieve semantically similar text.\nQuery: "
CHECK_TEXTS = (
    "A man is playing a guitar.",
    "Stocks fell.",
    "The committee, after three hours of debate that ran well past midnight, finally agreed to postpone the vote on "
    "the new budget until the auditors had reviewed every line of the spending plan submitted in March.",
    "Is it safe to eat raw cookie dough?",
    "x",
)


class OnnxExportMismatch(ValueError):
    """The ONNX graph does not give the PyTorch model's embeddings; nothing was written."""


@dataclass
class OnnxExport:
    """What `export_onnx` wrote and measured (`onnx/export.json`)."""

    folder: str  # the exported folder's name (no local path: the record is published with the folder)
    file: str
    max_abs_diff: float  # ORT fp32 vs PyTorch, unit-norm embeddings, over every check
    tolerance: float
    checks: list[str]  # the settings compared, e.g. "right padding, prompt, batch 5"
    opset: int
    torch_version: str
    onnxruntime_version: str
    export_seconds: float
    int8_file: str | None = None
    int8_max_abs_diff: float | None = None  # ORT int8 vs PyTorch, unit-norm embeddings
    int8_min_cosine: float | None = None
    weights_fingerprint: str | None = None  # `model_fingerprint` of the folder exported: a later save is told apart
    weights_sha256: str | None = None  # of its model.safetensors: what `PoolAttnOnnxModel` checks, alone (no poolattn)

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def read(cls, folder) -> "OnnxExport":
        return cls(**json.loads((Path(folder) / ONNX_FOLDER / EXPORT_RECORD).read_text()))


def require_onnx() -> None:
    """Raise before any work when the exporter's packages are missing."""
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if not _importable(name)]
    if missing:
        raise ImportError(
            f"ONNX export needs {', '.join(missing)}: pip install 'poolattn[onnx]' (onnx, onnxscript, onnxruntime)."
        )


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


class EmbeddingGraph(torch.nn.Module):
    """The traced function: the three masks in, unnormalised embeddings out."""

    def __init__(self, model: PoolAttnEmbeddingModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, pooling_mask):
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, pooling_mask=pooling_mask, normalize=False
        ).embeddings


def compare_encoders(reference, candidate, texts=CHECK_TEXTS, prompt: str = CHECK_PROMPT) -> tuple[float, list[str]]:
    """The max absolute difference of unit-norm `encode` outputs of two models sharing one tokenizer, over left and
    right padding, with and without `prompt`, batch size 1 and all texts at once; and the settings compared."""
    tokenizer = reference.get_tokenizer()
    original_side, worst, checks = tokenizer.padding_side, 0.0, []
    try:
        for side in ("right", "left"):
            tokenizer.padding_side = side
            for text_prompt in (None, prompt):
                for batch_size in (1, len(texts)):
                    kwargs = dict(prompt=text_prompt, batch_size=batch_size, normalize=True, convert_to_numpy=False)
                    difference = reference.encode(list(texts), **kwargs) - candidate.encode(list(texts), **kwargs)
                    worst = max(worst, difference.abs().max().item())
                    checks.append(f"{side} padding, {'prompt' if text_prompt else 'no prompt'}, batch {batch_size}")
    finally:
        tokenizer.padding_side = original_side
    return worst, checks


def export_onnx(
    model_folder,
    *,
    quantize: bool = False,
    tolerance: float = 1e-4,
    opset: int | None = None,
    num_threads: int | None = None,
) -> OnnxExport:
    """Export `model_folder` (a poolattn model folder) to `model_folder/onnx/` and check it; see the module docstring.

    Raises `OnnxExportMismatch` (nothing written) when ONNX Runtime differs from PyTorch by more than `tolerance`.
    """
    require_onnx()
    import onnxruntime

    folder = Path(model_folder)
    _check_request(folder, tolerance)
    model = PoolAttnEmbeddingModel.from_pretrained(folder, dtype=torch.float32).eval()
    model.check_attention()  # once, eagerly: the traced forward must not run it

    def save(staging: Path) -> None:
        started = time.perf_counter()
        program = trace_to_onnx(model, opset)
        drop_stack_traces(program)
        # optimize=False for the fp32 graph: the exporter's graph optimizer (onnxscript) doubled SmolLM2-135M v5's
        # export time (89 s vs 44 s) for no measured speed-up, since ONNX Runtime optimizes the graph itself when a
        # session loads it (256 STSBenchmark sentences: 3.85 / 3.59 s optimized vs 3.69 / 3.81 s not); onnxscript's
        # ORT fusions (RMSNorm, rotary, SDPA -> MultiHeadAttention) did not help either. int8 needs it (below).
        program.save(str(staging / "model.onnx"), external_data=True)
        seconds = time.perf_counter() - started
        max_abs_diff, checks = compare_encoders(model, runtime_model(staging / "model.onnx", model, num_threads))
        if not max_abs_diff <= tolerance:
            raise OnnxExportMismatch(
                f"ONNX Runtime differs from PyTorch by {max_abs_diff:.3g} (max absolute difference of unit-norm "
                f"embeddings) > tolerance {tolerance:g}; {folder / ONNX_FOLDER} was not written. Report it with your "
                f"torch ({torch.__version__}) and onnxruntime ({onnxruntime.__version__}) versions."
            )
        record = _export_record(folder, program, max_abs_diff, tolerance, checks, seconds)
        if quantize:
            add_int8(program, staging, model, record, num_threads)
        record.save(staging / EXPORT_RECORD)

    atomic_save(save, folder / ONNX_FOLDER)
    shutil.copy2(PACKAGE_DIR / RUNTIME_MODULE, folder / RUNTIME_MODULE)
    record = OnnxExport.read(folder)
    logger.info(
        "%s: ONNX export written (max difference from PyTorch %.2g)", folder / ONNX_FOLDER, record.max_abs_diff
    )
    return record


def _export_record(folder: Path, program, max_abs_diff: float, tolerance: float, checks, seconds: float) -> OnnxExport:
    """What an fp32 export measured, with the versions and the weights it was made from."""
    import onnxruntime

    return OnnxExport(
        folder=folder.resolve().name,
        file=ONNX_FILE,
        max_abs_diff=max_abs_diff,
        tolerance=tolerance,
        checks=checks,
        opset=_opset(program),
        torch_version=torch.__version__,
        onnxruntime_version=onnxruntime.__version__,
        export_seconds=round(seconds, 1),
        weights_fingerprint=model_fingerprint(folder),
        weights_sha256=weights_sha256(folder),
    )


def _check_request(folder: Path, tolerance) -> None:
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a model folder (no config.json); give a folder written by training "
            "(runs/NAME/model) or by save_pretrained."
        )
    if not is_poolattn_folder(folder):  # a backbone's config would load as a default (7B) poolattn config
        raise ValueError(
            f"{folder} is not a poolattn model (its config.json has no model_type 'poolattn'); give a folder written "
            "by training (runs/NAME/model) or by PoolAttnEmbeddingModel.save_pretrained."
        )
    if not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"{folder} has no {WEIGHTS_FILE}: copy the whole model folder, or export the model again."
        )
    if not isinstance(tolerance, (int, float)) or not tolerance > 0:
        raise ValueError(f"tolerance={tolerance!r}: give a positive number (default 1e-4).")
    if (folder / ONNX_FOLDER).exists() and not (folder / ONNX_FOLDER).is_dir():
        raise FileExistsError(
            f"{folder / ONNX_FOLDER} is a file; the export writes the folder {ONNX_FOLDER}/ there: move the file away."
        )


def trace_to_onnx(model: PoolAttnEmbeddingModel, opset: int | None):
    """The model's forward as an ONNX program (`torch.onnx.export(dynamo=True)`), batch and sequence dynamic."""
    tokenizer = model.get_tokenizer()
    features = tokenize_for_embedding(
        tokenizer, list(CHECK_TEXTS[:3]), prompt=CHECK_PROMPT, max_length=64, add_eos=model.config.add_eos
    )
    example = pad_features(features, pad_token_id=pad_token_id_for(tokenizer), padding_side="right")
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    registration_log = logging.getLogger(TORCH_REGISTRATION_LOGGER)
    registration_log.addFilter(_not_a_torchvision_note)  # torchvision's ops are not in any poolattn graph
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the same two dims on every input are intended (one batch, one sequence length); torch's own pytree
            # deprecation is not ours to fix
            warnings.filterwarnings("ignore", message="# The axis name: .* will not be used")
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
            return torch.onnx.export(
                EmbeddingGraph(model).eval(),  # a fresh wrapper starts in training mode
                tuple(example[name] for name in INPUT_NAMES),
                dynamo=True,
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_shapes={name: {0: batch, 1: sequence} for name in INPUT_NAMES},
                opset_version=opset,
                optimize=False,
                verbose=False,
            )
    finally:
        registration_log.removeFilter(_not_a_torchvision_note)


def _not_a_torchvision_note(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("torchvision is not installed")


def drop_stack_traces(program) -> None:
    """Remove the Python stack trace the exporter records on each node: it holds this machine's absolute paths (the
    installed packages' files), which a published graph must not carry; the node names and scopes stay."""
    import onnx_ir

    graphs = [program.model.graph, *(function.graph for function in program.model.functions.values())]
    for graph in graphs:
        for node in onnx_ir.traversal.RecursiveGraphIterator(graph):
            node.metadata_props.pop(STACK_TRACE_KEY, None)


def add_int8(program, staging: Path, model: PoolAttnEmbeddingModel, record: OnnxExport, num_threads) -> None:
    """Write the int8 graph beside the fp32 one and record its measured distance from PyTorch."""
    # The quantizer only quantizes MatMuls whose weight is an initializer; the unoptimized graph transposes
    # each weight first (479 of 559 MB stayed fp32, no speed-up), so the folded graph is quantized.
    program.optimize()
    program.save(str(staging / "folded.onnx"), external_data=True)
    quantize_int8(staging / "folded.onnx", staging / Path(ONNX_INT8_FILE).name)
    for leftover in staging.glob("folded.onnx*"):
        leftover.unlink()
    quantized = runtime_model(staging / Path(ONNX_INT8_FILE).name, model, num_threads)
    record.int8_file = ONNX_INT8_FILE
    record.int8_max_abs_diff, _ = compare_encoders(model, quantized)
    reference = model.encode(list(CHECK_TEXTS), normalize=True, convert_to_numpy=False)
    cosine = (reference * quantized.encode(list(CHECK_TEXTS), normalize=True, convert_to_numpy=False)).sum(-1)
    record.int8_min_cosine = cosine.min().item()


def runtime_model(path: Path, model: PoolAttnEmbeddingModel, num_threads: int | None = None) -> PoolAttnOnnxModel:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
    session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return PoolAttnOnnxModel(session, model.config, model.get_tokenizer())


def quantize_int8(source: Path, destination: Path) -> None:
    """ONNX Runtime dynamic quantization: int8 weights, activations quantized per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()  # the quantizer warns on the root logger for every tensor it leaves in fp32
    quieter = _BelowErrorFrom("onnxruntime")
    root.addFilter(quieter)
    try:
        quantize_dynamic(str(source), str(destination), weight_type=QuantType.QInt8, use_external_data_format=True)
    finally:
        root.removeFilter(quieter)


class _BelowErrorFrom(logging.Filter):
    """Drops records below ERROR logged from a package's files."""

    def __init__(self, package: str):
        super().__init__()
        self.package = package

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or f"/{self.package}/" not in record.pathname


def _opset(program) -> int:
    return next((entry.version for entry in program.model_proto.opset_import if entry.domain in ("", "ai.onnx")), 0)
