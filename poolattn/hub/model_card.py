"""The model card of a published poolattn model: Python computes the metadata, values and tables, and the prose is
the jinja2 template `model_card_template.md`, rendered with `huggingface_hub.ModelCard.from_template`.

>>> base_model_id("smollm2-135m")
'HuggingFaceTB/SmolLM2-135M-Instruct'
>>> from poolattn.hub.card_tables import describe_data_source
>>> describe_data_source("sentence-transformers/all-nli")
'[sentence-transformers/all-nli](https://huggingface.co/datasets/sentence-transformers/all-nli):'

What the card says comes from the exported folder, read as a `manifest.ExportedModel`: the config (the design), the
parameter counts, and the typed training manifest (older schema versions are upgraded on read; a model written with
`save_pretrained` has none, and the card says so). With an evaluation's results (`results.ModelResults`) it adds the
MTEB scores, as a table and as the `model-index` metadata, and Wilcoxon tests against the other variants' results.
"""

import json
from pathlib import Path

from ..evaluation.results import ModelResults, unscored_categories
from ..model_folder import ExportedModel
from .card_tables import (
    base_model_id,
    describe_design,
    evaluation_tables,
    hub_id_or_none,
    training_rows,
)

TEMPLATE = Path(__file__).resolve().parent / "model_card_template.md"


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
        untrained=bool(model.manifest and model.manifest.stop and model.manifest.stop.reason == "untrained"),
        results=results,
        scores_table=tables["scores"],
        unscored_categories=unscored_categories(results) if results else [],
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
    from ..onnx_poolattn import ONNX_FOLDER
    from .onnx_export import EXPORT_RECORD, OnnxExport

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
