"""The exported model's record: the typed training manifest, the atomic export, and reading an exported folder back.

A training run ends in one folder (`export_model`): the merged model, its code, the tokenizer and
`training_manifest.json`, a `TrainingManifest`. Publishing, the model card and evaluation read that folder through
`ExportedModel`, never the manifest's keys by hand.

>>> manifest = TrainingManifest.from_dict({"schema_version": 1, "variant": 5, "backbone": "smollm2-135m",
...                                        "a_later_field": [1, 2]})
>>> manifest.mteb_name, manifest.extra
('poolattn/smollm2-135m-v5', {'a_later_field': [1, 2]})
>>> TrainingManifest.from_dict(manifest.to_dict()) == manifest  # unknown fields survive a rewrite
True

Schema versions: 0 is the manifest of poolattn 0.1.0 (no `schema_version`; the card's settings were read from the raw
`hyperparameters`), 1 adds `settings` (the typed recipe) and the GradCache chunk and gradient accumulation to
`contrastive_batch`. Older manifests are upgraded on read; newer ones are refused with what to do.
"""

import contextlib
import dataclasses
import hashlib
import json
import logging
import shutil
import typing
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .configuration_poolattn import PoolAttnConfig, variant_tag
from .files import atomic_save, write_json
from .prompts import QUERY_PROMPT_FORMAT, instruction_prompt, sentence_transformers_prompts

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
SENTENCE_TRANSFORMERS_MODULE = "sentence_transformers_poolattn.py"
ONNX_RUNTIME_MODULE = "onnx_poolattn.py"  # imported by the ST module for backend="onnx"

SCHEMA_VERSION = 1
MANIFEST_FILE = "training_manifest.json"
RECORDED_LIBRARIES = ("poolattn", "torch", "transformers", "peft", "accelerate", "datasets")
# Arguments that do not change what is trained (beyond the seed): left out of `recipe_fingerprint`.
RUN_ONLY_ARGUMENTS = frozenset(
    {
        "seed",
        "data_seed",
        "seeds",
        "variant",
        "model_name",
        "output_dir",
        "resume_from_checkpoint",
        "run_name",
        "report_to",
        "project",
        "disable_tqdm",
        "use_cpu",
        "local_rank",
        "ddp_timeout",
        "skip_memory_metrics",
        "export_check_texts",
        "per_device_eval_batch_size",
        "eval_batch_size",
        "push_to_hub",
        "dataloader_num_workers",
        "dataloader_persistent_workers",
        "dataloader_prefetch_factor",
        "dataloader_pin_memory",
        "dataloader_multiprocessing_context",
        "overwrite_output_dir",
    }
)
RUN_ONLY_PREFIXES = ("logging_", "log_", "save_", "hub_", "eval_", "do_", "trackio_")


def recipe_arguments(arguments: dict) -> dict:
    """The arguments of a run that change what is trained, beyond the seed (`RUN_ONLY_ARGUMENTS` left out).

    >>> recipe_arguments({"learning_rate": 1e-4, "seed": 42, "logging_steps": 5})
    {'learning_rate': 0.0001}
    """
    return {
        key: value
        for key, value in arguments.items()
        if key not in RUN_ONLY_ARGUMENTS and not key.startswith(RUN_ONLY_PREFIXES)
    }


class ManifestError(ValueError):
    """A training manifest that cannot be read; the message names the file and what to do."""


@dataclass(kw_only=True)
class Record:
    """A JSON object with typed fields; fields this version does not know are kept in `extra` and written back."""

    extra: dict = field(default_factory=dict, repr=False, compare=True)

    @classmethod
    def from_dict(cls, values: dict):
        if not isinstance(values, dict):
            raise ManifestError(f"{cls.__name__}: expected a JSON object, got {type(values).__name__}.")
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls) if f.name != "extra"}
        fields = {name: _typed(hints[name], value) for name, value in values.items() if name in known}
        extra = {name: value for name, value in values.items() if name not in known}
        try:
            return cls(**fields, extra=extra)
        except TypeError as error:  # a required field is missing
            raise ManifestError(f"{cls.__name__}: {error}.") from None

    def to_dict(self) -> dict:
        values = {}
        for item in dataclasses.fields(self):
            if item.name != "extra":
                value = getattr(self, item.name)
                values[item.name] = value.to_dict() if isinstance(value, Record) else value
        return {**values, **self.extra}


