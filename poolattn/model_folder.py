"""A trained model folder as one typed record (`ExportedModel`: config, manifest, fingerprint of the weights), and the
checks that say whether a folder is a poolattn model and whether its weights read."""

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .configuration_poolattn import PoolAttnConfig
from .manifest import MANIFEST_FILE, TrainingManifest
from .records import ManifestError

CHECKPOINT_RECORD = "poolattn_checkpoint.json"  # what train.py writes into every checkpoint beside peft's files
# what stands for an exported model's weights in a copy of a study's records (`study.records`): their fingerprint and
# layer weights' size, so the copy's scores and report are found without the weights
WEIGHTS_RECORD = "weights_record.json"


def weights_record(folder) -> dict | None:
    """The record of a model folder whose weights were left out of a study's records copy, or None where the folder
    holds weights (restored weights are read, not the record)."""
    folder = Path(folder)
    if not (folder / WEIGHTS_RECORD).is_file() or any(folder.glob("*.safetensors")):
        return None
    try:
        return json.loads((folder / WEIGHTS_RECORD).read_text())
    except ValueError as error:
        raise ManifestError(
            f"{folder / WEIGHTS_RECORD} is damaged ({error}); copy the study's records again from the study folder "
            "that holds the weights (study.py --copy-records)."
        ) from None


def layer_weight_size(folder) -> float | None:
    """Mean |w| of an exported model's layer-weight matrix as it enters the head (`layer_weights_multiplier` x
    `pooler.layer_weights`), or None without one."""
    from safetensors import safe_open

    if (record := weights_record(folder)) is not None:
        return record["layer_weight_size"]
    config = json.loads((Path(folder) / "config.json").read_text())
    multiplier = config.get("layer_weights_multiplier", 1.0)
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                if name.endswith("pooler.layer_weights"):
                    return multiplier * float(handle.get_tensor(name).abs().mean())
    return None


