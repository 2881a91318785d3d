"""Configuration of a poolattn embedding model: a decoder backbone, an attention switch and a pooling head.

Part of the self-contained Hub remote-code pair (`configuration_poolattn.py` + `modeling_poolattn.py`); it imports
only torch/transformers and the standard library.
"""

import os

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# One tuple of allowed values per design axis.
ATTENTIONS = ("causal", "bidirectional")
POOLINGS = ("eos", "mean", "latent", "multi_layer_latent")
HEAD_INPUTS = ("last_token", "all_tokens")
LAYER_SUMMARIES = ("eos", "mean")
LATENT_ORIENTATIONS = ("latents_query", "inputs_query")
HEAD_ATTENTIONS = ("multihead", "single", "hierarchical")
LAYER_SPEC_FORMS = ("all", "last:K", "middle:K", "first:K", "a list of layer indices")
TRAINABLE_POOLINGS = ("latent", "multi_layer_latent")

# The paper's five designs (Tang & Yang 2024, arXiv 2409.02727, Table 1) as presets over the axes above.
# Axes left out take their attention-dependent defaults (see `PoolAttnConfig`).
PAPER_VARIANTS = {
    1: {"attention": "causal", "pooling": "eos"},  # EOS-last token pooling
    2: {"attention": "causal", "pooling": "latent"},  # last-layer trainable pooling
    3: {"attention": "causal", "pooling": "multi_layer_latent"},  # multi-layers trainable pooling
    4: {"attention": "bidirectional", "pooling": "latent"},  # last-layer trainable pooling, bidirectional
    5: {"attention": "bidirectional", "pooling": "multi_layer_latent"},  # multi-layers trainable, bidirectional
}
# Designs users train elsewhere, as baselines beside the paper's five: the masked mean of the last layer under causal
# attention (sentence-transformers' default for a decoder) and under bidirectional attention (llm2vec, KaLM,
# EmbeddingGemma). Named, not numbered, so that results, cards and tables never take them for a paper variant.
BASELINE_DESIGNS = {
    "mean-causal": {"attention": "causal", "pooling": "mean"},
    "mean-bidirectional": {"attention": "bidirectional", "pooling": "mean"},
}
DESIGNS = {**PAPER_VARIANTS, **BASELINE_DESIGNS}


def variant_tag(variant) -> str:
    """How names and folders call a design: `v<N>` for a paper variant, the baseline's own name otherwise.

    >>> variant_tag(5), variant_tag("mean-causal")
    ('v5', 'mean-causal')
    """
    return f"v{variant}" if isinstance(variant, int) else str(variant)


def _check_choice(name: str, value, allowed: tuple) -> None:
    if type(value) not in {type(option) for option in allowed} or value not in allowed:
        raise ValueError(
            f"PoolAttnConfig: {name}={value!r} is not supported. Allowed values: {', '.join(map(repr, allowed))}."
        )


def _check_positive_int(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"PoolAttnConfig: {name}={value!r} must be a positive integer (or None for the default).")


