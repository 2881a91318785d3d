"""The model card's tables: the design (pooling, attention, layers, head), the training run from its manifest, and the
evaluation beside the peers scored on the same tasks."""

import dataclasses
import json
import logging
import re
from pathlib import Path

from ..configuration_poolattn import PoolAttnConfig
from ..evaluation.results import ModelResults, category_rank
from ..manifest import TrainingManifest

# The bundled sample's path, from the end: recognised also when a model was trained from another checkout.
SAMPLE_TRIPLETS_TAIL = ("poolattn", "sample_data", "sample_triplets.jsonl")

logger = logging.getLogger(__name__)


def hub_id_or_none(name: str | None) -> str | None:
    """`name` when it reads as a Hub id (`ORG/NAME`, not an existing local path), else None."""
    if name and re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not Path(name).exists():
        return name
    return None


def base_model_id(backbone: str | None) -> str | None:
    """The Hub id of the backbone: a named default's id, a Hub id as given, None for a local folder."""
    from ..backbones import BACKBONES

    return BACKBONES[backbone].hub_id if backbone in BACKBONES else hub_id_or_none(backbone)


def describe_design(config: PoolAttnConfig) -> list[list[str]]:
    """Rows (part, setting, what it means) describing attention, pooling and the head in words."""
    attention = (
        "bidirectional: the causal mask is switched off (`is_causal=False`), every token sees the whole text"
        if config.attention == "bidirectional"
        else "causal: the backbone's own mask, each token sees the tokens before it"
    )
    output = (
        "L2-normalised, compare with cosine / dot product"
        if config.normalize
        else "not normalised, compare with cosine"
    )
    rows = [["attention", config.attention, attention], *_pooling_rows(config)]
    rows.append(["output", f"{config.text_config.hidden_size} dimensions", output])
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


def _pooling_rows(config: PoolAttnConfig) -> list[list[str]]:
    if config.pooling == "eos":
        last_token = "the last-layer hidden state of the last token (EOS, appended when the tokenizer adds none)"
        return [["pooling", "eos", last_token]]
    if config.pooling == "mean":
        return [["pooling", "mean", "masked mean of the last layer's token states (prompt tokens left out)"]]
    if config.pooling == "latent":
        source = (
            "the last token's state"
            if config.head_input == "last_token"
            else "every token's state (padding and prompt tokens masked)"
        )
        over_last_layer = f"a cross-attention head over the last layer, reading {source}"
        return [["pooling", "latent (last-layer trainable pooling)", over_last_layer], _head_row(config)]
    summary = "its last token's state" if config.layer_summary == "eos" else "the masked mean of its token states"
    layers, layers_total = config.layer_indices, config.text_config.num_hidden_layers
    multiplier = config.layer_weights_multiplier
    scaled = f"(entering x{multiplier:g}: it moves {multiplier:g} times as fast) " if multiplier != 1 else ""
    weights = f"plus a trainable layer-weight matrix {scaled}" if config.layer_weights else ""
    over_layers = (
        f"each of {len(layers)} of {layers_total} layers is summarised by {summary}; the summaries {weights}go "
        "through the head"
    )
    layer_list = ", ".join(map(str, layers)) + f" (layer {layers_total} is the final-normed last layer)"
    return [
        ["pooling", "multi_layer_latent (multi-layers trainable pooling)", over_layers],
        ["layers", f"`{config.layers}`", layer_list],
        _head_row(config),
    ]


def _head_row(config: PoolAttnConfig) -> list[str]:
    feed_forward = f"GEGLU x{config.ffn_multiplier}" if config.ffn_multiplier else "no"
    orientation = "the paper" if config.latent_orientation == "latents_query" else "NV-Embed"
    head = (
        f"{config.num_latents} trainable latents, {config.num_heads} head(s) x {config.head_dim}, "
        f"{feed_forward} feed-forward, {orientation} orientation"
    )
    return ["head", head, "pre-norm cross-attention + residual, pre-norm feed-forward + residual, mean"]


def describe_data_source(source: str) -> str:
    """The training data as a reader finds it: a Hub id as such, the bundled sample by name, a local file by name."""
    if Path(source).parts[-3:] == SAMPLE_TRIPLETS_TAIL:
        return "poolattn's bundled sample triplets, `poolattn/sample_data/sample_triplets.jsonl` (8 domains):"
    if hub_id_or_none(source):
        return f"[{source}](https://huggingface.co/datasets/{source}):"
    return f"local data `{Path(source).name}`:"


