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
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .configuration_poolattn import variant_tag
from .files import write_json
from .records import (
    ContrastiveBatch,
    DataRecord,
    ExportCheck,
    ManifestError,
    Record,
    StopRecord,
    TrainableParameters,
    TrainingSettings,
)

logger = logging.getLogger(__name__)


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
TRAINED_DESPITE_PREFIX = frozenset({"eval_fraction"})  # the rows held out are rows not trained on


def recipe_arguments(arguments: dict) -> dict:
    """The arguments of a run that change what is trained, beyond the seed (`RUN_ONLY_ARGUMENTS` left out).

    >>> recipe_arguments({"learning_rate": 1e-4, "seed": 42, "logging_steps": 5})
    {'learning_rate': 0.0001}
    """
    return {
        key: value
        for key, value in arguments.items()
        if key not in RUN_ONLY_ARGUMENTS and (key in TRAINED_DESPITE_PREFIX or not key.startswith(RUN_ONLY_PREFIXES))
    }


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
    tokenizer_fingerprint: str | None = None  # the exported tokenizer files (`model_folder.tokenizer_fingerprint`)

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
        the runs of one recipe with different seeds (replicates) share it. What was trained includes the training
        data's content (`data.fingerprint`, where recorded): runs on edited data are not replicates of each other.

        >>> one = TrainingManifest(variant=5, backbone="b", seed=42, hyperparameters={"learning_rate": 1e-4,
        ...                        "seed": 42, "output_dir": "out/seed-42"})
        >>> import dataclasses
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
                **({"data": self.data.fingerprint} if self.data and self.data.fingerprint else {}),
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
