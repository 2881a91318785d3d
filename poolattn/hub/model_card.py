"""The model card of a published poolattn model: Python computes the metadata, values and tables, and the prose is
the jinja2 template `model_card_template.md`, rendered with `huggingface_hub.ModelCard.from_template`.

>>> base_model_id("smollm2-135m")
'HuggingFaceTB/SmolLM2-135M-Instruct'
>>> describe_data_source("sentence-transformers/all-nli")
'[sentence-transformers/all-nli](https://huggingface.co/datasets/sentence-transformers/all-nli):'

What the card says comes from the exported folder, read as a `manifest.ExportedModel`: the config (the design), the
parameter counts, and the typed training manifest (older schema versions are upgraded on read; a model written with
`save_pretrained` has none, and the card says so). With an evaluation's results (`results.ModelResults`) it adds the
MTEB scores, as a table and as the `model-index` metadata, and Wilcoxon tests against the other variants' results.
"""

import json
import re
from pathlib import Path

from ..configuration_poolattn import PoolAttnConfig
from ..model_folder import ExportedModel
from ..manifest import TrainingManifest
from ..evaluation.results import ModelResults, category_rank

TEMPLATE = Path(__file__).resolve().parent / "model_card_template.md"
# The bundled sample's path, from the end: recognised also when a model was trained from another checkout.
SAMPLE_TRIPLETS_TAIL = ("poolattn", "sample_data", "sample_triplets.jsonl")
PAPER = (
    "Tang & Yang, *Pooling And Attention: What Are Effective Designs For LLM-Based Embedding Models?* "
    "(arXiv 2409.02727)"
)
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
    "mean-causal": "mean pooling of the last layer, causal attention (baseline design, not a paper variant)",
    "mean-bidirectional": "mean pooling of the last layer, bidirectional attention (baseline design, not a paper "
    "variant)",
}
POOLING_TAGS = {
    "eos": "eos-pooling",
    "mean": "mean-pooling",
    "latent": "trainable-pooling",
    "multi_layer_latent": "multi-layer-trainable-pooling",
}


# ---------------------------------------------------------------------------------------------------------------------
# The backbone: its Hub id and licence
# ---------------------------------------------------------------------------------------------------------------------


def hub_id_or_none(name: str | None) -> str | None:
    """`name` when it reads as a Hub id (`ORG/NAME`, not an existing local path), else None."""
    if name and re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not Path(name).exists():
        return name
    return None


def base_model_id(backbone: str | None) -> str | None:
    """The Hub id of the backbone: a named default's id, a Hub id as given, None for a local folder."""
    from ..backbones import BACKBONES

    return BACKBONES[backbone].hub_id if backbone in BACKBONES else hub_id_or_none(backbone)


def base_model_license(backbone: str | None) -> str | None:
    """The backbone's licence: known for named defaults, else read from a local folder's card; None if unknown."""
    from ..backbones import BACKBONES

    if backbone in BACKBONES:
        return BACKBONES[backbone].license
    card = Path(backbone or "") / "README.md"
    if backbone and card.is_file():
        from huggingface_hub import ModelCard

        return ModelCard.load(card).data.license
    return None


# ---------------------------------------------------------------------------------------------------------------------
# The card's YAML metadata
# ---------------------------------------------------------------------------------------------------------------------


def card_metadata(model: ExportedModel, *, repo_id: str, results: ModelResults | None, license: str | None):
    """The card's YAML: library, pipeline, tags (mteb, the variant, the design), base model, data, licence, results."""
    from huggingface_hub import ModelCardData

    config = model.config
    data = model.manifest.data if model.manifest else None
    hub_dataset = hub_id_or_none(data.source) if data else None
    tags = [
        "mteb",
        "sentence-transformers",
        "sentence-similarity",
        "feature-extraction",
        "text-embeddings",
        "custom_code",
        "poolattn",
        f"{config.attention}-attention",
        POOLING_TAGS[config.pooling],
    ]
    if model.variant is not None:
        tags.insert(
            7,
            f"poolattn-variant-{model.variant}"
            if isinstance(model.variant, int)
            else f"poolattn-baseline-{model.variant}",
        )
    return ModelCardData(
        model_name=repo_id,
        language="en",
        license=license or base_model_license(model.backbone) or "other",
        library_name="transformers",
        pipeline_tag="feature-extraction",
        tags=tags,
        base_model=base_model_id(model.backbone),
        datasets=[hub_dataset] if hub_dataset else None,
        eval_results=eval_results_for_card(results) if results else None,
    )


