"""What mteb scores: a poolattn folder (loaded with the package's own classes), a Hub id or any sentence-transformers
model, as the encoder `mteb.evaluate` calls."""

import json
import logging
from pathlib import Path

from ..model_folder import (
    WEIGHTS_RECORD,
    ExportedModel,
    is_poolattn_folder,
    is_training_checkpoint,
    model_fingerprint,
    weights_record,
)
from .requests import EvaluationError, evaluation_revision

logger = logging.getLogger(__name__)

WEIGHTS_FILES = ("*.safetensors", "pytorch_model*.bin")  # what a poolattn folder's weights are saved as


def hub_poolattn_snapshot(model: str) -> str | None:
    """The local snapshot of a Hub repository published by poolattn (`publish.py`), else None."""
    if Path(model).exists() or model.count("/") != 1:
        return None
    import json

    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        config = json.loads(Path(hf_hub_download(model, "config.json")).read_text())
    except Exception:  # not reachable or no config: let sentence-transformers try (and explain) below
        return None
    return snapshot_download(model) if config.get("model_type") == "poolattn" else None


def check_truncate_dim(model: str, truncate_dim: int) -> None:
    """Raise `EvaluationError` unless `model` is a poolattn folder trained for embeddings of `truncate_dim` dims
    (its `config.json` `matryoshka_dims`); reads the config only."""
    folder = model if is_poolattn_folder(model) else hub_poolattn_snapshot(model)
    if not folder:
        raise EvaluationError(
            f"--truncate-dim scores a poolattn model at a size it was trained for; {model} is not a poolattn model."
        )
    config = json.loads((Path(folder) / "config.json").read_text())
    trained = config.get("matryoshka_dims") or []
    if truncate_dim not in trained:
        sizes = ", ".join(map(str, trained)) if trained else "none (trained at its full size only)"
        raise EvaluationError(
            f"--truncate-dim {truncate_dim}: {model} was trained for the smaller sizes {sizes}. "
            "Give one of them, or train with --matryoshka_dims."
        )


def check_model_source(model: str) -> None:
    """Raise `EvaluationError` unless `model` can be a model: an existing folder with a `config.json` or a
    sentence-transformers `modules.json` (not a training checkpoint), or a Hub id (ORG/NAME or a bare name; offline,
    one in the local cache). Reads no weights: `evaluate_models` checks every model so before scoring the first."""
    path = Path(model)
    if path.exists():
        if not path.is_dir():
            raise EvaluationError(f"--model {model} is a file; give a model folder or a Hub id.")
        if is_training_checkpoint(path):
            raise EvaluationError(_checkpoint_message(model))
        if weights_record(path) is not None:
            raise EvaluationError(
                f"--model {model} was copied without its weights (its {WEIGHTS_RECORD}, `study.py --copy-records`), "
                "so it cannot be scored; its scores are in the study's results/ beside it. Put its weights back "
                "(from the study folder the records came from) to score it."
            )
        if not any((path / name).is_file() for name in ("config.json", "modules.json")):
            raise EvaluationError(
                f"--model {model}: a folder without config.json or modules.json, so no model; give an exported "
                "model/ folder, a sentence-transformers folder or a Hub id."
            )
        if is_poolattn_folder(path) and not any(any(path.glob(pattern)) for pattern in WEIGHTS_FILES):
            raise EvaluationError(
                f"--model {model}: a poolattn folder without its weights (no {' or '.join(WEIGHTS_FILES)}); "
                "copy the whole exported model/ folder, or export it again."
            )
        return
    if model.startswith(("/", ".", "~")) or model.count("/") > 1 or not model.strip():
        raise EvaluationError(f"--model {model}: no such folder (and not a Hub id ORG/NAME); check the path.")
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    if constants.HF_HUB_OFFLINE:  # a bare name is sentence-transformers' own (`all-MiniLM-L6-v2`)
        repositories = [model] if "/" in model else [model, f"sentence-transformers/{model}"]
        names = ("config.json", "modules.json")
        try:
            cached = [try_to_load_from_cache(repo, name) for repo in repositories for name in names]
        except HFValidationError:  # `my model`, `outputs..x`: no repository id either
            cached = []
        if not any(isinstance(item, str) for item in cached):
            raise EvaluationError(
                f"--model {model}: no such folder, and not a Hub repository in the local cache (HF_HUB_OFFLINE is "
                "set); check the path, or download the model first."
            )


