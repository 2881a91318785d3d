"""The typed parts of a training manifest (data, contrastive batch, settings, trainable parameters, export check,
stop), each read back with its declared types; a manifest that does not read is a `ManifestError` naming the field."""

import dataclasses
import typing
from dataclasses import dataclass, field

from .prompts import QUERY_PROMPT_FORMAT, instruction_prompt


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
    fingerprint: str | None = None  # the training files' content (`sources.fingerprint_files`): edited data differs

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
    lr_schedule_steps: int | None = None  # the schedule's planned length where it is not the run's own (a proxy)

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
            lr_schedule_steps=_optional_int(arguments.get("lr_schedule_steps")),
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


def _optional_int(value) -> int | None:
    return None if value in (None, "None") else int(value)


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
    exported_step: int | None = None  # whose weights were exported: the best checkpoint's (--load_best_model_at_end)
