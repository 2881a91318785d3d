"""What a repository folder may ship, checked before it is written: an allow-list of model files, the package's own
code, no local paths, and a fresh-process load that matches the card.

- **Allow-list** (`shipped_files`): the config, the weights (one file or shards with their index), the tokenizer's
  files, the training manifest, and the ONNX export's files (`onnx/`); anything else in the model folder (notes, a
  token, stray code) is left out and named.
- **The package's code** (`PACKAGE_CODE`): `configuration_poolattn.py` and `modeling_poolattn.py` are always the
  installed package's, never a copy from the folder (a folder whose copy differs is named).
- **No local paths** (`scrub_local_paths`): every absolute path of this machine found in the shipped JSON files (the
  backbone's folder, the training data, output folders) is replaced by its last component in every shipped text file
  and the card.
- **It loads as the card says** (`check_loads`): in a fresh process without poolattn, `AutoModel.from_pretrained`
  with the folder's own code loads every weight (no missing or unexpected key), the design is the manifest's, and
  `encode` gives finite unit-norm embeddings; an ONNX export is run again against PyTorch at its recorded tolerance.
"""

import fnmatch
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from ..model_folder import TOKENIZER_FILES

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the Hub pair and its twins
PACKAGE_CODE = ("configuration_poolattn.py", "modeling_poolattn.py")
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*.safetensors",
    "model.safetensors.index.json",
    *TOKENIZER_FILES,
    "chat_template.jinja",
    "training_manifest.json",
)
ONNX_FILES = ("model*.onnx", "model*.onnx.data", "model*.onnx_data", "export.json")
TEXT_SUFFIXES = (".json", ".md", ".txt", ".jinja")


class ShippingError(ValueError):
    """A folder that must not be published as it is; the message names the file and what to do."""


def shipped_files(model_folder: Path) -> tuple[list[Path], list[str]]:
    """(the files of `model_folder` to ship, relative to it; the names left out), by the allow-list."""
    shipped, left_out = [], []
    for path in sorted(model_folder.rglob("*")):
        relative = path.relative_to(model_folder)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        patterns = ONNX_FILES if relative.parts[0] == "onnx" and len(relative.parts) == 2 else MODEL_FILES
        if (
            len(relative.parts) <= 2
            and any(fnmatch.fnmatch(relative.name, pattern) for pattern in patterns)
            and (len(relative.parts) == 1 or relative.parts[0] == "onnx")
        ):
            shipped.append(relative)
        elif relative.name not in PACKAGE_CODE and relative.name not in (
            "modules.json",
            "sentence_bert_config.json",
            "config_sentence_transformers.json",
            "sentence_transformers_poolattn.py",
            "onnx_poolattn.py",
        ):
            left_out.append(str(relative))
    for required in ("config.json", "tokenizer_config.json"):
        if Path(required) not in shipped:
            raise ShippingError(
                f"{model_folder} has no {required}: not a complete model folder (a tokenizer and a "
                "config are part of every poolattn folder); export it again with train.py, or save "
                "the model with its tokenizer."
            )
    vocabulary = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
    if not any(path.name in vocabulary for path in shipped):
        raise ShippingError(
            f"{model_folder} has no tokenizer vocabulary ({', '.join(vocabulary)}): not a complete model folder; "
            "export it again with train.py, or save the model with its tokenizer."
        )
    if not any(path.name.endswith(".safetensors") for path in shipped):
        raise ShippingError(f"{model_folder} holds no safetensors weights; export it again.")
    return shipped, left_out


def differing_code(model_folder: Path) -> list[str]:
    """The package code files whose copy in `model_folder` differs from the installed package's."""
    return [
        name
        for name in PACKAGE_CODE
        if (model_folder / name).is_file() and (model_folder / name).read_bytes() != (PACKAGE_DIR / name).read_bytes()
    ]


RECORD_FILES = (
    "config.json",
    "training_manifest.json",
    "export.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
)  # where a run writes paths (a tokenizer's vocabulary is no record)


def is_local_path(value: str) -> bool:
    """A string that names a path on this machine: absolute, at least two levels deep, under an existing top folder.

    >>> is_local_path("/tmp/run/model"), is_local_path("/{"), is_local_path("/"), is_local_path("org/name")
    (True, False, False, False)
    """
    if not isinstance(value, str) or not os.path.isabs(value) or any(char in value for char in "\n{}<>|*?\"'"):
        return False
    parts = Path(value).parts
    return len(parts) >= 3 and Path(parts[0], parts[1]).is_dir()