def _typed(hint, value):
    """`value` as the Record type `hint` names (also inside `X | None`), else unchanged."""
    for candidate in typing.get_args(hint) or (hint,):
        if isinstance(candidate, type) and issubclass(candidate, Record) and isinstance(value, dict):
            return candidate.from_dict(value)
    return value


@dataclass(kw_only=True)
class DataRecord(Record):
    """What the model was trained on."""

    source: str
    files: list[str] = field(default_factory=list)
    examples: int = 0
    skipped_rows: int = 0
    hard_negatives: bool = False
    query_instruction: str | None = None
    query_prompt_format: str = QUERY_PROMPT_FORMAT
    # each file (or Hub dataset) of the data: {"name", "examples", "negatives_per_query", "skipped"}
    sources: list[dict] = field(default_factory=list)
    batch_sampling: str | None = None  # "one_source_per_batch" or "mixed"
    negatives_per_query: int | None = None  # hard negatives per query in sources that have them
    streaming: bool = False  # read lazily through a shuffle buffer (`train.py --streaming`)

    @property
    def query_prompt(self) -> str:
        """The query prompt of the global instruction (`Instruct: ...\\nQuery: `), or "" without one."""
        return instruction_prompt(self.query_instruction) or ""


@dataclass(kw_only=True)
class ContrastiveBatch(Record):
    """The batch one loss call sees, across devices."""

    world_size: int
    queries_per_device: int
    queries_per_loss_call: int
    candidates_per_query: int
    hard_negatives: bool
    cross_device_negatives: bool
    gradcache_chunk_size: int = 0
    gradient_accumulation_steps: int = 1
    negatives_per_query: int | None = None  # hard negatives per query (None in records before it was kept)

    @classmethod
    def of_run(
        cls,
        *,
        per_device_batch: int,
        world_size: int,
        negatives_per_query: int,
        gather: bool,
        gradcache_chunk_size: int = 0,
        gradient_accumulation_steps: int = 1,
    ) -> "ContrastiveBatch":
        """The batch of a loss call when the source has `negatives_per_query` hard negatives per query (the most of
        any source: a source without hard negatives gives fewer candidates).

        >>> ContrastiveBatch.of_run(per_device_batch=8, world_size=2, negatives_per_query=1, gather=True).describe()
        '16 queries x 32 candidates (8 per device x 2 device(s); hard negatives: 1 per query; cross-device \
negatives: True; GradCache chunk: off; gradient accumulation: 1)'
        """
        documents_per_device = per_device_batch * (1 + negatives_per_query)
        return cls(
            world_size=world_size,
            queries_per_device=per_device_batch,
            queries_per_loss_call=per_device_batch * world_size,
            candidates_per_query=documents_per_device * (world_size if gather else 1),
            hard_negatives=negatives_per_query > 0,
            negatives_per_query=negatives_per_query,
            cross_device_negatives=gather and world_size > 1,
            gradcache_chunk_size=gradcache_chunk_size,
            gradient_accumulation_steps=gradient_accumulation_steps,
        )

    def describe(self) -> str:
        negatives = (
            f"{self.negatives_per_query} per query" if self.negatives_per_query is not None else self.hard_negatives
        )
        return (
            f"{self.queries_per_loss_call} queries x {self.candidates_per_query} candidates "
            f"({self.queries_per_device} per device x {self.world_size} device(s); hard negatives: "
            f"{negatives}; cross-device negatives: {self.cross_device_negatives}; GradCache chunk: "
            f"{self.gradcache_chunk_size or 'off'}; gradient accumulation: {self.gradient_accumulation_steps})"
        )


