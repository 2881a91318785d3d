"""PoolAttnEmbeddingModel: a decoder LLM turned into a text-embedding model with the pooling and attention designs of
Tang & Yang, "Pooling And Attention: What Are Effective Designs For LLM-Based Embedding Models?" (arXiv 2409.02727).

Part of the self-contained Hub remote-code pair: imports only torch, transformers, the standard library and
`.configuration_poolattn`, so `AutoModel.from_pretrained(folder, trust_remote_code=True)` works without poolattn.

Read top-down: tokenization helpers -> pooling helpers -> the trainable head -> the model.
"""

import contextlib
import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput
from transformers.utils.logging import tqdm

from .configuration_poolattn import PoolAttnConfig

logger = logging.getLogger(__name__)

# what `from_pretrained` passes on to the tokenizer and to the backbone's files: where they come from, and how
HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only")


# ---------------------------------------------------------------------------------------------------------------------
# Tokenization: prompt tokens are marked so that pooling can leave them out.
# ---------------------------------------------------------------------------------------------------------------------


def special_token_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text, e.g. `([bos_id], [])` for Mistral."""
    plain = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    framed = tokenizer("hello world")["input_ids"]
    for start in range(len(framed) - len(plain) + 1):
        if framed[start : start + len(plain)] == plain:
            return framed[:start], framed[start + len(plain) :]
    return [], []


SENTENCE_TRANSFORMERS_FILES = ("sentence_transformers_poolattn.py", "onnx_poolattn.py")  # the module, its ONNX twin


def write_sentence_transformers_modules(folder, max_length: int, sources) -> bool:
    """The sentence-transformers files of a poolattn folder, so `SentenceTransformer(folder, trust_remote_code=True)`
    equals `encode`: modules.json (our module alone, no Pooling: the model pools itself), sentence_bert_config.json
    and the module's code, copied from the first folder of `sources` that holds it. False, with nothing written, where
    none does (this file's Hub copy alone: sentence-transformers would then mean-pool the bare backbone)."""
    folder = Path(folder)
    holds = [
        Path(source)
        for source in sources
        if all((Path(source) / name).is_file() for name in SENTENCE_TRANSFORMERS_FILES)
    ]
    if not holds:
        return False
    for name in SENTENCE_TRANSFORMERS_FILES:
        if not (folder / name).exists() or not (folder / name).samefile(holds[0] / name):
            shutil.copy2(holds[0] / name, folder / name)
    module = SENTENCE_TRANSFORMERS_FILES[0].removesuffix(".py") + ".PoolAttnTransformer"
    files = {
        "modules.json": [{"idx": 0, "name": "0", "path": "", "type": module}],
        "sentence_bert_config.json": {
            "transformer_task": "feature-extraction",
            "modality_config": {"text": {"method": "forward", "method_output_name": "embeddings"}},
            "module_output_name": "sentence_embedding",
            "max_seq_length": max_length,
        },
    }
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    return True


def tokenizer_appending_eos(tokenizer):
    """A copy of `tokenizer` whose own special-token frame ends with EOS (its post-processor appends it), so that
    `tokenizer(texts)`, a feature-extraction pipeline and `model(**tokenizer(texts))` give `encode`'s tokens; or
    `tokenizer` itself when it appends EOS already or its frame is not the plain `[bos?] text` this can extend."""
    import copy

    prefix, suffix = special_token_frame(tokenizer)
    bos_id, eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    if eos_id is None or suffix or prefix not in ([], [bos_id]) or not hasattr(type(tokenizer), "add_eos_token"):
        return tokenizer
    extended = copy.deepcopy(tokenizer)
    try:
        extended.add_bos_token = bool(prefix)
        extended.add_eos_token = True
    except (AttributeError, TypeError, ValueError):  # a tokenizer without a template post-processor
        return tokenizer
    return extended if special_token_frame(extended) == (prefix, [eos_id]) else tokenizer


def tokenize_for_embedding(tokenizer, texts, *, prompt=None, max_length: int, add_eos: bool) -> list[dict]:
    """Token ids and a pooling mask per text: `special prefix + prompt + text + special suffix (+ EOS)`.

    >>> tokenizer = AutoTokenizer.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")  # doctest: +SKIP
    >>> tokenize_for_embedding(tokenizer, ["a cat"], prompt="Query: ", max_length=32, add_eos=True)  # doctest: +SKIP
    [{'input_ids': [22731, 42, 216, 81, 2644, 2], 'pooling_mask': [0, 0, 0, 1, 1, 1]}]

    The prompt (one string for all texts, or one per text) is tokenized on its own and its tokens get 0 in the
    pooling mask, so mean and latent pooling see the text only (as NV-Embed and llm2vec do); the prompt still
    conditions every text token through attention. Texts are truncated so the whole sequence fits `max_length`;
    the EOS token is appended when `add_eos` and the tokenizer does not add it itself.
    """
    if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__} holding non-strings.")
    prompts = [prompt] * len(texts) if prompt is None or isinstance(prompt, str) else list(prompt)
    if len(prompts) != len(texts):
        raise ValueError(f"Got {len(prompts)} prompts for {len(texts)} texts; give one prompt, or one per text.")
    if not texts:
        return []
    prefix, suffix = special_token_frame(tokenizer)
    eos_id = tokenizer.eos_token_id
    eos = [eos_id] if add_eos and eos_id is not None and suffix[-1:] != [eos_id] else []
    text_ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    prompt_ids = {p: tokenizer(p, add_special_tokens=False)["input_ids"] if p else [] for p in set(prompts)}
    features = []
    for ids, text_prompt in zip(text_ids, prompts):
        head = prefix + prompt_ids[text_prompt]
        budget = max_length - len(head) - len(suffix) - len(eos)
        if budget < 1:
            raise ValueError(
                f"max_length={max_length} leaves no room for text after {len(head)} prefix/prompt tokens; "
                "raise max_length or shorten the prompt."
            )
        input_ids = head + ids[:budget] + suffix + eos
        pooling_mask = [1] * len(prefix) + [0] * (len(head) - len(prefix)) + [1] * (len(input_ids) - len(head))
        features.append({"input_ids": input_ids, "pooling_mask": pooling_mask})
    return features


