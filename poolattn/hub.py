"""Publish trained poolattn models to the Hugging Face Hub: one repository folder per model, with a generated card.

>>> repository_id("ORG/poolattn-smollm2", variant=5)
'ORG/poolattn-smollm2-v5'

A repository folder (`write_repository_folder`) holds exactly what is uploaded:

- the exported model: `config.json` (with `auto_map`), `configuration_poolattn.py`, `modeling_poolattn.py`,
  `model.safetensors`, the tokenizer files and `training_manifest.json`;
- the sentence-transformers files: `modules.json` naming `PoolAttnTransformer` (`sentence_transformers_poolattn.py`),
  `sentence_bert_config.json` and `config_sentence_transformers.json` (the query prompt the model was trained with),
  so `SentenceTransformer(repo, trust_remote_code=True)` runs the pooling head instead of a silent mean pool;
- `README.md`, a model card generated from the training manifest, the config and, when `evaluate.py run` results
  exist, the MTEB scores (`model-index`) and Wilcoxon comparisons against the other variants' results.

The folder is written through a temp folder and a rename; `push_folder` uploads it with `create_repo` +
`upload_folder`, and on any failure raises `HubPushError` naming the kept folder, so nothing is lost.
"""

import json
import logging
import re
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .configuration_poolattn import PoolAttnConfig

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
SENTENCE_TRANSFORMERS_MODULE = "sentence_transformers_poolattn.py"
PAPER = "Tang & Yang, *Pooling And Attention: What Are Effective Designs For LLM-Based Embedding Models?* (arXiv 2409.02727)"
PAPER_URL = "https://arxiv.org/abs/2409.02727"
PAPER_BIBTEX = """@article{tang2024pooling,
  title   = {Pooling And Attention: What Are Effective Designs For LLM-Based Embedding Models?},
  author  = {Tang, Yixuan and Yang, Yi},
  journal = {arXiv preprint arXiv:2409.02727},
  year    = {2024}
}"""
VARIANT_NAMES = {
    1: "EOS-last token pooling, causal attention",
    2: "last-layer trainable pooling, causal attention",
    3: "multi-layers trainable pooling, causal attention",
    4: "last-layer trainable pooling, bidirectional attention",
    5: "multi-layers trainable pooling, bidirectional attention",
}
POOLING_TAGS = {"eos": "eos-pooling", "mean": "mean-pooling", "latent": "trainable-pooling",
                "multi_layer_latent": "multi-layer-trainable-pooling"}


class HubPushError(RuntimeError):
    """An upload that did not happen; the message says why, what to do, and where the folder was kept."""


def repository_id(hub_model_id: str, *, variant: int | None) -> str:
    """`ORG/NAME` -> `ORG/NAME-v<variant>`: one repository per paper variant (unchanged for custom configs)."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", hub_model_id or ""):
        raise ValueError(f"hub_model_id={hub_model_id!r} is not a Hub repository id; give one as ORG/NAME.")
    return f"{hub_model_id}-v{variant}" if variant is not None else hub_model_id


# ----------------------------------------------------------------------------------------------------------------------
# What the model folder says about itself: config, manifest, parameter counts.
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class ExportedModel:
    """A folder written by `train.py` (or `save_pretrained`): its config, training manifest and parameter counts."""

    folder: Path
    config: PoolAttnConfig
    manifest: dict | None
    parameters: dict[str, int]  # "total", "head"

    @classmethod
    def read(cls, folder) -> "ExportedModel":
        folder = Path(folder)
        config_file = folder / "config.json"
        if not config_file.is_file() or json.loads(config_file.read_text()).get("model_type") != "poolattn":
            raise ValueError(f"{folder} is not a poolattn model folder (no config.json with model_type 'poolattn'); "
                             "give the folder train.py exported, e.g. outputs/smollm2-135m-v5/model.")
        manifest_file = folder / "training_manifest.json"
        manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else None
        return cls(folder, PoolAttnConfig.from_pretrained(folder), manifest, _parameter_counts(folder))

    @property
    def variant(self) -> int | None:
        return self.config.variant

    @property
    def backbone(self) -> str | None:
        return self.manifest["backbone"] if self.manifest else None

    @cached_property
    def mteb_name(self) -> str:
        """The name `evaluate.py run` records this model under."""
        from .mteb_encoder import default_model_name

        return default_model_name(str(self.folder))

    @cached_property
    def fingerprint(self) -> str:
        """The weights fingerprint `evaluate.py run` uses as the mteb revision (hashed once: the weights are big)."""
        from .mteb_encoder import model_fingerprint

        return model_fingerprint(str(self.folder))


def _parameter_counts(folder: Path) -> dict[str, int]:
    """Parameters from the safetensors headers (no weights are loaded): all, and the pooling head's."""
    from safetensors import safe_open

    counts = {"total": 0, "head": 0}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            for name in weights.keys():
                size = 1
                for dimension in weights.get_slice(name).get_shape():
                    size *= dimension
                counts["total"] += size
                counts["head"] += size if name.startswith("pooler.") else 0
    return counts


