"""PoolAttnConfig: variant table, defaults relative to the backbone, validation, config.json round trip."""

import pytest
from conftest import BASELINES, FAMILIES, VARIANTS, tiny_text_config

from poolattn import PoolAttnConfig, resolve_layers
from poolattn.configuration_poolattn import (
    ATTENTIONS,
    DESIGNS,
    HEAD_ATTENTIONS,
    HEAD_INPUTS,
    LATENT_ORIENTATIONS,
    LAYER_SUMMARIES,
    POOLINGS,
)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", VARIANTS + BASELINES)
def test_round_trip_through_config_json(family, variant, tmp_path):
    config = PoolAttnConfig.from_variant(variant, tiny_text_config(family), layers="last:2")
    config.save_pretrained(tmp_path)
    reloaded = PoolAttnConfig.from_pretrained(tmp_path)
    assert type(reloaded.text_config) is type(config.text_config)
    assert reloaded.text_config.model_type == family
    assert reloaded.to_dict() == config.to_dict()
    assert reloaded.text_config.is_causal is (DESIGNS[variant]["attention"] == "causal")
    assert reloaded.variant == variant


def test_variant_table_and_attention_dependent_defaults():
    text_config = tiny_text_config()
    expected = {
        1: ("causal", "eos", None, None),
        2: ("causal", "latent", "last_token", None),
        3: ("causal", "multi_layer_latent", None, "eos"),
        4: ("bidirectional", "latent", "all_tokens", None),
        5: ("bidirectional", "multi_layer_latent", None, "mean"),
    }
    for variant, (attention, pooling, head_input, layer_summary) in expected.items():
        config = PoolAttnConfig.from_variant(variant, text_config)
        assert (config.attention, config.pooling, config.head_input, config.layer_summary) == (
            attention,
            pooling,
            head_input,
            layer_summary,
        )
        assert config.variant == variant


def test_overrides_win_and_a_changed_preset_drops_the_variant_label():
    config = PoolAttnConfig.from_variant(5, tiny_text_config(), layer_summary="eos", num_latents=3)
    assert (config.layer_summary, config.num_latents, config.variant) == ("eos", 3, 5)
    assert PoolAttnConfig.from_variant(5, tiny_text_config(), attention="causal").variant is None


def test_head_sizes_default_relative_to_the_backbone():
    wide = tiny_text_config(hidden_size=256, num_attention_heads=8, head_dim=32)
    config = PoolAttnConfig.from_variant(2, wide)
    assert (config.num_heads, config.head_dim, config.num_latents) == (8, 32, 4)  # heads of the backbone, hidden/64
    single = PoolAttnConfig.from_variant(2, wide, head_attention="single")
    assert (single.num_heads, single.head_dim) == (1, 256)
    assert PoolAttnConfig.from_variant(1, wide).num_heads is None  # no head, nothing resolved


def test_user_text_config_is_not_mutated():
    text_config = tiny_text_config()
    PoolAttnConfig.from_variant(5, text_config)
    assert getattr(text_config, "is_causal", True) is True


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("all", [1, 2, 3, 4, 5, 6]),
        ("last:2", [5, 6]),
        ("first:2", [1, 2]),
        ("middle:2", [3, 4]),
        ("middle:3", [2, 3, 4]),
        ("last:6", [1, 2, 3, 4, 5, 6]),
        ([6, 1, -2], [1, 5, 6]),
    ],
)
def test_layer_specs(spec, expected):
    assert resolve_layers(spec, 6) == expected


INVALID_VALUES = [
    ("attention", "sliding", ATTENTIONS),
    ("pooling", "max", POOLINGS),
    ("pooling", "EOS", POOLINGS),
    ("head_input", "first_token", HEAD_INPUTS),
    ("layer_summary", "max", LAYER_SUMMARIES),
    ("latent_orientation", "both", LATENT_ORIENTATIONS),
    ("head_attention", "grouped", HEAD_ATTENTIONS),
    ("normalize", "yes", (True, False)),
    ("add_eos", 1, (True, False)),
    ("layer_weights", None, (True, False)),
    ("variant", 6, (1, 2, 3, 4, 5)),
]