def resolve_layers(spec, num_hidden_layers: int) -> list[int]:
    """Turn a layer spec into sorted 1-based decoder-layer indices (layer `L` is the final-normed last layer).

    >>> resolve_layers("last:3", 30)
    [28, 29, 30]
    >>> resolve_layers("middle:2", 6), resolve_layers([1, -1], 6)
    ([3, 4], [1, 6])

    Allowed forms: `"all"`, `"last:K"`, `"middle:K"`, `"first:K"` (1 <= K <= depth), or a list of indices in
    `1..depth` (negative indices count from the end, `-1` is the last layer).
    """
    depth = num_hidden_layers
    allowed = (
        f"Allowed forms: {', '.join(LAYER_SPEC_FORMS)}; indices 1..{depth} or -{depth}..-1 (backbone depth {depth})."
    )
    if isinstance(spec, str):
        if spec == "all":
            return list(range(1, depth + 1))
        form, _, count = spec.partition(":")
        if form not in ("last", "middle", "first") or not count.strip().isdigit():
            raise ValueError(f"PoolAttnConfig: layers={spec!r} is not a valid layer spec. {allowed}")
        k = int(count)
        if not 1 <= k <= depth:
            raise ValueError(
                f"PoolAttnConfig: layers={spec!r} asks for {k} layers of a {depth}-layer backbone. {allowed}"
            )
        start = {"first": 1, "last": depth - k + 1, "middle": (depth - k) // 2 + 1}[form]
        return list(range(start, start + k))
    if not isinstance(spec, (list, tuple)) or not spec:
        raise ValueError(f"PoolAttnConfig: layers={spec!r} is empty or of the wrong type. {allowed}")
    indices = []
    for index in spec:
        if isinstance(index, bool) or not isinstance(index, int) or not (1 <= index <= depth or -depth <= index <= -1):
            raise ValueError(
                f"PoolAttnConfig: layer index {index!r} in layers={list(spec)!r} is out of range. {allowed}"
            )
        indices.append(index if index > 0 else depth + 1 + index)
    if len(set(indices)) != len(indices):
        raise ValueError(f"PoolAttnConfig: layers={list(spec)!r} names a layer twice. {allowed}")
    return sorted(indices)


def check_matryoshka_dims(dims, hidden_size: int) -> None:
    """Raise `ValueError` unless `dims` are distinct integers ascending from 1 to below `hidden_size`.

    >>> check_matryoshka_dims([64, 128], 576)
    >>> check_matryoshka_dims([128, 64], 576)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: matryoshka_dims=[128, 64] must be distinct integers in ascending order, each from 1 to 575 ...
    """
    valid = (
        isinstance(dims, list)
        and dims
        and all(type(dim) is int and 1 <= dim < hidden_size for dim in dims)
        and all(a < b for a, b in zip(dims, dims[1:]))
    )
    if not valid:
        example = [size for size in (64, 128, hidden_size // 2) if size < hidden_size] or [1]
        raise ValueError(
            f"matryoshka_dims={dims!r} must be distinct integers in ascending order, each from 1 to "
            f"{hidden_size - 1} (the full size {hidden_size} is always trained), e.g. {example}."
        )


class PoolAttnConfig(PreTrainedConfig):
    r"""
    Configuration of [`PoolAttnEmbeddingModel`]: a decoder LLM (nested `text_config`), an attention switch and a
    pooling head, one string per design axis.

    ```python
    >>> from transformers import LlamaConfig
    >>> from poolattn import PoolAttnConfig
    >>> backbone = LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
    ...                        num_attention_heads=4, num_key_value_heads=2)
    >>> config = PoolAttnConfig.from_variant(5, backbone, layers="last:2")
    >>> config.attention, config.pooling, config.layer_summary, config.num_heads
    ('bidirectional', 'multi_layer_latent', 'mean', 4)

    ```

    Args:
        text_config: the backbone config (any decoder `AutoConfig`: llama, mistral, qwen2, qwen3, gemma2, ...).
        attention: `"causal"` or `"bidirectional"` (switched with the backbone's `config.is_causal = False`).
        pooling: `"eos"` (hidden state of the last real token), `"mean"` (masked mean of the last layer),
            `"latent"` (trainable cross-attention head over the last layer), `"multi_layer_latent"` (the paper's
            multi-layers trainable pooling: one summary per selected layer, a per-layer weight matrix, then the head).
        head_input: for `"latent"`, what the head sees: `"last_token"` (the last real token's state) or
            `"all_tokens"` (every real token, padding masked). Default: `"last_token"` under causal attention,
            `"all_tokens"` under bidirectional, as in the paper's code.
        layer_summary: for `"multi_layer_latent"`, how each layer is summarised: `"eos"` or `"mean"`. Default:
            `"eos"` under causal attention, `"mean"` under bidirectional, as in the paper's code.
        latent_orientation: `"latents_query"` (the paper: trainable latents attend over the inputs, then a mean over
            latents) or `"inputs_query"` (NV-Embed: the inputs attend over trainable latents, then a masked mean).
        layers: for `"multi_layer_latent"`: `"all"`, `"last:K"`, `"middle:K"`, `"first:K"` or a list of indices
            (1-based; layer `L` is the final-normed last layer; negatives count from the end).
        layer_weights: add the trainable per-layer weight (position) matrix to the layer summaries.
        layer_weights_init_std: the matrix starts as normal(0, std). 0 (the default) starts it at zero, a no-op
            that training has to move; 1.0 is the paper's code (an `nn.Embedding`, normal(0, 1)), which makes the
            layers distinguishable to the head from the first step. It is the size of the matrix as it enters (with
            the multiplier below).
        layer_weights_multiplier: the matrix enters as `multiplier * parameter` (1.0, the default, is the paper).
            With Adam a multiplier m moves the matrix m times as fast as the rest of the head at the same learning
            rate: a rate of its own that lives in the model, so every optimizer, schedule and resume keeps it. At the
            head rates that suit the head (~1e-4) a zero-started matrix barely moves in a few hundred steps (mean
            |w| ~3e-4 against layer summaries of size 1-27); m = 100 lets it reach their scale.
        head_attention: `"multihead"`, `"single"` (one head spanning the whole head width) or `"hierarchical"`
            (`multi_layer_latent` only): the latents attend within each group of `layer_group_size` consecutive
            selected layers (the group's summary is the mean of the attended latents), then a second block attends
            across the group summaries and applies the feed-forward.
        layer_group_size: consecutive layers per group for `"hierarchical"` (the last group may be shorter).
        num_latents: trainable latent vectors. Default `hidden_size // 64` (64 for a 4096-wide backbone, 9 for
            SmolLM2's 576; the paper's code used 768, which makes the head's feed-forward cost ~20% of a 135M
            backbone's encode time on short texts).
        num_heads: cross-attention heads. Default: the backbone's `num_attention_heads` (1 when `"single"`).
        head_dim: width of one head. Default `hidden_size // num_heads`, so the head is as wide as the backbone.
        ffn_multiplier: GEGLU feed-forward width as a multiple of `hidden_size` (the paper uses 4); 0 drops it.
        normalize: L2-normalise the output embeddings.
        add_eos: append the tokenizer's EOS token when the tokenizer does not (Qwen2 tokenizers ignore
            `add_eos_token`); EOS pooling then reads the EOS state.
        max_length: default maximum tokens per text in `encode`, prompt and special tokens included.
        variant: the design this config was built from, if any: a paper variant (1-5) or a baseline design's name
            (`BASELINE_DESIGNS`, e.g. `"mean-causal"`); informational.
        matryoshka_dims: the embedding prefixes the model was trained to use on their own (a Matryoshka loss,
            `train.py --matryoshka_dims`), ascending and below `hidden_size`; `encode(truncate_dim=...)` takes only
            these (or the full size). None: trained at the full size only.
    """

    model_type = "poolattn"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    attention: str = "causal"
    pooling: str = "eos"
    head_input: str | None = None
    layer_summary: str | None = None
    latent_orientation: str = "latents_query"
    layers: str | list[int] = "all"
    layer_weights: bool = True
    layer_weights_init_std: float = 0.0
    layer_weights_multiplier: float = 1.0
    head_attention: str = "multihead"
    layer_group_size: int = 4
    num_latents: int | None = None
    num_heads: int | None = None
    head_dim: int | None = None
    ffn_multiplier: int = 4
    normalize: bool = True
    add_eos: bool = True
    max_length: int = 512
    variant: int | str | None = None
    matryoshka_dims: list[int] | None = None

    def __post_init__(self, **kwargs):
        self._refuse_misspelled_fields(kwargs)
        super().__post_init__(**kwargs)
        self._check_fields()
        self._fill_derived_defaults()

    @classmethod
    def own_fields(cls) -> list[str]:
        """The design's fields (`pooling`, `layers`, ...): not `PreTrainedConfig`'s, not the backbone's config."""
        inherited = set(getattr(PreTrainedConfig, "__dataclass_fields__", {}))
        return [name for name in cls.__dataclass_fields__ if name not in inherited and name != "text_config"]

    @classmethod
    def _refuse_misspelled_fields(cls, extra: dict) -> None:
        """A keyword that is not a field but close to one (`poolng="mean"`) is a typo, not a custom attribute: kept,
        it would silently leave the field at its default."""
        import difflib

        own = cls.own_fields()
        for key in extra:
            close = difflib.get_close_matches(key, own, n=1, cutoff=0.8)
            if close and key not in own:
                raise ValueError(
                    f"PoolAttnConfig: {key}={extra[key]!r} is not a field; did you mean {close[0]}=? "
                    f"Fields: {', '.join(own)}."
                )

    def _check_fields(self) -> None:
        """Step 1: raise `ValueError` for a given field that is out of range or contradicts another one.

        Not named `validate*`: `PreTrainedConfig.validate` exists, and `validate_*` methods are strict-dataclass
        class validators in transformers 5.
        """
        _check_choice("attention", self.attention, ATTENTIONS)
        _check_choice("pooling", self.pooling, POOLINGS)
        _check_choice("latent_orientation", self.latent_orientation, LATENT_ORIENTATIONS)
        _check_choice("head_attention", self.head_attention, HEAD_ATTENTIONS)
        for name in ("layer_weights", "normalize", "add_eos"):
            _check_choice(name, getattr(self, name), (True, False))
        for name in ("num_latents", "num_heads", "head_dim", "max_length", "layer_group_size"):
            _check_positive_int(name, getattr(self, name))
        multiplier = self.ffn_multiplier
        if isinstance(multiplier, bool) or not isinstance(multiplier, int) or multiplier < 0:
            raise ValueError(f"PoolAttnConfig: ffn_multiplier={multiplier!r} must be an integer >= 0.")
        std = self.layer_weights_init_std
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not 0 <= std < float("inf"):
            raise ValueError(
                f"PoolAttnConfig: layer_weights_init_std={std!r} must be a finite number >= 0 "
                "(0: start the layer-weight matrix at zero; 1.0: the paper's normal(0, 1))."
            )
        multiplier = self.layer_weights_multiplier
        if (
            isinstance(multiplier, bool)
            or not isinstance(multiplier, (int, float))
            or not 0 < multiplier < float("inf")
        ):
            raise ValueError(
                f"PoolAttnConfig: layer_weights_multiplier={multiplier!r} must be a finite number > 0 "
                "(1.0: the paper; m > 1 moves the layer-weight matrix m times as fast)."
            )
        if self.variant is not None:
            _check_choice("variant", self.variant, tuple(DESIGNS))
        if self.head_input is not None:
            _check_choice("head_input", self.head_input, HEAD_INPUTS)
        if self.layer_summary is not None:
            _check_choice("layer_summary", self.layer_summary, LAYER_SUMMARIES)
        if isinstance(self.layers, tuple):
            self.layers = list(self.layers)  # JSON-friendly; the one normalisation done here, before the check
        if self.matryoshka_dims is not None:
            self.matryoshka_dims = list(self.matryoshka_dims)
            check_matryoshka_dims(self.matryoshka_dims, self.text_config.hidden_size)
        resolve_layers(self.layers, self.text_config.num_hidden_layers)  # validates against the backbone depth
        if self.head_attention == "hierarchical" and self.pooling != "multi_layer_latent":
            raise ValueError(
                f"PoolAttnConfig: head_attention='hierarchical' groups consecutive layers, so it needs "
                f"pooling='multi_layer_latent' (got pooling={self.pooling!r}). Use 'multihead' or 'single' here."
            )
        if self.pooling in TRAINABLE_POOLINGS and self.head_attention == "single" and self.num_heads not in (None, 1):
            raise ValueError(
                f"PoolAttnConfig: head_attention='single' uses one head, but num_heads={self.num_heads} was given. "
                "Drop num_heads or use head_attention='multihead'."
            )

    def _fill_derived_defaults(self) -> None:
        """Step 2: the backbone's attention switch, then each `None` field's attention- or backbone-dependent default.

        Raises only where a default cannot be derived (a `num_heads` that does not divide `hidden_size`).
        """
        self.text_config.is_causal = self.attention == "causal"
        self.text_config.use_cache = False
        if os.path.isabs(self.text_config.name_or_path):  # a machine's backbone folder: its name is what it says
            self.text_config.name_or_path = os.path.basename(os.path.normpath(self.text_config.name_or_path))
        bidirectional = self.attention == "bidirectional"
        if self.pooling == "latent" and self.head_input is None:
            self.head_input = "all_tokens" if bidirectional else "last_token"
        if self.pooling == "multi_layer_latent" and self.layer_summary is None:
            self.layer_summary = "mean" if bidirectional else "eos"
        if self.pooling in TRAINABLE_POOLINGS:
            self._fill_head_sizes()

    def _fill_head_sizes(self) -> None:
        """num_heads, head_dim and num_latents default from the backbone, so the head is as wide as the backbone."""
        hidden_size = self.text_config.hidden_size
        if self.head_attention == "single":
            self.num_heads = 1
        elif self.num_heads is None:
            self.num_heads = self.text_config.num_attention_heads
        if self.head_dim is None:
            if hidden_size % self.num_heads:
                raise ValueError(
                    f"PoolAttnConfig: hidden_size={hidden_size} is not divisible by num_heads={self.num_heads}; "
                    "pass head_dim explicitly or choose num_heads that divides it."
                )
            self.head_dim = hidden_size // self.num_heads
        if self.num_latents is None:
            self.num_latents = max(1, hidden_size // 64)

    @property
    def layer_indices(self) -> list[int]:
        """1-based decoder-layer indices pooled by `multi_layer_latent` (layer L is the final-normed last layer)."""
        return resolve_layers(self.layers, self.text_config.num_hidden_layers)

    @classmethod
    def from_variant(cls, variant: int | str, text_config, **overrides) -> "PoolAttnConfig":
        """Config for one of the paper's variants 1-5 (`PAPER_VARIANTS`) or a baseline design (`BASELINE_DESIGNS`);
        `overrides` set any other field.

        >>> from transformers import LlamaConfig
        >>> PoolAttnConfig.from_variant(1, LlamaConfig(num_hidden_layers=2)).pooling
        'eos'
        """
        if type(variant) not in (int, str) or variant not in DESIGNS:
            raise ValueError(
                f"PoolAttnConfig.from_variant: variant={variant!r} is not a paper variant or baseline design. Allowed "
                f"values: {', '.join(map(repr, DESIGNS))} ({_describe_variants()})."
            )
        preset = DESIGNS[variant]
        changes_preset = any(overrides.get(key, value) != value for key, value in preset.items())
        fields = {**preset, **overrides}
        fields.setdefault("variant", None if changes_preset else variant)
        if isinstance(text_config, PreTrainedConfig):
            text_config = text_config.to_dict()
        return cls(text_config=text_config, **fields)


def _describe_variants() -> str:
    return "; ".join(f"{n}: {v['pooling']} + {v['attention']}" for n, v in DESIGNS.items())