def training_rows(manifest: TrainingManifest) -> list[list[str]]:
    """Rows (what, value) of the training table, from the typed manifest; parts a manifest lacks are left out."""
    settings, batch = manifest.settings, manifest.contrastive_batch
    hub_id = base_model_id(manifest.backbone)
    named = f" ({hub_id})" if hub_id and hub_id != manifest.backbone else ""
    rows = [["backbone", f"`{manifest.backbone}`{named}"], *_data_rows(manifest)]
    if manifest.global_steps is not None:
        rows.append(["steps", _steps_text(manifest)])
    if batch:
        rows.append(["contrastive batch per loss call", batch.describe()])
    losses = manifest.losses
    untrained = manifest.stop is not None and manifest.stop.reason == "untrained"
    rows.append(
        [
            "loss",
            "none (untrained control)"
            if untrained
            else "InfoNCE over cosine similarities"
            + (f", temperature {settings.temperature}" if settings else "")
            + (f"; {losses[0]:.3f} at the first step, {losses[-1]:.3f} at the last" if losses else ""),
        ]
    )
    if settings:
        rows.append(["tuning", settings.describe_tuning()])
    if manifest.trainable_parameters and not untrained:
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


def _data_rows(manifest: TrainingManifest) -> list[list[str]]:
    data = manifest.data
    if not data:
        return []
    negatives = "/hard-negative" if data.hard_negatives else ""
    skipped = f", {data.skipped_rows} invalid rows skipped" if data.skipped_rows else ""
    rows = [
        ["data", f"{describe_data_source(data.source)} {data.examples} query/positive{negatives} examples{skipped}"]
    ]
    if len(data.sources) > 1:
        sources = "; ".join(
            f"{source['name']} ({source['examples']}"
            + (
                f", {source['negatives_per_query']} hard negative(s) per query"
                if source["negatives_per_query"]
                else ""
            )
            + ")"
            for source in data.sources
        )
        sampling = {
            "one_source_per_batch": "; every batch from one source",
            "mixed": "; sources mixed within batches",
        }.get(data.batch_sampling, "")
        rows.append(["sources", sources + sampling])
    rows.append(["query instruction", json.dumps(data.query_instruction) if data.query_instruction else "none"])
    return rows


def _steps_text(manifest: TrainingManifest) -> str:
    stop, settings = manifest.stop, manifest.settings
    stopped = ""
    if stop and stop.reason == "plateau":
        stopped = f", stopped at the plateau of the held-out loss (best at step {stop.best_step}; rule: {stop.rule})"
    elif stop and stop.reason == "early_stopping":
        planned = f" (of {stop.cap} steps planned)" if stop.cap and stop.cap > 0 else ""
        stopped = f", stopped early by the Trainer's early stopping on the held-out metric{planned}"
    if stop and stop.exported_step is not None and stop.exported_step != manifest.global_steps:
        stopped += f"; the weights are those of step {stop.exported_step} (the best checkpoint), not of the last step"
    recipe = (
        f" ({settings.describe_rates()}, {settings.lr_scheduler_type} schedule, "
        f"{settings.warmup_steps} warmup steps, {settings.optimizer})"
        if settings
        else ""
    )
    return f"{manifest.global_steps}{stopped}{recipe}"


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
    peers = [_on_the_same_data(results, peer) for peer in peers]
    shared_peers = [peer for peer in peers if set(peer.scores) & set(scores)]
    if shared_peers:
        used = list(dict.fromkeys(categories[task] for task in tasks))
        compared = [(f"{results.name} (this model)", results), *((peer.name, peer) for peer in shared_peers)]
        means = [[name, *_means_over(model_results, tasks, categories, used)] for name, model_results in compared]
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


def _on_the_same_data(results: ModelResults, peer: ModelResults) -> ModelResults:
    """`peer` without the tasks it scored on other data than `results` did (another copy or folder of a task: its
    score would be set beside this model's as a model difference)."""
    from ..evaluation.pairing import different_data

    other = {task for task in set(peer.scores) & set(results.scores) if different_data(task, [results, peer])}
    if not other:
        return peer
    logger.warning(
        "%s: left out of the card's comparison with %s: %s (scored on other data than this model's)",
        peer.name,
        results.name,
        ", ".join(sorted(other)),
    )
    return dataclasses.replace(peer, task_results=[item for item in peer.task_results if item.task_name not in other])


def _means_over(model_results: ModelResults, tasks: list[str], categories: dict[str, str], used: list[str]) -> list:
    """`model_results`' mean per category of `used` over exactly this model's `tasks` of it; None (—) where it lacks
    one of them, so that no mean of the table averages fewer tasks than the heading says."""
    means = model_results.category_means(tasks)
    scored = set(model_results.scores)
    return [
        means.get(category) if all(t in scored for t in tasks if categories[t] == category) else None
        for category in used
    ]