def _checkpoint_message(model: str) -> str:
    return (
        f"--model {model} is a training checkpoint (an adapter and the pooling head): loaders would score its "
        "bare backbone with mean pooling. Score the run's exported model/ folder, or export this step first: "
        f"poolattn.load_checkpoint({str(model)!r}).save_pretrained(FOLDER)."
    )


def load_encoder(
    model: str,
    *,
    batch_size: int,
    max_length: int | None,
    instructions: bool,
    onnx_file: str | None = None,
    truncate_dim: int | None = None,
    budget: int | None = None,
    trust_remote_code: bool = False,
):
    """A poolattn folder or Hub repository -> PoolAttnEncoder (its ONNX export `onnx_file` in ONNX Runtime, when
    given; embeddings cut to `truncate_dim`); else a sentence-transformers model (folder, Hub id). Its `ModelMeta`
    revision is the weights' fingerprint with these settings' suffixes (`evaluation_revision`)."""

    encoder = _encoder_of(
        model,
        batch_size=batch_size,
        max_length=max_length,
        instructions=instructions,
        onnx_file=onnx_file,
        truncate_dim=truncate_dim,
        trust_remote_code=trust_remote_code,
    )
    revision = evaluation_revision(
        encoder.mteb_model_meta.revision,
        budget=budget,
        instructions=instructions,
        onnx_file=onnx_file,
        truncate_dim=truncate_dim,
        max_length=max_length,
    )
    encoder.mteb_model_meta = encoder.mteb_model_meta.model_copy(update={"revision": revision})
    return encoder


def _encoder_of(
    model: str,
    *,
    batch_size: int,
    max_length: int | None,
    instructions: bool,
    onnx_file: str | None,
    truncate_dim: int | None,
    trust_remote_code: bool = False,
):
    from .mteb_encoder import TASK_INSTRUCTIONS, PoolAttnEncoder

    folder = model if is_poolattn_folder(model) else hub_poolattn_snapshot(model)
    if folder:
        exported = ExportedModel.read(folder)
        # A Hub snapshot is named by its training manifest like a local folder, else by its repository id.
        name = model if folder != model and exported.manifest is None else exported.mteb_name
        encoder = PoolAttnEncoder(
            folder,
            name=name,
            revision=exported.fingerprint,
            batch_size=batch_size,
            max_length=max_length,
            instructions=TASK_INSTRUCTIONS if instructions else {},
            onnx_file=onnx_file,
            truncate_dim=truncate_dim,
            trust_remote_code=trust_remote_code,
        )
        check_unchanged_while_loading(model, folder, exported.fingerprint)
        return encoder
    if onnx_file or truncate_dim:
        flag = (
            "--onnx scores a poolattn model's ONNX export"
            if onnx_file
            else "--truncate-dim scores a poolattn model at a size it was trained for"
        )
        raise EvaluationError(
            f"{flag}; {model} is not a poolattn model. Score sentence-transformers models without it."
        )
    return _sentence_transformers_encoder(
        model, max_length=max_length, trust_remote_code=trust_remote_code, instructions=instructions
    )