def hub_id_or_none(name: str | None) -> str | None:
    """`name` when it reads as a Hub id (`ORG/NAME`, not an existing local path), else None."""
    if name and re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not Path(name).exists():
        return name
    return None


def base_model_id(backbone: str | None) -> str | None:
    """The Hub id of the backbone: a named default's id, a Hub id as given, None for a local folder."""
    from .backbones import BACKBONES

    return BACKBONES[backbone].hub_id if backbone in BACKBONES else hub_id_or_none(backbone)


def base_model_license(backbone: str | None) -> str | None:
    """The backbone's licence: known for named defaults, else read from a local folder's card; None if unknown."""
    from .backbones import BACKBONES

    if backbone in BACKBONES:
        return BACKBONES[backbone].license
    card = Path(backbone or "") / "README.md"
    if backbone and card.is_file():
        from huggingface_hub import ModelCard

        return ModelCard.load(card).data.license
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation results written by `evaluate.py run` (mteb's layout).
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """One model's mteb results: `<results>/results/<org>__<name>/<revision>/<Task>.json`."""

    name: str
    revision: str
    task_results: list  # mteb TaskResult
    instructions: bool = True  # whether the run gave queries and symmetric tasks their task instructions

    @property
    def scores(self) -> dict[str, float]:
        return {result.task_name: result.get_score() for result in self.task_results}

    @property
    def categories(self) -> dict[str, str]:
        return {result.task_name: result.task.metadata.type for result in self.task_results}


def read_evaluation(folder: Path) -> Evaluation | None:
    from mteb import TaskResult

    results = []
    for path in sorted(folder.glob("*.json")):
        if path.name != "model_meta.json":
            try:
                results.append(TaskResult.from_disk(path))
            except Exception:  # not a task result (e.g. poolattn_run.json)
                continue
    meta, settings = folder / "model_meta.json", folder / "poolattn_run.json"
    name = json.loads(meta.read_text())["name"] if meta.is_file() else folder.parent.name.replace("__", "/", 1)
    instructions = bool(json.loads(settings.read_text()).get("instructions")) if settings.is_file() else True
    return Evaluation(name, folder.name, results, instructions) if results else None


def find_evaluations(results_root, model: ExportedModel, others: list[ExportedModel] = ()) -> tuple:
    """(this model's evaluation or None, the other variants' evaluations) under an `evaluate.py run` output.

    This model's results are found by its name and weights fingerprint (never a stale revision). Other variants of
    the same backbone: the exact revisions of `others` where given, else each name's newest revision.
    """
    root = Path(results_root) / "results"
    if not root.is_dir():
        raise ValueError(f"{results_root} holds no mteb results (no results/ folder); give the --output of "
                         "`evaluate.py run`.")

    def exact(candidate: ExportedModel) -> Evaluation | None:
        folder = root / candidate.mteb_name.replace("/", "__") / candidate.fingerprint
        return read_evaluation(folder) if folder.is_dir() else None

    own = exact(model)
    own_name = model.mteb_name
    peers = {evaluation.name: evaluation for evaluation in map(exact, others) if evaluation and evaluation.name != own_name}
    family = own_name.rsplit("-v", 1)[0] + "-v"
    for model_folder in sorted(root.glob(family.replace("/", "__") + "*")):
        name = model_folder.name.replace("__", "/", 1)
        revisions = sorted((p for p in model_folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        if name != own_name and name not in peers and revisions:
            evaluation = read_evaluation(revisions[-1])
            if evaluation:
                peers[name] = evaluation
    return own, sorted(peers.values(), key=lambda e: e.name)


def eval_results_for_card(evaluation: Evaluation) -> list:
    """huggingface_hub `EvalResult`s (the card's `model-index`): one per task split and subset, main score 0-1."""
    from huggingface_hub import EvalResult

    entries = []
    for result in evaluation.task_results:
        metadata = result.task.metadata
        hf_type = metadata._hf_task_type()[0] if hasattr(metadata, "_hf_task_type") else "sentence-similarity"
        for split, subsets in result.scores.items():
            for subset in subsets:
                config = subset.get("hf_subset", "default")
                entries.append(EvalResult(
                    task_type=hf_type, task_name=metadata.type, dataset_type=metadata.dataset["path"],
                    dataset_name=f"MTEB {metadata.name} ({config})", dataset_config=config, dataset_split=split,
                    dataset_revision=metadata.dataset["revision"], metric_type=metadata.main_score,
                    metric_name=metadata.main_score, metric_value=float(subset["main_score"]), source_name="MTEB",
                    source_url="https://github.com/embeddings-benchmark/mteb",
                ))
    return entries


# ----------------------------------------------------------------------------------------------------------------------
# sentence-transformers files
# ----------------------------------------------------------------------------------------------------------------------


def query_prompt_of(model: ExportedModel) -> str:
    """The query prompt the model was trained with (`Instruct: ...\\nQuery: `), or "" when it had none."""
    from .data import instruction_prompt

    instruction = (model.manifest or {}).get("data", {}).get("query_instruction")
    return instruction_prompt(instruction) or ""


def write_sentence_transformers_files(folder: Path, model: ExportedModel) -> None:
    """modules.json (our input module, no Pooling), sentence_bert_config.json, config_sentence_transformers.json."""
    shutil.copy2(PACKAGE_DIR / SENTENCE_TRANSFORMERS_MODULE, folder / SENTENCE_TRANSFORMERS_MODULE)
    module = SENTENCE_TRANSFORMERS_MODULE.removesuffix(".py") + ".PoolAttnTransformer"
    files = {
        "modules.json": [{"idx": 0, "name": "0", "path": "", "type": module}],
        "sentence_bert_config.json": {
            "transformer_task": "feature-extraction",
            "modality_config": {"text": {"method": "forward", "method_output_name": "embeddings"}},
            "module_output_name": "sentence_embedding",
            "max_seq_length": model.config.max_length,
        },
        "config_sentence_transformers.json": {
            "prompts": {"query": query_prompt_of(model), "document": ""},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    }
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------------------------------
# The model card
# ----------------------------------------------------------------------------------------------------------------------


def card_metadata(model: ExportedModel, *, repo_id: str, evaluation: Evaluation | None, license: str | None):
    """The card's YAML: library, pipeline, tags (mteb, the variant, the design), base model, data, licence, results."""
    from huggingface_hub import ModelCardData

    config = model.config
    hub_dataset = (model.manifest or {}).get("data", {}).get("source")
    tags = ["mteb", "sentence-transformers", "sentence-similarity", "feature-extraction", "text-embeddings",
            "custom_code", "poolattn", f"{config.attention}-attention", POOLING_TAGS[config.pooling]]
    if model.variant is not None:
        tags.insert(7, f"poolattn-variant-{model.variant}")
    return ModelCardData(
        model_name=repo_id,
        language="en",
        license=license or base_model_license(model.backbone) or "other",
        library_name="transformers",
        pipeline_tag="feature-extraction",
        tags=tags,
        base_model=base_model_id(model.backbone),
        datasets=[hub_dataset] if hub_id_or_none(hub_dataset) else None,
        eval_results=eval_results_for_card(evaluation) if evaluation else None,
    )


def describe_design(config: PoolAttnConfig) -> list[list[str]]:
    """Rows (part, setting, what it means) describing attention, pooling and the head in words."""
    layers_total = config.text_config.num_hidden_layers
    rows = [["attention", config.attention,
             "bidirectional: the causal mask is switched off (`is_causal=False`), every token sees the whole text"
             if config.attention == "bidirectional" else "causal: the backbone's own mask, each token sees the tokens before it"]]
    head = (f"{config.num_latents} trainable latents, {config.num_heads} head(s) x {config.head_dim}, "
            f"{'GEGLU x' + str(config.ffn_multiplier) if config.ffn_multiplier else 'no'} feed-forward, "
            f"{'the paper' if config.latent_orientation == 'latents_query' else 'NV-Embed'} orientation")
    if config.pooling == "eos":
        rows.append(["pooling", "eos", "the last-layer hidden state of the last token (EOS, appended when the "
                                       "tokenizer adds none)"])
    elif config.pooling == "mean":
        rows.append(["pooling", "mean", "masked mean of the last layer's token states (prompt tokens left out)"])
    elif config.pooling == "latent":
        source = ("the last token's state" if config.head_input == "last_token"
                  else "every token's state (padding and prompt tokens masked)")
        rows.append(["pooling", "latent (last-layer trainable pooling)",
                     f"a cross-attention head over the last layer, reading {source}"])
        rows.append(["head", head, "pre-norm cross-attention + residual, pre-norm feed-forward + residual, mean"])
    else:
        summary = "its last token's state" if config.layer_summary == "eos" else "the masked mean of its token states"
        layers = config.layer_indices
        rows.append(["pooling", "multi_layer_latent (multi-layers trainable pooling)",
                     f"each of {len(layers)} of {layers_total} layers is summarised by {summary}; the summaries "
                     f"{'plus a trainable layer-weight matrix ' if config.layer_weights else ''}go through the head"])
        rows.append(["layers", f"`{config.layers}`", ", ".join(map(str, layers)) + f" (layer {layers_total} is the final-normed last layer)"])
        rows.append(["head", head, "pre-norm cross-attention + residual, pre-norm feed-forward + residual, mean"])
    rows.append(["output", f"{config.text_config.hidden_size} dimensions",
                 "L2-normalised, compare with cosine / dot product" if config.normalize else "not normalised, compare with cosine"])
    return rows


def usage_section(repo_id: str, query_prompt: str) -> str:
    prompt_line = (f'QUERY_PROMPT = {json.dumps(query_prompt)}  # the query format used in training; documents get none'
                   if query_prompt else
                   'QUERY_PROMPT = None  # trained without query instructions; an "Instruct: ...\\nQuery: " prompt may be given')
    return f"""## Usage

With transformers (no extra package; the code in this repository runs, hence `trust_remote_code=True`):

```python
from transformers import AutoModel

model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)
{prompt_line}
queries = model.encode(["how do plants make food"], prompt=QUERY_PROMPT)  # prompt tokens are left out of pooling
documents = model.encode(["Photosynthesis turns light, water and carbon dioxide into sugar.",
                          "The stock market fell on Monday."])
print(queries @ documents.T)  # cosine similarities: the embeddings are unit-norm
```

With sentence-transformers (>= 6; the repository's `modules.json` runs the pooling head above, with the same
tokenization and the same query prompt):

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{repo_id}", trust_remote_code=True)
queries = model.encode_query(["how do plants make food"])
documents = model.encode_document(["Photosynthesis turns light, water and carbon dioxide into sugar."])
print(model.similarity(queries, documents))
```
"""


def describe_data_source(source: str) -> str:
    """The training data as a reader can find it: a Hub id as such, the bundled sample by name, a local file by name."""
    from .data import SAMPLE_TRIPLETS

    if Path(source).parts[-3:] == SAMPLE_TRIPLETS.parts[-3:]:  # also when trained from another checkout
        return "poolattn's bundled sample triplets, `poolattn/sample_data/sample_triplets.jsonl` (8 domains):"
    if hub_id_or_none(source):
        return f"[{source}](https://huggingface.co/datasets/{source}):"
    return f"local data `{Path(source).name}`:"


def training_section(model: ExportedModel) -> str:
    from .stats import markdown_table

    manifest = model.manifest
    if manifest is None:
        return "## Training\n\nNo training manifest was saved with this model (built with `save_pretrained`).\n"
    hp, data, batch = manifest["hyperparameters"], manifest["data"], manifest["contrastive_batch"]
    params = manifest["trainable_parameters"]
    losses = [loss for _, loss in manifest.get("loss_history", [])]
    tuning = ("full fine-tuning of every weight" if hp.get("full_finetune") else
              f"LoRA r={hp['lora_r']}, alpha={hp['lora_alpha']}, dropout={hp['lora_dropout']} on "
              f"{hp['lora_target_modules']}, merged into the weights; the head trained fully")
    gradcache = hp.get("gradcache_chunk_size") or 0
    rows = [
        ["backbone", f"`{manifest['backbone']}`" + (f" ({base_model_id(manifest['backbone'])})"
                                                    if base_model_id(manifest["backbone"]) != manifest["backbone"] else "")],
        ["data", f"{describe_data_source(data['source'])} {data['examples']} query/positive"
                 f"{'/hard-negative' if data['hard_negatives'] else ''} examples"
                 f"{', ' + str(data['skipped_rows']) + ' invalid rows skipped' if data.get('skipped_rows') else ''}"],
        ["query instruction", json.dumps(data["query_instruction"]) if data.get("query_instruction") else "none"],
        ["steps", f"{manifest['global_steps']} (lr {hp['learning_rate']}, {hp['lr_scheduler_type']} schedule, "
                  f"{hp['warmup_steps']} warmup steps, {hp.get('optim', 'adamw')})"],
        ["contrastive batch per loss call",
         f"{batch['queries_per_loss_call']} queries x {batch['candidates_per_query']} candidates "
         f"({batch['queries_per_device']} per device x {batch['world_size']} device(s); hard negatives: "
         f"{batch['hard_negatives']}; cross-device negatives: {batch['cross_device_negatives']}; "
         f"GradCache chunk: {gradcache or 'off'}; gradient accumulation: {hp.get('gradient_accumulation_steps', 1)})"],
        ["loss", f"InfoNCE over cosine similarities, temperature {hp['temperature']}"
                 + (f"; {losses[0]:.3f} at the first step, {losses[-1]:.3f} at the last" if losses else "")],
        ["tuning", tuning],
        ["trainable parameters", f"LoRA {params['lora']:,}, head {params['head']:,}, backbone {params['backbone']:,}"],
        ["max tokens", f"queries {hp['query_max_length']}, documents {hp['document_max_length']}"],
        ["precision", "bf16 mixed" if hp.get("bf16") else "fp16 mixed" if hp.get("fp16") else hp.get("model_dtype", "float32")],
        ["seed", str(manifest["seed"])],
        ["run time", f"{manifest['train_runtime_s']} s"],
        ["libraries", ", ".join(f"{name} {version}" for name, version in manifest["libraries"].items())],
    ]
    if "export_check" in manifest:
        check = manifest["export_check"]
        rows.append(["export check", f"merged vs adapter embeddings on {check['texts']} texts: largest difference "
                                     f"{check['max_abs_difference']:.2g} (tolerance {check['tolerance']:g})"])
    return ("## Training\n\nFine-tuned with poolattn's `train.py`; the full record is `training_manifest.json` in this "
            "repository.\n\n" + markdown_table(["", "value"], rows) + "\n")


def evaluation_section(evaluation: Evaluation | None, peers: list[Evaluation]) -> str:
    from .stats import markdown_table, verdict, wilcoxon_by_category

    if evaluation is None:
        return ("## Evaluation\n\nNot evaluated yet. Score it with poolattn's `evaluate.py run` on MTEB tasks; "
                "publishing with `--results` then adds the scores here and to the card metadata.\n")
    scores, categories = evaluation.scores, evaluation.categories
    tasks = sorted(scores, key=lambda task: (categories[task], task))
    lines = ["## Evaluation", "",
             f"MTEB (mteb's own tasks and evaluators, run by poolattn's `evaluate.py`; revision `{evaluation.revision}`, "
             "a fingerprint of these weights). "
             + ("Queries and symmetric tasks got e5-style `Instruct: ...\\nQuery: ` task instructions, documents none."
                if evaluation.instructions else "No task instructions were given."), "",
             markdown_table(["task", "category", "metric", "score"],
                            [[t, categories[t], _main_score_name(evaluation, t), scores[t]] for t in tasks]), ""]
    shared_peers = [peer for peer in peers if set(peer.scores) & set(scores)]
    if shared_peers:
        used = sorted({categories[t] for t in tasks})
        means = [[f"{e.name}{' (this model)' if e is evaluation else ''}",
                  *[_category_mean(e, category, categories, tasks) for category in used]]
                 for e in [evaluation, *shared_peers]]
        tests = []
        for peer in shared_peers:
            for test in wilcoxon_by_category(scores, peer.scores, categories):
                tests.append([peer.name, test.category, test.n_datasets, test.mean_a, test.mean_b,
                              f"{test.wins_a}/{test.n_datasets}", test.p_value, test.p_holm,
                              verdict(test, "this model", peer.name)])
        lines += ["### Against the other variants", "",
                  "Mean main score per category, over the tasks this model was scored on:", "",
                  markdown_table(["model", *used], means), "",
                  "Wilcoxon signed-rank tests by dataset, this model against each other variant, per category "
                  "(Holm-corrected within each comparison over the categories with at least 5 datasets; with 4 or "
                  "fewer, no two-sided p-value can fall below 0.125):", "",
                  markdown_table(["other variant", "category", "datasets", "this model", "other", "this model wins",
                                  "p", "p (Holm)", "verdict"], tests), ""]
    return "\n".join(lines)


def _main_score_name(evaluation: Evaluation, task: str) -> str:
    result = next(r for r in evaluation.task_results if r.task_name == task)
    return result.task.metadata.main_score


def _category_mean(evaluation: Evaluation, category: str, categories: dict[str, str], tasks) -> float | None:
    values = [score for task, score in evaluation.scores.items() if task in tasks and categories[task] == category]
    return sum(values) / len(values) if values else None


def build_model_card(model: ExportedModel, *, repo_id: str, evaluation: Evaluation | None = None,
                     peers: list[Evaluation] = (), license: str | None = None):
    """A `huggingface_hub.ModelCard` generated from the config, manifest and (optional) mteb results."""
    from huggingface_hub import ModelCard

    from .stats import markdown_table

    config, backbone = model.config, base_model_id(model.backbone) or model.backbone or "a decoder LLM"
    variant = (f"variant {model.variant} of {PAPER} ({VARIANT_NAMES[model.variant]})" if model.variant
               else f"a custom design over the axes of {PAPER}")
    data = card_metadata(model, repo_id=repo_id, evaluation=evaluation, license=license)
    body = [
        f"# {repo_id.split('/')[-1]}", "",
        f"A text-embedding model built from [{backbone}](https://huggingface.co/{backbone}) with {variant}. "
        f"[Paper]({PAPER_URL}). Made with poolattn.", "",
        "## Design", "",
        markdown_table(["part", "setting", "meaning"], describe_design(config)), "",
        f"Parameters: {model.parameters['total']:,} in all, {model.parameters['head']:,} in the pooling head.",
        "",
        usage_section(repo_id, query_prompt_of(model)),
        training_section(model),
        evaluation_section(evaluation, list(peers)),
        "## Citation", "", "```bibtex", PAPER_BIBTEX, "```", "",
    ]
    if data.license == "other":
        body.insert(3, "The base model's licence could not be determined: check it before using this model.\n")
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


# ----------------------------------------------------------------------------------------------------------------------
# The repository folder, and the upload
# ----------------------------------------------------------------------------------------------------------------------


def write_repository_folder(model, destination, *, repo_id: str, results=None, others: list[ExportedModel] = (),
                            license: str | None = None) -> Path:
    """Write exactly what `push_folder` uploads to `destination`, atomically (temp folder, then rename).

    `model` is an `ExportedModel` or its folder; `others` are the variants published with it (for the comparisons).
    """
    from .trainer import atomic_save

    model = model if isinstance(model, ExportedModel) else ExportedModel.read(model)
    evaluation, peers = find_evaluations(results, model, others) if results else (None, [])
    card = build_model_card(model, repo_id=repo_id, evaluation=evaluation, peers=peers, license=license)

    def save(folder: Path):
        for path in sorted(model.folder.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                shutil.copy2(path, folder / path.name)
        write_sentence_transformers_files(folder, model)
        card.save(folder / "README.md")

    return atomic_save(save, Path(destination))


def repository_files(folder) -> dict[str, bytes]:
    """Every file of a repository folder, relative path -> bytes (what an upload must deliver)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def push_folder(folder, repo_id: str, *, token: str | None = None, private: bool | None = None,
                commit_message: str = "Upload poolattn model") -> str:
    """`create_repo(exist_ok=True)` + `upload_folder`; the token from `token`, `HF_TOKEN` or a saved login.

    Raises `HubPushError` (offline, unauthorised, any Hub or network error) saying the folder is kept.
    """
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    kept = f"The repository folder is kept at {folder}; rerun the same command to retry the upload."
    token = token or huggingface_hub.get_token()
    if not token:
        raise HubPushError(f"No Hugging Face token found to push {repo_id}: set HF_TOKEN, run `hf auth login`, "
                           f"or pass a token (--hub_token). {kept}")
    try:
        huggingface_hub.create_repo(repo_id, token=token, private=private, exist_ok=True)
        commit = huggingface_hub.upload_folder(repo_id=repo_id, folder_path=str(folder), token=token,
                                               commit_message=commit_message)
    except OfflineModeIsEnabled as error:
        raise HubPushError(f"Cannot push {repo_id}: HF_HUB_OFFLINE is set ({error}). Unset it when online. {kept}") from error
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status in (401, 403):
            raise HubPushError(f"The Hub refused {repo_id} (HTTP {status}): the token is invalid or cannot write to "
                               f"{repo_id.split('/')[0]}. Log in with a write token (`hf auth login`). {kept}") from error
        raise HubPushError(f"The Hub rejected the upload of {repo_id}: {error}. {kept}") from error
    except Exception as error:  # network errors (no connection, DNS, timeouts) come from the HTTP client unwrapped
        raise HubPushError(f"Could not reach the Hub to push {repo_id} ({type(error).__name__}: {error}). "
                           f"Check the connection (or HF_ENDPOINT). {kept}") from error
    url = getattr(commit, "commit_url", None) or f"{huggingface_hub.constants.ENDPOINT}/{repo_id}"
    logger.info("pushed %s: %s", repo_id, url)
    return url


def publish(model_folders, *, hub_model_id: str, output_dir, push: bool, results=None, token: str | None = None,
            private: bool | None = None, license: str | None = None) -> list[Path]:
    """Write one repository folder per model under `output_dir` (`<NAME>-v<N>`), then upload each when `push`.

    Every folder is written before the first upload, so a failed push loses nothing and names what is kept.
    """
    models = [ExportedModel.read(folder) for folder in model_folders]
    repo_ids = [repository_id(hub_model_id, variant=model.variant) for model in models]
    if len(set(repo_ids)) != len(repo_ids):
        raise ValueError(f"Two models would go to the same repository ({', '.join(repo_ids)}): publish models of "
                         "different paper variants together, or one custom model per --hub_model_id.")
    folders = []
    for model, repo_id in zip(models, repo_ids):
        others = [other for other in models if other is not model]
        destination = Path(output_dir) / repo_id.split("/")[-1]
        folders.append(write_repository_folder(model, destination, repo_id=repo_id, results=results,
                                               others=others, license=license))
        print(f"{repo_id}: repository folder written to {destination}")
    if push:
        for folder, repo_id in zip(folders, repo_ids):
            print(f"{repo_id}: pushed, {push_folder(folder, repo_id, token=token, private=private)}")
    return folders