def pad_token_id_for(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id (decoder tokenizers often have no pad token), else 0."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0


def pad_features(features: list[dict], *, pad_token_id: int, padding_side: str) -> dict[str, torch.Tensor]:
    """Pad `tokenize_for_embedding` outputs into `input_ids`, `attention_mask`, `pooling_mask`, each (batch, seq)."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side={padding_side!r} is not supported. Allowed values: 'left', 'right'.")
    width = max(len(feature["input_ids"]) for feature in features)
    batch = {"input_ids": [], "attention_mask": [], "pooling_mask": []}
    for feature in features:
        length = len(feature["input_ids"])
        rows = {
            "input_ids": feature["input_ids"],
            "attention_mask": [1] * length,
            "pooling_mask": feature["pooling_mask"],
        }
        for key, row in rows.items():
            padding = [pad_token_id if key == "input_ids" else 0] * (width - length)
            batch[key].append(padding + row if padding_side == "left" else row + padding)
    return {key: torch.tensor(rows, dtype=torch.long) for key, rows in batch.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Pooling helpers: mask-aware, correct for left and right padding.
# ---------------------------------------------------------------------------------------------------------------------


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, seq) mask -> (batch,) index of each row's last real token, for left or right padding."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(dim=1)


def last_token_state(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, seq, hidden) -> (batch, hidden): the state of each row's last real token."""
    rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
    return hidden_states[rows, last_token_index(attention_mask)]


def masked_mean(hidden_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(batch, seq, hidden), (batch, seq) -> (batch, hidden) in float32: the mean over positions where mask is 1."""
    counts = mask.sum(dim=1, keepdim=True).clamp(min=1).float()
    if hidden_states.dtype == torch.float16:  # a sum of hundreds of positions passes fp16's 65504: average as it sums
        weights = (mask.float() / counts).to(torch.float16).unsqueeze(1)
        return torch.bmm(weights, hidden_states).squeeze(1).float()
    weights = mask.to(hidden_states.dtype).unsqueeze(1)  # (batch, 1, seq)
    sums = torch.bmm(weights, hidden_states).squeeze(1).float()  # (batch, hidden), no (batch, seq, hidden) copy
    return sums / counts


# ---------------------------------------------------------------------------------------------------------------------
# The trainable head: a Perceiver-style cross-attention block over trainable latents (the paper's pooling layer).
# ---------------------------------------------------------------------------------------------------------------------


class GEGLUFeedForward(nn.Module):
    """Pre-norm GEGLU feed-forward: (..., hidden) -> (..., hidden)."""

    def __init__(self, *, hidden_size: int, multiplier: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.up = nn.Linear(hidden_size, 2 * multiplier * hidden_size)
        self.down = nn.Linear(multiplier * hidden_size, hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        value, gate = self.up(self.norm(hidden)).chunk(2, dim=-1)
        return self.down(value * F.gelu(gate))


class LatentPooler(nn.Module):
    """Cross-attention between trainable latents and the inputs, a GEGLU feed-forward, then a mean.

    `latents_query` (the paper): the latents attend over the inputs (padded inputs masked); mean over latents.
    `inputs_query` (NV-Embed): each input attends over the latents; masked mean over the inputs.
    With `num_layers`, a trainable (num_layers, hidden) matrix is added to the per-layer inputs first.
    """

    def __init__(self, config: PoolAttnConfig, *, num_layers: int | None = None, feed_forward: bool = True):
        super().__init__()
        hidden_size = config.text_config.hidden_size
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.latents_are_queries = config.latent_orientation == "latents_query"
        inner_size = self.num_heads * self.head_dim
        self.latents = nn.Parameter(torch.empty(config.num_latents, hidden_size))
        self.layer_weights = nn.Parameter(torch.empty(num_layers, hidden_size)) if num_layers else None
        self.layer_weights_multiplier = config.layer_weights_multiplier
        self.query_norm = nn.LayerNorm(hidden_size)
        self.context_norm = nn.LayerNorm(hidden_size)
        self.to_query = nn.Linear(hidden_size, inner_size, bias=False)
        self.to_key_value = nn.Linear(hidden_size, 2 * inner_size, bias=False)
        self.to_out = nn.Linear(inner_size, hidden_size, bias=False)
        self.feed_forward = (
            GEGLUFeedForward(hidden_size=hidden_size, multiplier=config.ffn_multiplier)
            if config.ffn_multiplier and feed_forward
            else None
        )

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # (batch, heads, n, head_dim)

    def cross_attend(self, queries: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None):
        """(batch, n_q, hidden) attend over (batch, n_ctx, hidden); context_mask (batch, n_ctx), 1 = attend."""
        query = self._split_heads(self.to_query(self.query_norm(queries)))
        key, value = self.to_key_value(self.context_norm(context)).chunk(2, dim=-1)
        key, value = self._split_heads(key), self._split_heads(value)  # each (batch, heads, n_ctx, head_dim)
        attn_mask = None if context_mask is None else context_mask.bool()[:, None, None, :]
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask)
        return self.to_out(attended.transpose(1, 2).flatten(2))  # (batch, n_q, hidden)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, n, hidden) inputs, (batch, n) mask (1 = real) -> (batch, hidden)."""
        inputs = inputs.to(self.latents.dtype)
        if self.layer_weights is not None:
            inputs = inputs + self.layer_weights_multiplier * self.layer_weights  # (batch, layers, hidden)
        latents = self.latents.unsqueeze(0).expand(inputs.shape[0], -1, -1)  # (batch, num_latents, hidden)
        if self.latents_are_queries:
            hidden = latents + self.cross_attend(latents, inputs, mask)  # (batch, num_latents, hidden)
        else:
            hidden = inputs + self.cross_attend(inputs, latents, None)  # (batch, n, hidden)
        if self.feed_forward is not None:
            hidden = hidden + self.feed_forward(hidden)
        if self.latents_are_queries or mask is None:
            return hidden.mean(dim=1)
        return masked_mean(hidden, mask)


class HierarchicalLatentPooler(nn.Module):
    """Two levels of cross-attention over per-layer summaries: within groups of consecutive layers, then across them.

    (batch, layers, hidden) + the trainable layer-weight matrix -> groups of `layer_group_size` consecutive layers
    (the last one padded and masked) -> `within`: the latents attend over each group, no feed-forward, mean over
    latents -> (batch, groups, hidden) -> `across`: a full `LatentPooler` over the group summaries -> (batch, hidden).
    """

    def __init__(self, config: PoolAttnConfig, *, num_layers: int):
        super().__init__()
        self.group_size = config.layer_group_size
        hidden_size = config.text_config.hidden_size
        self.layer_weights = nn.Parameter(torch.empty(num_layers, hidden_size)) if config.layer_weights else None
        self.layer_weights_multiplier = config.layer_weights_multiplier
        self.within = LatentPooler(config, feed_forward=False)
        self.across = LatentPooler(config)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, layers, hidden) -> (batch, hidden); `mask` is unused (every layer summary is real)."""
        inputs = inputs.to(self.within.latents.dtype)
        if self.layer_weights is not None:
            inputs = inputs + self.layer_weights_multiplier * self.layer_weights
        batch, layers, hidden = inputs.shape
        groups = -(-layers // self.group_size)
        padding = groups * self.group_size - layers
        grouped = F.pad(inputs, (0, 0, 0, padding)).reshape(batch * groups, self.group_size, hidden)
        slot_is_real = torch.arange(groups * self.group_size, device=inputs.device) < layers
        group_mask = slot_is_real.reshape(1, groups, self.group_size).expand(batch, -1, -1).flatten(0, 1)
        summaries = self.within(grouped, group_mask).reshape(batch, groups, hidden)  # (batch, groups, hidden)
        return self.across(summaries)


# ---------------------------------------------------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------------------------------------------------


def named_backbone_hint(name_or_path, error: Exception) -> str | None:
    """What to call instead when a backbone failed to load under a name that may be one of poolattn's named backbones.

    >>> named_backbone_hint("smollm2-135m", OSError("not found")).split(";")[0]
    "'smollm2-135m' is neither a local folder nor a model the Hub could load (not found)"
    >>> named_backbone_hint("org/model", OSError("not found")) is None  # a Hub id: the loader's own error says it all
    True

    The Hub pair cannot import `poolattn.backbones`, so the only sign of a named backbone here is a name without a
    "/" that is not an existing path; `poolattn.from_backbone` resolves (fetches or builds) it first.
    """
    name = str(name_or_path)
    if "/" in name or os.sep in name or os.path.exists(name):
        return None
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (
        f"{name!r} is neither a local folder nor a model the Hub could load ({reason}); if it is one of poolattn's "
        f"named backbones, call poolattn.from_backbone({name!r}, ...) or PoolAttnEmbeddingModel.from_backbone("
        f"poolattn.backbones.resolve_backbone({name!r}), ...) with the same arguments: both fetch or build the named "
        "backbone (offline too) before loading it."
    )


@dataclass
class PoolAttnEmbeddingOutput(ModelOutput):
    """Output of [`PoolAttnEmbeddingModel`].

    Args:
        embeddings: (batch, hidden) float32 text embeddings, L2-normalised when `config.normalize`.
        last_hidden_state: (batch, seq, hidden) final-normed backbone states.
        layer_summaries: (batch, layers, hidden) per-layer summaries fed to the head (`multi_layer_latent` only).
    """

    embeddings: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    layer_summaries: torch.FloatTensor | None = None


class _WithoutLoadReport(logging.Filter):
    """Drops transformers' load report (used while `from_backbone` loads a backbone, whose report is expected)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


def uses_pooling_mask(config: PoolAttnConfig) -> bool:
    """Whether the design pools over `pooling_mask` (mean pooling, a head reading every token, layer summaries by
    mean), so that a row with no token left to pool (its prompt masked out of an empty text) has no embedding."""
    return (
        config.pooling == "mean"
        or (config.pooling == "latent" and config.head_input == "all_tokens")
        or (config.pooling == "multi_layer_latent" and config.layer_summary == "mean")
    )


def check_masks(attention_mask: torch.Tensor, pooling_mask: torch.Tensor, *, uses_pooling_mask: bool) -> None:
    """Every row has a token to embed and, where the pooling reads `pooling_mask`, a token to pool (else ValueError:
    the model would embed padding, or pool nothing into a vector that does not depend on the text). Also run by the
    ONNX route, whose traced graph has no such check."""
    if not attention_mask.bool().any(dim=1).all():
        empty = (~attention_mask.bool().any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(
            f"Rows {empty} have an all-zero attention_mask: no token to embed (EOS pooling would "
            "read a padding position). Drop those rows or give each at least one token."
        )
    if uses_pooling_mask and not pooling_mask.bool().any(dim=1).all():
        empty = (~pooling_mask.bool().any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(
            f"Rows {empty} have no token to pool (pooling_mask is all zero, e.g. an empty text with its prompt "
            "masked out). Give every text at least one token, or enable add_eos."
        )


class PoolAttnEmbeddingModel(PreTrainedModel):
    r"""A decoder backbone (`AutoModel.from_config(config.text_config)`), an attention switch and a pooling head.

    ```python
    >>> from transformers import LlamaConfig
    >>> from poolattn import PoolAttnConfig, PoolAttnEmbeddingModel
    >>> backbone = LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                        num_attention_heads=4, num_key_value_heads=2)
    >>> model = PoolAttnEmbeddingModel(PoolAttnConfig.from_variant(5, backbone)).eval()
    >>> ids = torch.tensor([[5, 6, 7, 2], [8, 9, 2, 0]])
    >>> model(input_ids=ids, attention_mask=(ids != 0).long()).embeddings.shape
    torch.Size([2, 32])

    ```

    Bidirectional attention is the backbone's own switch (`text_config.is_causal = False`), checked on load and on
    the first forward by `check_attention()`. Per-layer summaries are taken by forward hooks as each layer runs, so
    inference never holds every layer's full hidden states.
    """

    config_class = PoolAttnConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    accepts_loss_kwargs = False
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _no_split_modules = ["LatentPooler", "HierarchicalLatentPooler"]
    _keep_in_fp32_modules_strict = ["pooler"]

    def __init__(self, config: PoolAttnConfig):
        super().__init__(config)
        self.model = AutoModel.from_config(config.text_config)
        self.layer_indices = config.layer_indices if config.pooling == "multi_layer_latent" else []
        if self.layer_indices and not isinstance(getattr(self.model, "layers", None), nn.ModuleList):
            raise ValueError(
                f"pooling='multi_layer_latent' needs a backbone with a `layers` ModuleList; "
                f"{type(self.model).__name__} has none. Use pooling='latent', 'eos' or 'mean'."
            )
        self.pooler = None
        if config.pooling == "latent":
            self.pooler = LatentPooler(config)
        elif config.pooling == "multi_layer_latent" and config.head_attention == "hierarchical":
            self.pooler = HierarchicalLatentPooler(config, num_layers=len(self.layer_indices))
        elif config.pooling == "multi_layer_latent":
            self.pooler = LatentPooler(config, num_layers=len(self.layer_indices) if config.layer_weights else None)
        self.tokenizer = None  # set by from_backbone, or loaded from name_or_path by get_tokenizer()
        self.trust_remote_code = False  # whether get_tokenizer may run a tokenizer's code from the folder
        self.built_from_backbone = False  # set by from_backbone: `name_or_path` is then the backbone's
        self._attention_checked = config.attention == "causal"
        self._head_checked = False  # `_warn_if_head_frozen` at the first training forward
        self._uses_pooling_mask = uses_pooling_mask(config)
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)  # Linear: normal(initializer_range), LayerNorm: ones/zeros
        if isinstance(module, LatentPooler):
            std = getattr(self.config.text_config, "initializer_range", 0.02)
            init.normal_(module.latents, mean=0.0, std=std)
        if isinstance(module, (LatentPooler, HierarchicalLatentPooler)) and module.layer_weights is not None:
            std = self.config.layer_weights_init_std  # 0: start as a no-op; 1.0: the paper's nn.Embedding
            if std:  # the matrix as it enters: multiplier x parameter
                init.normal_(module.layer_weights, mean=0.0, std=std / self.config.layer_weights_multiplier)
            else:
                init.zeros_(module.layer_weights)

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    # -- attention check ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def check_attention(self) -> None:
        """Raise if a bidirectional model is in fact causal: a later token must change the first token's state.

        Runs one batch of two 3-token rows through the backbone (cheap); a no-op for causal models.
        """
        if self.config.attention == "causal" or any(p.device.type == "meta" for p in self.model.parameters()):
            self._attention_checked = True
            return
        vocab = self.model.get_input_embeddings().num_embeddings
        ids = torch.tensor([[1, 2, 3], [1, 2, 4]], device=self.device) % vocab  # rows differ in the last token only
        was_training = self.model.training
        self.model.eval()
        first_token = self.model(input_ids=ids, use_cache=False).last_hidden_state[:, 0]
        self.model.train(was_training)
        if torch.equal(first_token[0], first_token[1]):
            raise RuntimeError(
                "PoolAttnEmbeddingModel: attention='bidirectional' but the backbone stayed causal (a later token did "
                f"not change the first token's state). The switch `config.is_causal=False` is not honoured by "
                f"{type(self.model).__name__} under transformers {transformers.__version__}. "
                "Install a transformers 5.x release whose mask builders read `is_causal`, or use attention='causal'."
            )
        self._attention_checked = True

    # -- forward ----------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _summarize_layers(self, attention_mask: torch.Tensor, pooling_mask: torch.Tensor):
        """Forward hooks that reduce each selected layer's output to (batch, hidden) as soon as it is computed. The
        hooks sit on the shared layers while this forward runs, so they take the layers' outputs of this thread
        alone: another thread's forward through the same model (a threaded server) fires them too."""
        summaries, hooks, caller = {}, [], threading.get_ident()
        summarize = (
            (lambda hidden: last_token_state(hidden, attention_mask))
            if self.config.layer_summary == "eos"
            else (lambda hidden: masked_mean(hidden, pooling_mask))
        )
        last = self.config.text_config.num_hidden_layers  # taken from the final-normed last_hidden_state instead
        for index in self.layer_indices:
            if index != last:

                def hook(module, args, output, index=index):
                    if threading.get_ident() == caller:
                        summaries[index] = summarize(output[0] if isinstance(output, tuple) else output)

                hooks.append(self.model.layers[index - 1].register_forward_hook(hook))
        try:
            yield summaries, summarize
        finally:
            for hook in hooks:
                hook.remove()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pooling_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        normalize: bool | None = None,
        **kwargs,
    ) -> PoolAttnEmbeddingOutput:
        r"""
        Args:
            input_ids: (batch, seq) token ids, padded on either side.
            attention_mask: (batch, seq), 1 for real tokens. Defaults to all ones.
            pooling_mask: (batch, seq), 1 for tokens that mean/latent pooling may use (0 on prompt tokens).
                Defaults to `attention_mask`. EOS pooling always reads the last real token.
            position_ids: defaults to positions counted over real tokens, so left padding changes nothing.
            normalize: L2-normalise the embeddings; defaults to `config.normalize`.
        """
        if not self._attention_checked:
            self.check_attention()
        if self.training and not self._head_checked and torch.is_grad_enabled():
            self._warn_if_head_frozen()
        reference = input_ids if input_ids is not None else inputs_embeds[..., 0]
        if attention_mask is None:
            attention_mask = torch.ones_like(reference, dtype=torch.long)
        pooling_mask = attention_mask if pooling_mask is None else pooling_mask * attention_mask
        if not torch.compiler.is_compiling():
            self._check_masks(attention_mask, pooling_mask)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        kwargs.pop("use_cache", None)
        kwargs.pop("return_dict", None)

        with self._summarize_layers(attention_mask, pooling_mask) as (summaries, summarize):
            hidden = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                use_cache=False,
                **kwargs,
            ).last_hidden_state  # (batch, seq, hidden)
        layer_summaries = None
        if self.config.pooling == "multi_layer_latent":
            last = self.config.text_config.num_hidden_layers
            layer_summaries = torch.stack(
                [summaries[i] if i != last else summarize(hidden) for i in self.layer_indices], dim=1
            )  # (batch, layers, hidden)
        embeddings = self._pool(hidden, attention_mask, pooling_mask, layer_summaries)
        if self.config.normalize if normalize is None else normalize:
            embeddings = F.normalize(embeddings, p=2, dim=-1)
        return PoolAttnEmbeddingOutput(
            embeddings=embeddings, last_hidden_state=hidden, layer_summaries=layer_summaries
        )

    def _warn_if_head_frozen(self) -> None:
        """Once per model, at its first training forward: warn where the backbone trains but no weight of the pooling
        head can (peft's `get_peft_model` freezes every module that is not an adapter unless `modules_to_save`)."""
        self._head_checked = True
        if self.pooler is None or torch.compiler.is_compiling():
            return
        if not any(p.requires_grad for p in self.pooler.parameters()) and any(
            p.requires_grad for p in self.model.parameters()
        ):
            logger.warning(
                "PoolAttnEmbeddingModel is training with its pooling head frozen: no weight of `pooler` requires "
                "grad while the backbone's do, so the head keeps the weights it has (random ones for a model built "
                "with from_backbone). To train it with LoRA, give the LoraConfig modules_to_save=['pooler'] (as "
                "train.py does); if the head is frozen on purpose, ignore this."
            )

    def _pool(self, hidden, attention_mask, pooling_mask, layer_summaries) -> torch.Tensor:
        """(batch, hidden) embeddings, unnormalised, as `config.pooling` says."""
        pooling = self.config.pooling
        if pooling == "eos":
            return last_token_state(hidden, attention_mask).float()
        if pooling == "mean":
            return masked_mean(hidden, pooling_mask)
        if pooling == "latent" and self.config.head_input == "last_token":
            return self.pooler(last_token_state(hidden, attention_mask).unsqueeze(1))
        if pooling == "latent":
            return self.pooler(hidden, pooling_mask)
        return self.pooler(layer_summaries)  # multi_layer_latent

    def _check_masks(self, attention_mask: torch.Tensor, pooling_mask: torch.Tensor) -> None:
        check_masks(attention_mask, pooling_mask, uses_pooling_mask=self._uses_pooling_mask)

    # -- construction and I/O ---------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, *args, trust_remote_code: bool = False, **kwargs):
        """transformers' `from_pretrained`; `trust_remote_code` is kept for the folder's tokenizer (`get_tokenizer`):
        a tokenizer that asks to run code from the folder (`auto_map`) is refused unless it is True."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.check_attention()
        model.trust_remote_code = bool(trust_remote_code)
        # the tokenizer comes from the same revision, with the same credentials and cache (`get_tokenizer`)
        model.tokenizer_kwargs = {key: kwargs[key] for key in HUB_KWARGS if kwargs.get(key) is not None}
        return loaded

    @classmethod
    def from_backbone(cls, name_or_path: str, variant: int | str | None = 5, **overrides) -> "PoolAttnEmbeddingModel":
        """A pretrained decoder (local folder or Hub id) plus a freshly initialised pooling head.

        For poolattn's named backbones (the default `"smollm2-135m"`), call `poolattn.from_backbone(name, ...)`: it
        resolves the name to a folder (fetched, or built offline) first; this file cannot import poolattn.

        >>> model = PoolAttnEmbeddingModel.from_backbone(  # doctest: +SKIP
        ...     "HuggingFaceTB/SmolLM2-135M-Instruct", variant=5
        ... )
        >>> model.encode(["A cat sat on the mat."]).shape  # doctest: +SKIP
        (1, 576)

        `overrides` that are `PoolAttnConfig` fields (`pooling`, `layers`, `num_latents`, ...) change the config;
        the rest go to `from_pretrained` (`dtype`, `attn_implementation`, `revision`, ...). `variant=None` builds the
        config from the overrides alone.
        """
        config_fields = set(PoolAttnConfig.__dataclass_fields__) - {"text_config"}
        config_overrides = {key: overrides.pop(key) for key in list(overrides) if key in config_fields}
        PoolAttnConfig._refuse_misspelled_fields(overrides)  # `poolng=` would reach from_pretrained, not the config
        hub_kwargs = {key: overrides[key] for key in HUB_KWARGS if key in overrides}
        try:
            text_config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs).get_text_config()
        except OSError as error:
            hint = named_backbone_hint(name_or_path, error)
            if hint is None:
                raise
            raise OSError(f"PoolAttnEmbeddingModel.from_backbone: {hint}") from error
        if variant is None:
            config = PoolAttnConfig(text_config=text_config.to_dict(), **config_overrides)
        else:
            config = PoolAttnConfig.from_variant(variant, text_config, **config_overrides)
        model, info = cls._load_backbone(name_or_path, config, **overrides)
        missing = [key for key in info["missing_keys"] if not key.startswith("pooler.")]
        unexpected = [key for key in info["unexpected_keys"] if not key.startswith("lm_head.")]
        if missing or unexpected:
            logger.warning(
                "Loading the backbone %s: weights missing from the checkpoint %s, weights of the checkpoint not "
                "used %s (the pooling head's are expected to be missing, the LM head's to be unused).",
                name_or_path,
                missing[:10],
                unexpected[:10],
            )
        if model.pooler is not None:
            model.pooler.float()  # `_keep_in_fp32_modules_strict` is not applied to freshly initialised weights
        try:
            model.tokenizer = AutoTokenizer.from_pretrained(name_or_path, **hub_kwargs)
        except (OSError, ValueError) as error:
            logger.warning(
                "No tokenizer found at %s (%s); set `model.tokenizer` before `encode`.", name_or_path, error
            )
        return model

    @classmethod
    def _load_backbone(cls, name_or_path, config: PoolAttnConfig, **overrides):
        """`from_pretrained` of a backbone checkpoint under `config` -> (model, loading info). A fresh head is
        expected to be missing from the checkpoint, and its LM head to be left over: transformers' load report is
        not shown (`from_backbone` warns about anything else)."""
        report_logger = logging.getLogger("transformers.modeling_utils")
        quiet = _WithoutLoadReport()
        report_logger.addFilter(quiet)
        try:
            model, info = cls.from_pretrained(name_or_path, config=config, output_loading_info=True, **overrides)
        finally:
            report_logger.removeFilter(quiet)
        model.built_from_backbone = True  # `name_or_path` is the backbone's: no poolattn files to carry over
        return model, info

    def save_pretrained(self, save_directory, *args, push_to_hub: bool = False, **kwargs):
        """Write config (with `auto_map`), both code files, safetensors and the tokenizer to one folder (a tokenizer
        that appends EOS when `config.add_eos`: `tokenizer_appending_eos`), and the sentence-transformers files
        (`_write_sentence_transformers_files`). With `push_to_hub=True` (and `repo_id`, `commit_message`,
        `create_pr`, `private`, `token` as in transformers), the folder is uploaded once all of it is written."""
        push = {key: kwargs.pop(key) for key in ("repo_id", "commit_message", "create_pr", "private") if key in kwargs}
        folder_existed = os.path.isdir(save_directory)
        before = self._get_files_timestamps(save_directory) if push_to_hub and folder_existed else {}
        super().save_pretrained(save_directory, *args, **kwargs)  # no push here: that would upload half the folder
        if self.tokenizer is None and self.name_or_path:  # not loaded yet (`from_pretrained` loads it when used)
            with contextlib.suppress(ValueError):
                self.get_tokenizer()
        if self.tokenizer is not None:
            # the saved tokenizer appends EOS itself when the model pools with it, so plain transformers routes
            # (tokenizer + forward, pipelines) tokenize as `encode` does
            tokenizer = tokenizer_appending_eos(self.tokenizer) if self.config.add_eos else self.tokenizer
            # and truncates where `encode` does: `tokenizer(texts, truncation=True)` stops at `config.max_length`
            kept = tokenizer.model_max_length
            tokenizer.model_max_length = self.config.max_length or kept
            try:
                tokenizer.save_pretrained(save_directory)
            finally:
                tokenizer.model_max_length = kept
        if not kwargs.get("is_main_process", True):
            return
        self._write_sentence_transformers_files(save_directory)
        if push_to_hub:
            self._push_saved_folder(save_directory, before, token=kwargs.get("token"), **push)

    def _write_sentence_transformers_files(self, save_directory) -> None:
        """`write_sentence_transformers_modules`, and the prompts of the poolattn folder or Hub repository the model
        was loaded from (`_loaded_from_folder`)."""
        loaded_from = self._loaded_from_folder()
        sources = [Path(__file__).resolve().parent, *([loaded_from] if loaded_from else [])]
        if not write_sentence_transformers_modules(save_directory, self.config.max_length, sources):
            logger.warning(
                "%s: no sentence-transformers files written (no sentence_transformers_poolattn.py beside this "
                "modeling_poolattn.py or in %s): SentenceTransformer would mean-pool the bare backbone there. Save "
                "it with the poolattn package's class (poolattn.PoolAttnEmbeddingModel.from_pretrained(...)"
                ".save_pretrained(...)) to load it in sentence-transformers.",
                save_directory,
                self.name_or_path,
            )
        poolattn_folder = loaded_from and (loaded_from / SENTENCE_TRANSFORMERS_FILES[0]).is_file()  # not a backbone's
        prompts = loaded_from / "config_sentence_transformers.json" if poolattn_folder else None
        target = Path(save_directory) / "config_sentence_transformers.json"
        if prompts and prompts.is_file() and not (target.exists() and target.samefile(prompts)):
            shutil.copy2(prompts, target)

    def _push_saved_folder(
        self, folder, before: dict, *, repo_id=None, commit_message=None, create_pr=False, private=None, token=None
    ) -> None:
        """Upload the files of `folder` written since `before` (name -> mtime), as transformers' own
        `save_pretrained(push_to_hub=True)` does: the repository (default: the folder's name), its card, one commit."""
        from transformers.utils.hub import create_and_tag_model_card, hf_api

        repo_id = (
            hf_api()
            .create_repo(repo_id or Path(folder).resolve().name, exist_ok=True, private=private, token=token)
            .repo_id
        )
        create_and_tag_model_card(repo_id, self.model_tags, token=token).save(os.path.join(folder, "README.md"))
        self._upload_modified_files(
            folder, repo_id, before, commit_message=commit_message, token=token, create_pr=create_pr
        )

    def _loaded_from_folder(self) -> Path | None:
        """A local copy of the poolattn folder or Hub repository this model was loaded from, for its
        sentence-transformers files and prompts: the folder itself, or the Hub cache's snapshot of the repository at
        the revision loaded (those files fetched into it; `AutoModel` fetches only the Hub pair). None for a model
        built on a backbone (`from_backbone`), whose repository holds no poolattn files, and where none is found."""
        name = self.name_or_path
        if not name or getattr(self, "built_from_backbone", False):
            return None
        if os.path.isdir(name):
            return Path(name)
        from transformers.utils import cached_file

        quiet = {f"_raise_exceptions_for_{case}": False for case in ("missing_entries", "connection_errors")}
        revision = getattr(self.config, "_commit_hash", None)
        try:  # a name that is no Hub id (a folder since moved) raises a ValueError
            found = [
                cached_file(name, file_name, revision=revision, **quiet)
                for file_name in (*SENTENCE_TRANSFORMERS_FILES, "config_sentence_transformers.json")
            ]
        except (OSError, ValueError):
            return None
        return Path(found[0]).parent if found[0] else None

    def get_tokenizer(self):
        """The tokenizer saved with the model (loaded once from `name_or_path`)."""
        if self.tokenizer is None:
            trust = getattr(self, "trust_remote_code", False)
            try:
                # our config: AutoTokenizer would otherwise read config.json as a bare config and warn that a
                # `poolattn` model is loaded as a model of type ``; the saved tokenizer's own class is kept (the
                # backbone's config would choose the backbone's tokenizer class instead)
                self.tokenizer = AutoTokenizer.from_pretrained(
                    self.name_or_path,
                    config=self.config,
                    trust_remote_code=trust,
                    **getattr(self, "tokenizer_kwargs", {}),
                )
            except (OSError, ValueError) as error:
                if "trust_remote_code" in str(error) and not trust:
                    raise ValueError(
                        f"The tokenizer of {self.name_or_path} asks to run code from that folder (its `auto_map`), "
                        "which was not trusted. Load the model with `trust_remote_code=True` only if you trust that "
                        "code, or give `model.tokenizer` yourself."
                    ) from None
                raise ValueError(
                    f"No tokenizer found with this model (name_or_path={self.name_or_path!r}): {error}. "
                    "Set `model.tokenizer = AutoTokenizer.from_pretrained(...)` or save the model with one."
                ) from error
        return self.tokenizer

    # -- encode -----------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode(
        self,
        texts,
        *,
        prompt=None,
        batch_size: int = 32,
        max_length: int | None = None,
        normalize: bool | None = None,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        truncate_dim: int | None = None,
    ):
        """Embed texts in batches sorted by length; returns (n, hidden) in input order (a 1-D vector for a string).

        >>> embeddings = model.encode(  # doctest: +SKIP
        ...     ["A cat sat on the mat.", "Stocks fell."], prompt="Instruct: ...\\nQuery: "
        ... )

        `prompt` (one string, or one per text) is prepended to each text; its tokens are left out of mean and
        latent pooling. Returns a numpy array, or a float32 CPU tensor with `convert_to_numpy=False`. `truncate_dim`
        keeps the first dims of each embedding (then normalised): only sizes the model was trained for
        (`config.matryoshka_dims`).
        """
        was_training = self.training
        self.eval()
        try:
            return encode_texts(
                lambda batch: (
                    self(**{key: value.to(self.device) for key, value in batch.items()}, normalize=False).embeddings
                ),
                texts,
                tokenizer=self.get_tokenizer(),
                config=self.config,
                prompt=prompt,
                batch_size=batch_size,
                max_length=max_length,
                normalize=normalize,
                show_progress_bar=show_progress_bar,
                convert_to_numpy=convert_to_numpy,
                truncate_dim=truncate_dim,
            )
        finally:
            self.train(was_training)