def eval_results_for_card(results: ModelResults) -> list:
    """huggingface_hub `EvalResult`s (the card's `model-index`): one per task split and subset, main score 0-1."""
    from huggingface_hub import EvalResult

    entries = []
    for result in results.task_results:
        info = results.task_info(result.task_name)
        if info.local:  # not an MTEB dataset: in the card's table, not in the Hub's model-index
            continue
        hf_type = info.hf_task_type()
        for split, subsets in result.scores.items():
            for subset in subsets:
                config = subset.get("hf_subset", "default")
                entries.append(
                    EvalResult(
                        task_type=hf_type,
                        task_name=info.type,
                        dataset_type=info.dataset_path,
                        dataset_name=f"MTEB {info.name} ({config})",
                        dataset_config=config,
                        dataset_split=split,
                        dataset_revision=info.dataset_revision,
                        metric_type=info.main_score,
                        metric_name=info.main_score,
                        metric_value=float(subset["main_score"]),
                        source_name="MTEB",
                        source_url="https://github.com/embeddings-benchmark/mteb",
                    )
                )
    return entries


# ---------------------------------------------------------------------------------------------------------------------
# The card's tables
# ---------------------------------------------------------------------------------------------------------------------


def describe_design(config: PoolAttnConfig) -> list[list[str]]:
    """Rows (part, setting, what it means) describing attention, pooling and the head in words."""
    layers_total = config.text_config.num_hidden_layers
    rows = [
        [
            "attention",
            config.attention,
            "bidirectional: the causal mask is switched off (`is_causal=False`), every token sees the whole text"
            if config.attention == "bidirectional"
            else "causal: the backbone's own mask, each token sees the tokens before it",
        ]
    ]
    head = (
        f"{config.num_latents} trainable latents, {config.num_heads} head(s) x {config.head_dim}, "
        f"{'GEGLU x' + str(config.ffn_multiplier) if config.ffn_multiplier else 'no'} feed-forward, "
        f"{'the paper' if config.latent_orientation == 'latents_query' else 'NV-Embed'} orientation"
    )
    head_row = ["head", head, "pre-norm cross-attention + residual, pre-norm feed-forward + residual, mean"]
    if config.pooling == "eos":
        rows.append(
            [
                "pooling",
                "eos",
                "the last-layer hidden state of the last token (EOS, appended when the tokenizer adds none)",
            ]
        )
    elif config.pooling == "mean":
        rows.append(["pooling", "mean", "masked mean of the last layer's token states (prompt tokens left out)"])
    elif config.pooling == "latent":
        source = (
            "the last token's state"
            if config.head_input == "last_token"
            else "every token's state (padding and prompt tokens masked)"
        )
        rows.append(
            [
                "pooling",
                "latent (last-layer trainable pooling)",
                f"a cross-attention head over the last layer, reading {source}",
            ]
        )
        rows.append(head_row)
    else:
        summary = "its last token's state" if config.layer_summary == "eos" else "the masked mean of its token states"
        layers = config.layer_indices
        rows.append(
            [
                "pooling",
                "multi_layer_latent (multi-layers trainable pooling)",
                f"each of {len(layers)} of {layers_total} layers is summarised by {summary}; the summaries "
                f"{'plus a trainable layer-weight matrix ' if config.layer_weights else ''}go through the head",
            ]
        )
        rows.append(
            [
                "layers",
                f"`{config.layers}`",
                ", ".join(map(str, layers)) + f" (layer {layers_total} is the final-normed last layer)",
            ]
        )
        rows.append(head_row)
    rows.append(
        [
            "output",
            f"{config.text_config.hidden_size} dimensions",
            "L2-normalised, compare with cosine / dot product"
            if config.normalize
            else "not normalised, compare with cosine",
        ]
    )
    if config.matryoshka_dims:
        sizes = ", ".join(map(str, config.matryoshka_dims))
        rows.append(
            [
                "smaller sizes",
                sizes,
                "trained with a Matryoshka loss: the first N dimensions, renormalised, "
                "are an embedding too (`truncate_dim`)",
            ]
        )
    return rows