@dataclass(kw_only=True)
class TrainingSettings(Record):
    """The recipe as a reader of the card wants it; every argument as given is in
    `TrainingManifest.hyperparameters`."""

    learning_rate: float
    lr_scheduler_type: str
    warmup_steps: int
    optimizer: str
    temperature: float
    query_max_length: int
    document_max_length: int
    precision: str  # "bf16 mixed", "fp16 mixed", or the weights' dtype
    full_finetune: bool = False
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    lora_target_modules: str | None = None
    head_learning_rate: float | None = None  # the pooling head's own rate; None: `learning_rate` for it too

    @classmethod
    def from_arguments(cls, arguments: dict) -> "TrainingSettings":
        """From a run's flat arguments (`TrainingManifest.hyperparameters`)."""
        precision = (
            "bf16 mixed"
            if arguments.get("bf16")
            else "fp16 mixed"
            if arguments.get("fp16")
            else arguments.get("model_dtype", "float32")
        )
        full = bool(arguments.get("full_finetune"))
        return cls(
            learning_rate=arguments["learning_rate"],
            lr_scheduler_type=str(arguments["lr_scheduler_type"]),
            warmup_steps=arguments.get("warmup_steps", 0),
            optimizer=str(arguments.get("optim", "adamw_torch")),
            temperature=arguments["temperature"],
            query_max_length=arguments["query_max_length"],
            document_max_length=arguments["document_max_length"],
            precision=precision,
            full_finetune=full,
            head_learning_rate=_optional_float(arguments.get("head_learning_rate")),
            **(
                {}
                if full
                else {key: arguments[key] for key in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")}
            ),
        )

    def describe_rates(self) -> str:
        """
        >>> TrainingSettings(learning_rate=1e-4, head_learning_rate=1e-3, lr_scheduler_type="linear", warmup_steps=6,
        ...                  optimizer="adamw_torch", temperature=0.05, query_max_length=128,
        ...                  document_max_length=128, precision="float32").describe_rates()
        'lr 0.0001 (pooling head 0.001)'
        """
        head = f" (pooling head {self.head_learning_rate:g})" if self.head_learning_rate is not None else ""
        return f"lr {self.learning_rate:g}{head}"

    def describe_tuning(self) -> str:
        if self.full_finetune:
            return "full fine-tuning of every weight"
        return (
            f"LoRA r={self.lora_r}, alpha={self.lora_alpha}, dropout={self.lora_dropout} on "
            f"{self.lora_target_modules}, merged into the weights; the head trained fully"
        )


def _optional_float(value) -> float | None:
    """A float argument as the Trainer's sanitized arguments record it (None becomes the string "None")."""
    return None if value in (None, "None") else float(value)


def head_parameter(name: str) -> bool:
    """Whether a parameter (by its name in a bare or peft-wrapped model) belongs to the pooling head: the latents,
    attention and layer weights that start from scratch, as opposed to the backbone and its adapter.

    >>> head_parameter("base_model.model.pooler.modules_to_save.default.latents"), head_parameter("model.embed_tokens")
    (True, False)
    """
    return "pooler." in name


@dataclass(kw_only=True)
class TrainableParameters(Record):
    lora: int = 0
    head: int = 0
    backbone: int = 0

    @classmethod
    def of(cls, model) -> "TrainableParameters":
        """Trainable parameters of `model` (bare or peft-wrapped) split into LoRA, pooling head and the rest."""
        counts = cls()
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                kind = "lora" if "lora_" in name else "head" if head_parameter(name) else "backbone"
                setattr(counts, kind, getattr(counts, kind) + parameter.numel())
        return counts

    def describe(self) -> str:
        return f"LoRA {self.lora:,}, head {self.head:,}, backbone {self.backbone:,}"


@dataclass(kw_only=True)
class ExportCheck(Record):
    """Merged vs adapter embeddings, compared before the export was written."""

    texts: int
    max_abs_difference: float
    tolerance: float


@dataclass(kw_only=True)
class StopRecord(Record):
    """Why training ended where it did: `reason` is "plateau" (the rule in `rule`), "max_steps" (the cap),
    "early_stopping" (the Trainer's) or "end_of_data" (the epochs asked for)."""

    reason: str
    step: int
    cap: int | None = None  # --max_steps
    rule: str | None = None  # the plateau rule as stated
    best_step: int | None = None  # the evaluation with the lowest held-out loss
    best_eval_loss: float | None = None


@dataclass(kw_only=True)
class TrainingManifest(Record):
    """`training_manifest.json`: what ran to produce an exported model."""

    schema_version: int = SCHEMA_VERSION
    variant: int | str | None = None  # a paper variant 1-5 or a baseline design's name
    backbone: str
    model_name: str | None = None  # ORG/NAME the model is reported under (`train.py --model_name`)
    seed: int | None = None
    data: DataRecord | None = None
    settings: TrainingSettings | None = None
    contrastive_batch: ContrastiveBatch | None = None
    trainable_parameters: TrainableParameters | None = None
    global_steps: int | None = None
    stop: StopRecord | None = None  # why training ended at `global_steps`
    train_runtime_s: float | None = None
    loss_history: list = field(default_factory=list)  # [step, loss] pairs
    eval_history: list = field(default_factory=list)  # [step, eval_loss, eval_recall_at_1] on held-out data
    libraries: dict[str, str] = field(default_factory=dict)
    poolattn_config: dict = field(default_factory=dict)  # the config's difference from the defaults
    hyperparameters: dict = field(default_factory=dict)  # every argument of the run, as given
    export_check: ExportCheck | None = None

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingManifest":
        if not isinstance(values, dict):
            raise ManifestError(f"a training manifest is a JSON object, got {type(values).__name__}.")
        version = values.get("schema_version", 0)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ManifestError(
                f"schema_version {version!r} is newer than this poolattn reads (up to "
                f"{SCHEMA_VERSION}); upgrade poolattn to read this model's record."
            )
        return super().from_dict(_upgrade_from_v0(values) if version == 0 else values)

    def write(self, folder) -> Path:
        path = Path(folder) / MANIFEST_FILE
        write_json(path, self.to_dict(), default=str)
        return path

    @classmethod
    def read(cls, folder) -> "TrainingManifest | None":
        """The manifest of an exported folder, or None when it has none (a model saved with `save_pretrained`)."""
        path = Path(folder) / MANIFEST_FILE
        if not path.is_file():
            return None
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, ManifestError) as error:
            raise ManifestError(f"{path}: {error}") from None

    @property
    def mteb_name(self) -> str:
        """The name results are recorded under: `model_name`, else `poolattn/<backbone>-v<variant>`."""
        return self.model_name or f"poolattn/{Path(self.backbone).name}-{variant_tag(self.variant)}"

    @property
    def losses(self) -> list[float]:
        return [loss for _, loss in self.loss_history]

    def recipe_fingerprint(self) -> str:
        """A hash of what was trained and how, leaving out the seed and where and how the run was logged and saved:
        the runs of one recipe with different seeds (replicates) share it.

        >>> one = TrainingManifest(variant=5, backbone="b", seed=42, hyperparameters={"learning_rate": 1e-4,
        ...                        "seed": 42, "output_dir": "out/seed-42"})
        >>> other = dataclasses.replace(one, seed=43, hyperparameters={**one.hyperparameters, "seed": 43,
        ...                             "output_dir": "out/seed-43"})
        >>> one.recipe_fingerprint() == other.recipe_fingerprint()
        True
        >>> faster = dataclasses.replace(one, hyperparameters={"learning_rate": 2e-4})
        >>> one.recipe_fingerprint() == faster.recipe_fingerprint()
        False
        """
        recipe = recipe_arguments(self.hyperparameters)
        text = json.dumps(
            {
                "variant": self.variant,
                "backbone": self.backbone,
                "poolattn_config": self.poolattn_config,
                "hyperparameters": recipe,
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _upgrade_from_v0(values: dict) -> dict:
    """A poolattn 0.1.0 manifest -> schema 1: the typed settings and the full contrastive batch from the arguments."""
    arguments = values.get("hyperparameters", {})
    upgraded = {**values, "schema_version": SCHEMA_VERSION}
    if arguments and "settings" not in values:
        upgraded["settings"] = TrainingSettings.from_arguments(arguments).to_dict()
    if isinstance(values.get("contrastive_batch"), dict):
        upgraded["contrastive_batch"] = {
            "gradcache_chunk_size": arguments.get("gradcache_chunk_size") or 0,
            "gradient_accumulation_steps": arguments.get("gradient_accumulation_steps", 1),
            **values["contrastive_batch"],
        }
    return upgraded


def library_versions() -> dict[str, str]:
    import importlib.metadata

    versions = {}
    for name in RECORDED_LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


# ---------------------------------------------------------------------------------------------------------------------
# Reading an exported folder back
# ---------------------------------------------------------------------------------------------------------------------


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


def model_fingerprint(folder) -> str:
    """A revision string from the weights and config, so two models never share an mteb cache entry."""
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        path = Path(folder) / name
        if path.is_file():
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


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


# ---------------------------------------------------------------------------------------------------------------------
# Writing it: the export
# ---------------------------------------------------------------------------------------------------------------------


def write_sentence_transformers_files(folder: Path, *, max_length: int, query_prompt: str) -> None:
    """The sentence-transformers files of a poolattn folder: modules.json (our input module, no Pooling: the model
    pools itself), sentence_bert_config.json, config_sentence_transformers.json (the query prompt the model was
    trained with), and the module's code, so `SentenceTransformer(folder, trust_remote_code=True)` equals `encode`."""
    for module_file in (SENTENCE_TRANSFORMERS_MODULE, ONNX_RUNTIME_MODULE):
        shutil.copy2(PACKAGE_DIR / module_file, folder / module_file)
    module = SENTENCE_TRANSFORMERS_MODULE.removesuffix(".py") + ".PoolAttnTransformer"
    files = {
        "modules.json": [{"idx": 0, "name": "0", "path": "", "type": module}],
        "sentence_bert_config.json": {
            "transformer_task": "feature-extraction",
            "modality_config": {"text": {"method": "forward", "method_output_name": "embeddings"}},
            "module_output_name": "sentence_embedding",
            "max_seq_length": max_length,
        },
        "config_sentence_transformers.json": {
            "prompts": sentence_transformers_prompts(query_prompt),
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    }
    for name, content in files.items():
        write_json(folder / name, content)


def export_model(
    model,
    tokenizer,
    destination: Path,
    *,
    check_texts: list[str],
    manifest: TrainingManifest,
    tolerance: float | None = None,
) -> Path:
    """Merge LoRA into the backbone, check merged vs adapter embeddings, and save one Hub-loadable folder atomically.

    `model` is a `PoolAttnEmbeddingModel`, bare (full fine-tuning) or wrapped by peft. Raises `RuntimeError` when
    merged and adapter embeddings differ by more than `tolerance` (default 1e-4 in fp32, 2e-2 in 16-bit).
    """
    import torch

    with torch.no_grad():
        base = model.get_base_model() if hasattr(model, "merge_and_unload") else model
        base.tokenizer = tokenizer
        before = base.encode(check_texts, batch_size=len(check_texts), convert_to_numpy=False)
        merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        after = merged.encode(check_texts, batch_size=len(check_texts), convert_to_numpy=False)
    difference = (after - before).abs().max().item()
    if tolerance is None:
        tolerance = 1e-4 if merged.dtype == torch.float32 else 2e-2
    if not difference <= tolerance:
        raise RuntimeError(
            f"Merged and adapter embeddings differ by {difference:.3g} > {tolerance:.3g} on {len(check_texts)} texts; "
            "the export was not written. Check the LoRA config (e.g. unsupported layers) or raise the tolerance."
        )
    manifest = dataclasses.replace(
        manifest, export_check=ExportCheck(texts=len(check_texts), max_abs_difference=difference, tolerance=tolerance)
    )

    def save(folder: Path):
        merged.save_pretrained(folder)
        manifest.write(folder)
        # every route reads the folder right: SentenceTransformer(folder, trust_remote_code=True) runs the head
        query_prompt = manifest.data.query_prompt if manifest.data else ""
        write_sentence_transformers_files(folder, max_length=merged.config.max_length, query_prompt=query_prompt)

    logger.info("merged vs adapter embeddings: max |diff| %.3g (tolerance %.3g)", difference, tolerance)
    return atomic_save(save, destination)