def encode_texts(
    embed_batch,
    texts,
    *,
    tokenizer,
    config: PoolAttnConfig,
    prompt=None,
    batch_size: int = 32,
    max_length: int | None = None,
    normalize: bool | None = None,
    show_progress_bar: bool | None = None,
    convert_to_numpy: bool = True,
    truncate_dim: int | None = None,
):
    """`encode` for any runtime: checks the arguments, tokenizes (`tokenize_for_embedding`), sorts by length, pads
    batches on the tokenizer's side, calls `embed_batch(batch) -> (batch, hidden)` (unnormalised) and returns the
    embeddings in input order, cut to their first `truncate_dim` dims if given, then L2-normalised when `normalize`
    (default `config.normalize`).

    `PoolAttnEmbeddingModel.encode` passes its own forward; the ONNX Runtime model (`onnx_poolattn.py`) its session.
    """
    single = isinstance(texts, str)
    texts = _checked_texts(texts)
    _check_encode_settings(batch_size, normalize, max_length, config)
    max_length = max_length or config.max_length
    normalize = config.normalize if normalize is None else normalize
    hidden_size = config.text_config.hidden_size
    truncate_dim = _checked_truncate_dim(truncate_dim, config)
    features = tokenize_for_embedding(tokenizer, texts, prompt=prompt, max_length=max_length, add_eos=config.add_eos)
    pad_token_id = pad_token_id_for(tokenizer)
    order = sorted(range(len(texts)), key=lambda i: -len(features[i]["input_ids"]))
    if show_progress_bar is None:
        show_progress_bar = logger.getEffectiveLevel() <= logging.INFO
    embeddings = [None] * len(texts)
    for start in tqdm(range(0, len(texts), batch_size), desc="encode", disable=not show_progress_bar):
        chunk = order[start : start + batch_size]
        batch = pad_features(
            [features[i] for i in chunk], pad_token_id=pad_token_id, padding_side=tokenizer.padding_side
        )
        rows = embed_batch(batch).float().cpu()[:, :truncate_dim]
        rows = F.normalize(rows, p=2, dim=-1) if normalize else rows
        for i, row in zip(chunk, rows):
            embeddings[i] = row
    stacked = torch.stack(embeddings) if embeddings else torch.empty(0, truncate_dim or hidden_size)
    stacked = stacked[0] if single else stacked
    return stacked.numpy() if convert_to_numpy else stacked