def describe_data_source(source: str) -> str:
    """The training data as a reader finds it: a Hub id as such, the bundled sample by name, a local file by name."""
    if Path(source).parts[-3:] == SAMPLE_TRIPLETS_TAIL:
        return "poolattn's bundled sample triplets, `poolattn/sample_data/sample_triplets.jsonl` (8 domains):"
    if hub_id_or_none(source):
        return f"[{source}](https://huggingface.co/datasets/{source}):"
    return f"local data `{Path(source).name}`:"


def training_rows(manifest: TrainingManifest) -> list[list[str]]:
    """Rows (what, value) of the training table, from the typed manifest; parts a manifest lacks are left out."""
    data, settings, batch = manifest.data, manifest.settings, manifest.contrastive_batch
    hub_id = base_model_id(manifest.backbone)
    named = f" ({hub_id})" if hub_id and hub_id != manifest.backbone else ""
    rows = [["backbone", f"`{manifest.backbone}`{named}"]]
    if data:
        rows.append(
            [
                "data",
                f"{describe_data_source(data.source)} {data.examples} query/positive"
                f"{'/hard-negative' if data.hard_negatives else ''} examples"
                + (f", {data.skipped_rows} invalid rows skipped" if data.skipped_rows else ""),
            ]
        )
        if len(data.sources) > 1:
            rows.append(
                [
                    "sources",
                    "; ".join(
                        f"{source['name']} ({source['examples']}"
                        + (
                            f", {source['negatives_per_query']} hard negative(s) per query"
                            if source["negatives_per_query"]
                            else ""
                        )
                        + ")"
                        for source in data.sources
                    )
                    + {
                        "one_source_per_batch": "; every batch from one source",
                        "mixed": "; sources mixed within batches",
                    }.get(data.batch_sampling, ""),
                ]
            )
        rows.append(["query instruction", json.dumps(data.query_instruction) if data.query_instruction else "none"])
    if manifest.global_steps is not None:
        stop = manifest.stop
        stopped = (
            f", stopped at the plateau of the held-out loss (best at step {stop.best_step}; rule: {stop.rule})"
            if stop and stop.reason == "plateau"
            else ""
        )
        rows.append(
            [
                "steps",
                f"{manifest.global_steps}{stopped}"
                + (
                    f" ({settings.describe_rates()}, {settings.lr_scheduler_type} schedule, "
                    f"{settings.warmup_steps} warmup steps, {settings.optimizer})"
                    if settings
                    else ""
                ),
            ]
        )
    if batch:
        rows.append(["contrastive batch per loss call", batch.describe()])
    losses = manifest.losses
    rows.append(
        [
            "loss",
            "InfoNCE over cosine similarities"
            + (f", temperature {settings.temperature}" if settings else "")
            + (f"; {losses[0]:.3f} at the first step, {losses[-1]:.3f} at the last" if losses else ""),
        ]
    )
    if settings:
        rows.append(["tuning", settings.describe_tuning()])
    if manifest.trainable_parameters:
        rows.append(["trainable parameters", manifest.trainable_parameters.describe()])
    if settings:
        rows.append(["max tokens", f"queries {settings.query_max_length}, documents {settings.document_max_length}"])
        rows.append(["precision", settings.precision])
    if manifest.seed is not None:
        rows.append(["seed", str(manifest.seed)])
    if manifest.train_runtime_s is not None:
        rows.append(["run time", f"{manifest.train_runtime_s} s"])
    if manifest.libraries:
        rows.append(["libraries", ", ".join(f"{name} {version}" for name, version in manifest.libraries.items())])
    if manifest.export_check:
        check = manifest.export_check
        rows.append(
            [
                "export check",
                f"merged vs adapter embeddings on {check.texts} texts: largest difference "
                f"{check.max_abs_difference:.2g} (tolerance {check.tolerance:g})",
            ]
        )
    return rows