def check_unchanged_while_loading(model: str, folder, fingerprint: str) -> None:
    """Raise `EvaluationError` when `folder`'s fingerprint is no longer `fingerprint`, the one taken before its model
    loaded: another run replaced it meanwhile (an export into the same folder), so the weights in memory may be the
    new ones while the scores would be stored under the old revision (or a mix of old and new files loaded)."""
    now = model_fingerprint(folder)
    if now != fingerprint:
        raise EvaluationError(
            f"--model {model} changed while it was being loaded (fingerprint {fingerprint} before, {now} after): "
            "another run is writing to it (an export into the same folder?). Nothing was scored; score it again "
            "once that run has finished."
        )


def _sentence_transformers_encoder(
    model: str, *, max_length: int | None, trust_remote_code: bool, instructions: bool = True
):
    """mteb's wrapper of a sentence-transformers model (a folder or Hub id), named and fingerprinted like ours;
    without `instructions`, the prompts its folder sets (`config_sentence_transformers.json`) are not given."""
    import mteb
    from sentence_transformers import SentenceTransformer

    folder = Path(model)
    if (folder / "config.json").is_file():
        try:
            json.loads((folder / "config.json").read_text())
        except (ValueError, UnicodeDecodeError):
            raise EvaluationError(
                f"--model {model}: its config.json is damaged (not valid JSON); export or download the model again."
            ) from None
    if is_training_checkpoint(folder):
        raise EvaluationError(_checkpoint_message(model))
    if (folder / "config.json").is_file() and not (folder / "modules.json").is_file():
        logger.warning(
            "%s is neither an exported poolattn model nor a sentence-transformers folder: "
            "sentence-transformers wraps the bare backbone with mean pooling (no poolattn head, EOS or "
            "instructions), so these are that model's scores. Give the `model/` folder training exported "
            "to score a poolattn design.",
            model,
        )
    before = model_fingerprint(model) if folder.exists() else None
    try:
        transformer = SentenceTransformer(model, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise EvaluationError(
            f"--model {model}: not a poolattn folder, and sentence-transformers could not load "
            f"it as a folder or Hub id ({str(error).splitlines()[0]})."
        ) from None
    if max_length:
        transformer.max_seq_length = max_length
    if not instructions:  # mteb's wrapper gives the folder's prompts by task name and type: none, as for ours
        transformer.prompts, transformer.default_prompt_name = {}, None
    encoder = mteb.SentenceTransformerEncoderWrapper(transformer)
    name = model if "/" in model and not Path(model).exists() else f"local/{Path(model).resolve().name}"
    if before:
        check_unchanged_while_loading(model, folder, before)
    revision = before or encoder.mteb_model_meta.revision
    encoder.mteb_model_meta = encoder.mteb_model_meta.model_copy(update={"name": name, "revision": revision})
    return encoder


def get_model(
    model: str,
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    instructions: bool = True,
    onnx_file: str | None = None,
    truncate_dim: int | None = None,
    trust_remote_code: bool = False,
):
    """`mteb.get_model` for poolattn models: a folder or Hub repository -> the encoder `evaluate.py run` scores, with
    its `ModelMeta` (the training manifest's name, the weights' fingerprint as revision, the settings' suffixes).

    mteb's own `get_model(name)` looks the name up in its registry or on the Hub and cannot load a local folder
    (mteb 2.x: "No model implementation is available for this model"), so `mteb.evaluate(get_model(folder), tasks)`
    is the one-line route; sentence-transformers models come back wrapped as mteb wraps them.

    A poolattn model encodes in batches of `batch_size` even though `mteb.evaluate` fills `encode_kwargs` with
    batch_size 32; an `encode_kwargs={"batch_size": N}` the caller gives wins for any N but 32 (mteb's default,
    which `encode` cannot tell from a 32 given on purpose).
    """
    if truncate_dim is not None:
        check_truncate_dim(model, truncate_dim)  # before the weights load
    return load_encoder(
        model,
        batch_size=batch_size,
        max_length=max_length,
        instructions=instructions,
        onnx_file=onnx_file,
        truncate_dim=truncate_dim,
        trust_remote_code=trust_remote_code,
    )