def _checked_texts(texts) -> list[str]:
    if isinstance(texts, (dict, bytes)) or not (isinstance(texts, str) or hasattr(texts, "__iter__")):
        raise TypeError(
            f"encode takes a string or a list of strings, got {type(texts).__name__}; pass the texts "
            "themselves (e.g. list(rows.values()))."
        )
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not all(isinstance(text, str) for text in texts):
        kinds = sorted({type(text).__name__ for text in texts if not isinstance(text, str)})
        raise TypeError(f"encode takes strings; got {', '.join(kinds)} among the texts.")
    return texts


def _check_encode_settings(batch_size, normalize, max_length, config: PoolAttnConfig) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1.")
    if normalize is not None and not isinstance(normalize, bool):
        raise TypeError(f"normalize={normalize!r}: give True, False or None (the config's default).")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
        raise ValueError(
            f"max_length={max_length!r}: give the tokens per text (>= 1), or None for the config's "
            f"{config.max_length}."
        )


def _checked_truncate_dim(truncate_dim, config: PoolAttnConfig) -> int | None:
    """`truncate_dim`, None for the full size; a size the model was not trained for is an error."""
    hidden_size = config.text_config.hidden_size
    if truncate_dim is None or truncate_dim == hidden_size:
        return None
    trained_dims = config.matryoshka_dims or []
    if truncate_dim not in trained_dims:
        trained = (
            f"trained for {', '.join(map(str, trained_dims))} and {hidden_size}"
            if trained_dims
            else f"trained at its full size {hidden_size} only (a prefix of its embeddings is not an embedding); "
            "train with --matryoshka_dims to use smaller sizes"
        )
        raise ValueError(f"truncate_dim={truncate_dim!r}: this model was {trained}.")
    return truncate_dim


PoolAttnConfig.register_for_auto_class()
PoolAttnEmbeddingModel.register_for_auto_class("AutoModel")