def evaluation_tables(results: ModelResults, peers: list[ModelResults]) -> dict[str, str | None]:
    """Markdown tables of the evaluation: `scores` (this model, per task), and against the peers that share a task
    with it, `means` (per category) and `tests` (Wilcoxon by category); both None without such peers."""
    from ..stats import markdown_table, verdict, wilcoxon_by_category

    scores, categories, metrics = results.scores, results.categories, results.main_score_names
    tasks = sorted(scores, key=lambda task: (category_rank(categories[task]), categories[task], task))
    tables = {
        "scores": markdown_table(
            ["task", "category", "metric", "score"],
            [[task, categories[task], metrics[task], scores[task]] for task in tasks],
        ),
        "means": None,
        "tests": None,
    }
    shared_peers = [peer for peer in peers if set(peer.scores) & set(scores)]
    if shared_peers:
        used = list(dict.fromkeys(categories[task] for task in tasks))
        compared = [(f"{results.name} (this model)", results), *((peer.name, peer) for peer in shared_peers)]
        means = [[name, *map(model_results.category_means(tasks).get, used)] for name, model_results in compared]
        tests = [
            [
                peer.name,
                test.category,
                test.n_datasets,
                test.mean_a,
                test.mean_b,
                f"{test.wins_a}/{test.n_datasets}",
                test.p_value,
                test.p_holm,
                verdict(test, "this model", peer.name),
            ]
            for peer in shared_peers
            for test in wilcoxon_by_category(scores, peer.scores, categories)
        ]
        tables["means"] = markdown_table(["model", *used], means)
        tables["tests"] = markdown_table(
            [
                "other variant",
                "category",
                "datasets",
                "this model",
                "other",
                "this model wins",
                "p",
                "p (Holm)",
                "verdict",
            ],
            tests,
        )
    return tables


# ---------------------------------------------------------------------------------------------------------------------
# The card
# ---------------------------------------------------------------------------------------------------------------------


def build_model_card(
    model: ExportedModel,
    *,
    repo_id: str,
    results: ModelResults | None = None,
    peers: list[ModelResults] = (),
    license: str | None = None,
    study_section: str | None = None,
    left_out_results: dict[str, str] | None = None,
):
    """A `huggingface_hub.ModelCard` from the config, the training manifest and (optional) mteb results.

    `results` are this model's results, `peers` the other variants' (compared with it over the tasks it shares);
    `study_section` the model's place in a study (`study.card_section`), Markdown; `left_out_results` the results
    of these weights scored under other settings (revision -> why), which the card names instead of showing.
    """
    from ..stats import markdown_table

    metadata = card_metadata(model, repo_id=repo_id, results=results, license=license)
    tables = evaluation_tables(results, list(peers)) if results else {"scores": None, "means": None, "tests": None}
    return render_card(
        metadata,
        name=repo_id.split("/")[-1],
        repo_id=repo_id,
        base_model=base_model_id(model.backbone),
        backbone=model.backbone,
        variant=model.variant,
        variant_name=VARIANT_NAMES.get(model.variant),
        paper_variant=isinstance(model.variant, int),
        paper=PAPER,
        paper_url=PAPER_URL,
        paper_bibtex=PAPER_BIBTEX,
        license_unknown=metadata.license == "other",
        design_table=markdown_table(["part", "setting", "meaning"], describe_design(model.config)),
        parameters=model.parameters,
        query_prompt=json.dumps(model.query_prompt) if model.query_prompt else None,
        training_table=markdown_table(["", "value"], training_rows(model.manifest)) if model.manifest else None,
        results=results,
        scores_table=tables["scores"],
        means_table=tables["means"],
        tests_table=tables["tests"],
        study_section=study_section,
        left_out_results=left_out_results or {},
        onnx=onnx_export_record(model.folder),
        matryoshka_dims=", ".join(map(str, model.config.matryoshka_dims or [])),
        smallest_dim=(model.config.matryoshka_dims or [None])[0],
    )


def onnx_export_record(folder):
    """The folder's ONNX export record (`onnx/export.json`), or None when it has no export."""
    from .onnx_export import EXPORT_RECORD, OnnxExport
    from ..onnx_poolattn import ONNX_FOLDER

    return OnnxExport.read(folder) if (Path(folder) / ONNX_FOLDER / EXPORT_RECORD).is_file() else None


def render_card(metadata, **variables):
    """`TEMPLATE` rendered with the card's YAML `metadata` and `variables`; refuses to leave a template variable empty
    (jinja2 would render a misspelt or missing one as nothing)."""
    import jinja2.meta
    from huggingface_hub import ModelCard

    template = TEMPLATE.read_text(encoding="utf-8")
    missing = jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(template)) - {"card_data", *variables}
    if missing:
        raise TypeError(f"{TEMPLATE.name} uses {', '.join(sorted(missing))}, which build_model_card does not give.")
    return ModelCard.from_template(metadata, template_path=str(TEMPLATE), **variables)