def is_training_checkpoint(path) -> bool:
    """Whether `path` is a training checkpoint (peft's adapter and the head, no model config of its own): a folder
    that loaders would take for its bare backbone (`poolattn.load_checkpoint` reads it as the model)."""
    path = Path(path)
    return (path / CHECKPOINT_RECORD).is_file() or (
        (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()
    )


def is_poolattn_folder(path) -> bool:
    """Whether `path` is a local model folder whose config.json has `model_type: poolattn`."""
    config = Path(path) / "config.json"
    try:
        return config.is_file() and json.loads(config.read_text()).get("model_type") == "poolattn"
    except (OSError, json.JSONDecodeError):
        return False


def check_safetensors_file(path) -> None:
    """Raise `ManifestError` when a safetensors file is not exactly its header and the tensor bytes it declares: a
    truncated copy, or trailing bytes (a concatenation, an interrupted overwrite) that the loader would not notice."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        header_size = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        try:
            if not 0 < header_size <= size - 8:
                raise ValueError(f"header length {header_size}")
            header = json.loads(handle.read(header_size))
        except ValueError as error:
            raise ManifestError(
                f"{path} is not a readable safetensors file ({error}); export or download it again."
            ) from None
    end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
    expected = 8 + header_size + end
    if size != expected:
        what = "trailing bytes" if size > expected else "missing bytes (truncated)"
        raise ManifestError(
            f"{path}: {size - expected:+d} bytes against its header ({what}: {size} bytes on disk, "
            f"{expected} declared); the file is damaged, export or download it again."
        )


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def model_fingerprint(folder) -> str:
    """A revision string from what decides a folder's embeddings, so two models never share an mteb cache entry.

    Its config.json and model.safetensors (a poolattn export's whole model: the revisions of earlier exports are
    kept), then, by path and content, every other weight file anywhere in it (shards, an adapter, a module's) and,
    in a folder that is not a poolattn export, every other file but README.md and hidden ones (e.g. a
    sentence-transformers pooling module's config). A folder with none of these is refused: its scores could not be
    told apart. A folder whose weights were left out of a study's records copy gives the fingerprint they had."""
    folder = Path(folder)
    if (record := weights_record(folder)) is not None:
        return record["fingerprint"]
    digest, hashed = hashlib.sha256(), 0
    for name in ("config.json", "model.safetensors"):
        hashed += _hash_file(digest, folder / name)
    every_file = not is_poolattn_folder(folder)
    for path in sorted(item for item in folder.rglob("*") if item.is_file()):
        relative = path.relative_to(folder)
        hidden = any(part.startswith(".") for part in relative.parts)  # .git, .cache/huggingface
        if relative.as_posix() in ("config.json", "model.safetensors", "README.md") or hidden:
            continue
        if every_file or path.suffix in WEIGHT_SUFFIXES:
            digest.update(relative.as_posix().encode() + b"\0")
            hashed += _hash_file(digest, path)
    if not hashed:
        raise ManifestError(f"{folder}: no config.json, weights or other files to fingerprint; give a model folder.")
    if not every_file:
        digest.update(_changed_tokenizer(folder))
    return digest.hexdigest()[:16]


TOKENIZER_FILES = (  # a saved tokenizer's files (any of them; a `tokenizer*` file of custom code counts too)
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
)


def tokenizer_fingerprint(folder) -> str | None:
    """A hash of a folder's tokenizer files (`tokenizer*` and `TOKENIZER_FILES`, by name and content); None without
    any. Training records it in the manifest of every export (`TrainingManifest.tokenizer_fingerprint`)."""
    folder, digest = Path(folder), hashlib.sha256()
    paths = sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and (path.name.startswith("tokenizer") or path.name in TOKENIZER_FILES)
    )
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        _hash_file(digest, path)
    return digest.hexdigest()[:16] if paths else None


def _changed_tokenizer(folder: Path) -> bytes:
    """What a poolattn folder's tokenizer adds to its revision: nothing while its files are those its export recorded
    (the revision of an unchanged export is what it always was), their hash once they differ, and their hash in a
    folder without a readable manifest (`save_pretrained`). Exports written before the record (2026-12-07): nothing."""
    current = tokenizer_fingerprint(folder)
    if current is None:
        return b""
    try:
        record = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        record = {}
    record = record if isinstance(record, dict) else {}
    changed = record["tokenizer_fingerprint"] != current if "tokenizer_fingerprint" in record else not record
    return b"tokenizer\0" + current.encode() if changed else b""


def _hash_file(digest, path: Path) -> int:
    if not path.is_file():
        return 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return 1


def parameter_counts(folder) -> dict[str, int]:
    """Parameters from the safetensors headers (no weights are loaded): all, and the pooling head's."""
    from safetensors import safe_open

    counts = {"total": 0, "head": 0}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            for name in weights.keys():
                size = 1
                for dimension in weights.get_slice(name).get_shape():
                    size *= dimension
                counts["total"] += size
                counts["head"] += size if name.startswith("pooler.") else 0
    return counts


@dataclass
class ExportedModel:
    """A poolattn model folder (exported by training, or written with `save_pretrained`): config and manifest."""

    folder: Path
    config: PoolAttnConfig
    manifest: TrainingManifest | None

    @classmethod
    def read(cls, folder) -> "ExportedModel":
        folder = Path(folder)
        if not is_poolattn_folder(folder):
            raise ValueError(
                f"{folder} is not a poolattn model folder (no config.json with model_type 'poolattn'); "
                "give the folder training exported, e.g. outputs/smollm2-135m-v5/model."
            )
        for weights in sorted(folder.glob("*.safetensors")):
            check_safetensors_file(weights)
        return cls(folder, PoolAttnConfig.from_pretrained(folder), TrainingManifest.read(folder))

    @property
    def variant(self) -> int | str | None:
        return self.config.variant

    @property
    def backbone(self) -> str | None:
        return self.manifest.backbone if self.manifest else None

    @property
    def query_prompt(self) -> str:
        """The query prompt the model was trained with, or "" when it had none."""
        return self.manifest.data.query_prompt if self.manifest and self.manifest.data else ""

    @cached_property
    def parameters(self) -> dict[str, int]:
        return parameter_counts(self.folder)

    @cached_property
    def mteb_name(self) -> str:
        """The name evaluation records this model under: the manifest's, else `poolattn/<folder>` (model/'s parent)."""
        if self.manifest:
            return self.manifest.mteb_name
        path = self.folder.resolve()
        return f"poolattn/{path.parent.name if path.name == 'model' else path.name}"

    @cached_property
    def fingerprint(self) -> str:
        """The weights fingerprint evaluation uses as the mteb revision (hashed once: the weights are big)."""
        return model_fingerprint(self.folder)