def local_paths(folder: Path, extra: tuple = ()) -> list[str]:
    """This machine's absolute paths written in the record files of `folder` (and `extra`), longest first."""
    found = {str(path) for path in extra}

    def walk(value):
        if is_local_path(value):
            found.add(value.rstrip("/"))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for path in (item for item in folder.rglob("*.json") if item.name in RECORD_FILES):
        try:
            walk(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
    return sorted(found, key=len, reverse=True)


def scrub_local_paths(folder: Path, paths: list[str]) -> None:
    """Replace each path in `paths` by its last component in every text file of `folder`, as written and as JSON
    writes it (`/home/jos\\u00e9/run`: a path with characters outside ASCII, or a backslash, is escaped there)."""
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            text = path.read_text(encoding="utf-8")
            scrubbed = text
            for local in paths:
                if not is_local_path(local):
                    continue
                for written in dict.fromkeys(
                    (local, json.dumps(local)[1:-1], json.dumps(local, ensure_ascii=False)[1:-1])
                ):
                    name = Path(local).name if written == local else json.dumps(Path(local).name)[1:-1]
                    scrubbed = scrubbed.replace(written, name)
            if scrubbed != text:
                path.write_text(scrubbed, encoding="utf-8")


FRESH_LOAD = r"""
import json, sys
import numpy as np
sys.modules["poolattn"] = None  # as a user of the Hub repository loads it
from transformers import AutoModel
for folder, variant in json.loads(sys.argv[1]):
    model, info = AutoModel.from_pretrained(folder, trust_remote_code=True, output_loading_info=True)
    problems = {key: sorted(value) for key, value in info.items() if value and key != "error_msgs"}
    if problems:
        sys.exit(f"{folder}: weights do not match the config: {problems}")
    if variant is not None and model.config.variant != variant:
        sys.exit(f"{folder}: the config says variant {model.config.variant!r}, the training manifest {variant!r}")
    embeddings = model.encode(["a check of the published folder", "another text"])
    if not np.isfinite(embeddings).all() or not np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-3):
        sys.exit(f"{folder}: encode gave non-finite or non-unit embeddings")
"""


def check_loads(folders: list[Path], variants: list) -> None:
    """Raise `ShippingError` unless every folder loads in one fresh process as its card says (see the module
    docstring); ONNX exports are run again against PyTorch."""
    # absolute paths: the fresh process runs from "/", where a relative folder would read as a Hub repository id
    pairs = [[str(Path(folder).resolve()), variant] for folder, variant in zip(folders, variants)]
    result = subprocess.run(
        [sys.executable, "-c", FRESH_LOAD, json.dumps(pairs)], capture_output=True, text=True, cwd="/", timeout=1200
    )
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ShippingError(
            f"a repository folder does not load as its card says ({reason}); nothing was published. Load the model "
            "folder you gave with AutoModel.from_pretrained(folder, trust_remote_code=True) to see the whole error."
        )
    for folder in folders:
        if (Path(folder) / "onnx" / "model.onnx").is_file():
            check_onnx(Path(folder))


def check_onnx(folder: Path) -> None:
    """Run the folder's ONNX export again against PyTorch at the tolerance its `export.json` records."""
    from ..modeling_poolattn import PoolAttnEmbeddingModel
    from ..onnx_poolattn import PoolAttnOnnxModel
    from .onnx_export import OnnxExport, compare_encoders

    try:
        record = OnnxExport.read(folder)
        onnx_model = PoolAttnOnnxModel.from_pretrained(folder)
    except Exception as error:  # a truncated file surfaces as onnxruntime's or json's own error
        raise ShippingError(
            f"{folder / 'onnx'}: the ONNX export cannot be loaded ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); export it again with "
            "poolattn-export-onnx (or publish.py --onnx)."
        ) from None
    reference = PoolAttnEmbeddingModel.from_pretrained(folder).eval()
    onnx_model.tokenizer = reference.get_tokenizer()
    difference, _ = compare_encoders(reference, onnx_model)
    if not difference <= record.tolerance:
        raise ShippingError(
            f"{folder / 'onnx'}: ONNX Runtime differs from PyTorch by {difference:.3g} > the "
            f"recorded tolerance {record.tolerance:g}; export it again."
        )