@pytest.mark.parametrize("field, value, allowed", INVALID_VALUES)
def test_invalid_axis_value_names_what_is_allowed(field, value, allowed):
    with pytest.raises(ValueError) as error:
        PoolAttnConfig(text_config=tiny_text_config().to_dict(), **{"pooling": "latent", field: value})
    message = str(error.value)
    assert repr(value) in message and all(repr(option) in message for option in allowed)


@pytest.mark.parametrize(
    "layers",
    ["last:4", "first:0", "middle:-1", "last:", "last:two", "every:2", "", [], [0], [4], [-4], [1, 1], [1, "2"], 3],
)
def test_bad_layer_specs_raise_with_allowed_forms(layers):
    with pytest.raises(ValueError, match=r"Allowed forms: all, last:K, middle:K, first:K.*depth 3"):
        PoolAttnConfig(text_config=tiny_text_config().to_dict(), pooling="multi_layer_latent", layers=layers)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"num_heads": 0}, "num_heads=0 must be a positive integer"),
        ({"num_latents": 2.5}, "num_latents=2.5 must be a positive integer"),
        ({"max_length": -1}, "max_length=-1 must be a positive integer"),
        ({"ffn_multiplier": -1}, "ffn_multiplier=-1 must be an integer >= 0"),
        ({"head_attention": "single", "num_heads": 4}, "head_attention='single' uses one head"),
        ({"num_heads": 5}, "hidden_size=32 is not divisible by num_heads=5"),
        ({"head_attention": "hierarchical"}, "head_attention='hierarchical' groups consecutive layers"),
        ({"layer_group_size": 0}, "layer_group_size=0 must be a positive integer"),
        ({"layer_weights_init_std": -1.0}, r"layer_weights_init_std=-1.0 must be a finite number >= 0"),
        ({"layer_weights_init_std": "1"}, r"layer_weights_init_std='1' must be a finite number >= 0"),
    ],
)
def test_bad_head_sizes(fields, match):
    with pytest.raises(ValueError, match=match):
        PoolAttnConfig(text_config=tiny_text_config().to_dict(), pooling="latent", **fields)


def test_from_variant_rejects_unknown_variant():
    allowed = r"Allowed values: 1, 2, 3, 4, 5, 'mean-causal', 'mean-bidirectional'"
    with pytest.raises(ValueError, match=r"variant=7 is not a paper variant or baseline design. " + allowed):
        PoolAttnConfig.from_variant(7, tiny_text_config())
    with pytest.raises(ValueError, match=r"variant='5' is not a paper variant"):  # the number, not its string
        PoolAttnConfig.from_variant("5", tiny_text_config())


def test_baseline_designs_are_mean_pooling_under_each_attention():
    causal = PoolAttnConfig.from_variant("mean-causal", tiny_text_config())
    bidirectional = PoolAttnConfig.from_variant("mean-bidirectional", tiny_text_config())
    assert (causal.pooling, causal.attention, causal.text_config.is_causal) == ("mean", "causal", True)
    assert (bidirectional.pooling, bidirectional.attention, bidirectional.text_config.is_causal) == (
        "mean",
        "bidirectional",
        False,
    )
    with pytest.raises(ValueError, match=r"variant='mean' is not supported"):
        PoolAttnConfig(text_config=tiny_text_config().to_dict(), pooling="mean", variant="mean")


def test_post_init_steps_do_not_shadow_transformers_config_methods():
    from transformers import PreTrainedConfig

    steps = ("_check_fields", "_fill_derived_defaults", "_fill_head_sizes")
    assert not set(steps) & set(dir(PreTrainedConfig))
    assert not any(name.startswith("validate") for name in steps)  # `validate_*` = strict-dataclass class validators
    config = PoolAttnConfig.from_variant(5, tiny_text_config())
    config.validate()  # transformers' own validation still runs on a poolattn config
