"""PoolAttnEmbeddingModel: every design on every backbone family, proven by comparing two paths."""

import pytest
import torch
from conftest import BASELINES, FAMILIES, SENTENCES, VARIANTS, tiny_model, tiny_text_config, tiny_tokenizer

from poolattn import PoolAttnEmbeddingModel
from poolattn.modeling_poolattn import last_token_index, pad_features, tokenize_for_embedding

TOLERANCE = 1e-5  # fp32

# One table of pooling designs: (name, config overrides); each runs under both attentions.
POOLING_CASES = [
    ("eos", {"pooling": "eos"}),
    ("mean", {"pooling": "mean"}),
    ("latent_last_token", {"pooling": "latent", "head_input": "last_token"}),
    ("latent_all_tokens", {"pooling": "latent", "head_input": "all_tokens"}),
    ("latent_inputs_query", {"pooling": "latent", "head_input": "all_tokens", "latent_orientation": "inputs_query"}),
    ("multi_layer_eos", {"pooling": "multi_layer_latent", "layer_summary": "eos"}),
    ("multi_layer_mean", {"pooling": "multi_layer_latent", "layer_summary": "mean", "layers": [1, 3]}),
    ("multi_layer_single_head", {"pooling": "multi_layer_latent", "head_attention": "single", "layer_weights": False}),
    ("multi_layer_inputs_query", {"pooling": "multi_layer_latent", "latent_orientation": "inputs_query"}),
    (
        "multi_layer_hierarchical",
        {"pooling": "multi_layer_latent", "head_attention": "hierarchical", "layer_group_size": 2},
    ),
]
ATTENTION_CASES = ("causal", "bidirectional")


def perturb_last_token(ids: torch.Tensor) -> torch.Tensor:
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 7) % 99
    return changed


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_on_every_family_gives_unit_vectors(family, variant):
    model = tiny_model(family, variant)
    embeddings = model.encode(SENTENCES, batch_size=3, convert_to_numpy=False)
    assert embeddings.shape == (len(SENTENCES), 32) and embeddings.dtype == torch.float32
    assert torch.isfinite(embeddings).all()
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(len(SENTENCES)), rtol=0, atol=1e-5)
    assert torch.cdist(embeddings, embeddings).triu(1)[torch.ones(8, 8).triu(1).bool()].min() > 1e-4  # all distinct


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attention", ATTENTION_CASES)
@pytest.mark.parametrize("case, overrides", POOLING_CASES, ids=[c[0] for c in POOLING_CASES])
def test_left_right_padding_and_batch_size_match_the_unpadded_sequence(family, attention, case, overrides):
    model = tiny_model(family, variant=None, attention=attention, **overrides)
    alone = model.encode(SENTENCES, batch_size=1, convert_to_numpy=False)  # no padding at all
    right = model.encode(SENTENCES, batch_size=8, convert_to_numpy=False)
    model.tokenizer.padding_side = "left"
    left = model.encode(SENTENCES, batch_size=8, convert_to_numpy=False)
    torch.testing.assert_close(right, alone, rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(left, alone, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("design", BASELINES)
def test_baseline_designs_match_across_padding_sides_and_batch_sizes(family, design):
    """The baselines as users build them (by name), under the same property as every pooling case above."""
    model = tiny_model(family, design)
    assert model.pooler is None and model.config.variant == design
    alone = model.encode(SENTENCES, batch_size=1, convert_to_numpy=False)
    right = model.encode(SENTENCES, batch_size=3, convert_to_numpy=False)
    model.tokenizer.padding_side = "left"
    left = model.encode(SENTENCES, batch_size=8, convert_to_numpy=False)
    torch.testing.assert_close(right, alone, rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(left, alone, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("family", FAMILIES)
def test_bidirectional_lets_a_later_token_change_the_first_token(family):
    ids = torch.tensor([[1, 10, 11, 12, 13]])
    for attention in ATTENTION_CASES:
        model = tiny_model(family, variant=None, attention=attention)
        with torch.no_grad():
            before = model(input_ids=ids).last_hidden_state[:, 0]
            after = model(input_ids=perturb_last_token(ids)).last_hidden_state[:, 0]
        if attention == "causal":
            assert torch.equal(before, after), "causal attention leaked a later token"
        else:
            assert (before - after).abs().max() > 1e-3, "bidirectional attention did not take effect"


def test_a_backbone_that_stays_causal_is_caught():
    model = tiny_model("llama", 5)
    model.model.config.is_causal = True  # what a transformers release that ignores the switch would do
    with pytest.raises(RuntimeError, match="backbone stayed causal"):
        model.check_attention()
    model._attention_checked = False
    with pytest.raises(RuntimeError, match="backbone stayed causal"):
        model.encode(SENTENCES[:1])
    model.model.config.is_causal = False
    model.check_attention()  # the real switch passes


SDPA_FAMILIES = tuple(f for f in FAMILIES if f != "gemma2")  # Gemma2Model declares no sdpa support (eager only)


@pytest.mark.parametrize("family", SDPA_FAMILIES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_sdpa_and_eager_agree(family, variant):
    model = tiny_model(family, variant)
    model.set_attn_implementation("sdpa")
    assert model.model.config._attn_implementation == "sdpa"
    sdpa = model.encode(SENTENCES, batch_size=8, convert_to_numpy=False)
    model.set_attn_implementation("eager")
    assert model.model.config._attn_implementation == "eager"
    eager = model.encode(SENTENCES, batch_size=8, convert_to_numpy=False)
    torch.testing.assert_close(sdpa, eager, rtol=0, atol=TOLERANCE)


def batch_of(model, texts, prompt=None):
    features = tokenize_for_embedding(model.tokenizer, texts, prompt=prompt, max_length=64, add_eos=True)
    return pad_features(features, pad_token_id=0, padding_side="right")


@pytest.mark.parametrize("layer_summary", ["eos", "mean"])
@pytest.mark.parametrize("attention", ATTENTION_CASES)
def test_hooked_layer_summaries_equal_the_output_hidden_states_path(layer_summary, attention):
    model = tiny_model(
        "qwen2",
        variant=None,
        attention=attention,
        pooling="multi_layer_latent",
        layer_summary=layer_summary,
        layers="all",
    )
    batch = batch_of(model, SENTENCES, prompt="query")
    with torch.no_grad():
        output = model(**batch)
        states = model.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        ).hidden_states  # (embeddings, layer 1, ..., final normed)
    mask = batch["attention_mask"]
    pool = batch["pooling_mask"] * mask
    for position, layer in enumerate(model.layer_indices):
        hidden = states[layer]
        if layer_summary == "eos":
            expected = hidden[torch.arange(len(SENTENCES)), last_token_index(mask)]
        else:
            expected = (hidden * pool[..., None]).sum(1) / pool.sum(1, keepdim=True)
        torch.testing.assert_close(output.layer_summaries[:, position], expected, rtol=0, atol=1e-6)


def test_prompt_tokens_are_left_out_of_mean_pooling():
    model = tiny_model("llama", variant=None, pooling="mean", normalize=False)
    features = tokenize_for_embedding(
        model.tokenizer, ["the cat sat"], prompt="query passage", max_length=64, add_eos=True
    )
    ids = model.tokenizer.convert_tokens_to_ids(["<s>", "query", "passage", "the", "cat", "sat", "</s>"])
    assert features[0]["input_ids"] == ids
    assert features[0]["pooling_mask"] == [1, 0, 0, 1, 1, 1, 1]  # BOS, prompt x2, text x3, EOS
    batch = pad_features(features, pad_token_id=0, padding_side="right")
    with torch.no_grad():
        output = model(**batch)
    keep = torch.tensor([0, 3, 4, 5, 6])
    torch.testing.assert_close(output.embeddings[0], output.last_hidden_state[0, keep].mean(0), rtol=0, atol=1e-6)
    with_prompt = model.encode("the cat sat", prompt="query passage")
    without_prompt = model.encode("the cat sat")
    assert abs(with_prompt - without_prompt).max() > 1e-4  # the prompt still conditions the text tokens


@pytest.mark.parametrize("variant", [4, 5])
def test_a_row_with_nothing_to_pool_is_refused(variant):
    model = tiny_model("llama", variant)
    ids = torch.tensor([[1, 10, 11], [1, 12, 13]])
    with pytest.raises(ValueError, match=r"Rows \[1\] have no token to pool"):
        model(input_ids=ids, pooling_mask=torch.tensor([[1, 1, 1], [0, 0, 0]]))


def test_tokenization_frames_truncates_and_appends_eos_once():
    tokenizer = tiny_tokenizer()
    features = tokenize_for_embedding(tokenizer, ["the cat sat on the mat"], prompt=None, max_length=5, add_eos=True)
    assert features[0]["input_ids"] == [1, *tokenizer("the cat sat", add_special_tokens=False)["input_ids"], 2]
    without_eos = tokenize_for_embedding(tokenizer, ["a dog"], max_length=8, add_eos=False)
    assert without_eos[0]["input_ids"][-1] != 2
    per_text = tokenize_for_embedding(
        tokenizer, ["a dog", "a cat"], prompt=["query", "passage"], max_length=8, add_eos=True
    )
    assert per_text[0]["input_ids"][1] != per_text[1]["input_ids"][1]
    with pytest.raises(ValueError, match="max_length=3 leaves no room for text"):
        tokenize_for_embedding(tokenizer, ["a dog"], prompt="query passage", max_length=3, add_eos=True)
    with pytest.raises(ValueError, match="2 prompts for 1 texts"):
        tokenize_for_embedding(tokenizer, ["a dog"], prompt=["query", "passage"], max_length=8, add_eos=True)
    with pytest.raises(TypeError, match="list of strings"):
        tokenize_for_embedding(tokenizer, ["a dog", 3], max_length=8, add_eos=True)


def test_encode_shapes_order_and_bad_arguments():
    model = tiny_model("llama", 5)
    many = model.encode(SENTENCES, batch_size=3)
    assert model.encode(SENTENCES[2]).shape == (32,)
    assert abs(model.encode(SENTENCES[2]) - many[2]).max() < TOLERANCE  # input order kept after length sorting
    assert model.encode([]).shape == (0, 32)
    unnormalized = model.encode(SENTENCES[:2], normalize=False)
    assert abs((unnormalized**2).sum(-1) - 1).max() > 1e-3
    with pytest.raises(ValueError, match="batch_size=0"):
        model.encode(SENTENCES, batch_size=0)
    assert not model.training


@pytest.mark.parametrize("variant", [3, 5])
def test_activation_checkpointing_gives_the_same_gradients(variant):
    model = tiny_model("llama", variant).train()
    batch = batch_of(model, SENTENCES)
    target = torch.randn(len(SENTENCES), 32, generator=torch.Generator().manual_seed(0))

    def gradients():
        model.zero_grad()
        (model(**batch).embeddings * target).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.activation_checkpointing_enable()
    checkpointed = gradients()
    assert model.model.is_activation_checkpointing
    assert plain.keys() == checkpointed.keys() and any(name.startswith("pooler.") for name in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=0, atol=1e-6, msg=name)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.step()  # a training step runs


def test_head_is_sized_from_the_backbone_and_fully_initialised(tmp_path):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    text_config = tiny_text_config("llama", hidden_size=48, num_attention_heads=6, head_dim=8)
    LlamaForCausalLM(text_config).save_pretrained(tmp_path / "lm")
    tiny_tokenizer().save_pretrained(tmp_path / "lm")
    model = PoolAttnEmbeddingModel.from_backbone(str(tmp_path / "lm"), variant=5, layers="last:2")
    head = model.pooler
    assert head.latents.shape == (1, 48) and head.layer_weights.shape == (2, 48)  # 48 // 64 -> at least 1 latent
    assert head.to_query.weight.shape == (6 * 8, 48)
    for name, parameter in head.named_parameters():
        assert parameter.dtype == torch.float32 and torch.isfinite(parameter).all(), name
    assert torch.equal(head.layer_weights, torch.zeros(2, 48))
    assert 0.01 < head.latents.std() < 0.03 and torch.equal(head.query_norm.weight, torch.ones(48))
    reference = LlamaForCausalLM.from_pretrained(tmp_path / "lm").model.state_dict()
    for name, tensor in model.model.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    assert model.encode(SENTENCES).shape == (8, 48)  # tokenizer came with the backbone


@pytest.fixture
def hub_offline(monkeypatch):
    """No network: huggingface_hub reads HF_HUB_OFFLINE at import, so its constant is patched too."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_from_backbone_says_what_to_call_for_a_name_that_is_not_a_folder(hub_offline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so the name is surely not a folder here
    with pytest.raises(OSError) as error:
        PoolAttnEmbeddingModel.from_backbone("no-such-backbone", variant=5)
    message = str(error.value)
    assert "'no-such-backbone' is neither a local folder nor a model the Hub could load" in message
    assert "poolattn.from_backbone('no-such-backbone', ...)" in message
    assert "resolve_backbone('no-such-backbone')" in message
    assert isinstance(error.value.__cause__, OSError)  # the loader's own error is kept
    with pytest.raises(OSError) as hub_id_error:  # a Hub id ("org/name") gets the loader's error unchanged
        PoolAttnEmbeddingModel.from_backbone("no-such-org/no-such-backbone", variant=5)
    assert "poolattn.from_backbone" not in str(hub_id_error.value)


def test_package_from_backbone_passes_folders_and_hub_ids_through(tiny_backbone_folder):
    import poolattn

    model = poolattn.from_backbone(tiny_backbone_folder, variant=3, num_latents=2)
    assert (model.config.variant, model.config.num_latents) == (3, 2)
    assert model.encode(SENTENCES[:2]).shape == (2, 32)


def test_normal_initialised_layer_weights_survive_save_and_load(tmp_path):
    model = tiny_model("llama", 5, layer_weights_init_std=1.0)
    assert 0.7 < model.pooler.layer_weights.std() < 1.3  # 3 layers x 32 draws of normal(0, 1)
    model.save_pretrained(tmp_path)
    reloaded = PoolAttnEmbeddingModel.from_pretrained(tmp_path)
    assert reloaded.config.layer_weights_init_std == 1.0
    assert torch.equal(reloaded.pooler.layer_weights, model.pooler.layer_weights)  # loaded, not drawn again


@pytest.mark.parametrize("head_attention", ["multihead", "hierarchical"])
def test_the_layer_weight_multiplier_scales_the_matrix_as_it_enters_and_how_fast_adam_moves_it(head_attention):
    """Two paths: a model with multiplier m equals the same model at m = 1 whose matrix is m x the parameter; and one
    Adam step at rate lr moves the matrix as it enters by m x lr per element (Adam's first step is lr x sign(g)), so
    m is the matrix's own rate. Its start is drawn at layer_weights_init_std as it enters."""
    kwargs = dict(head_attention=head_attention, layer_group_size=2, layer_weights_init_std=0.5)
    fast = tiny_model("llama", 5, layer_weights_multiplier=100.0, **kwargs)
    plain = tiny_model("llama", 5, **kwargs)
    plain.load_state_dict(fast.state_dict())
    with torch.no_grad():
        plain.pooler.layer_weights.mul_(100.0)
    summaries = torch.randn(4, 3, 32)
    torch.testing.assert_close(fast.pooler(summaries), plain.pooler(summaries), rtol=1e-5, atol=1e-5)
    assert 0.3 < (100.0 * fast.pooler.layer_weights).std() < 0.7  # drawn at std 0.5 as it enters (96 draws)
    entering = {}
    for name, model in (("fast", fast), ("slow", tiny_model("llama", 5, **kwargs))):
        before = (model.pooler.layer_weights_multiplier * model.pooler.layer_weights).detach().clone()
        optimizer = torch.optim.Adam([model.pooler.layer_weights], lr=1e-3, eps=1e-30)  # eps: g / |g| exactly
        model.pooler(summaries).pow(2).sum().backward()
        optimizer.step()
        entering[name] = (model.pooler.layer_weights_multiplier * model.pooler.layer_weights - before).abs()
    torch.testing.assert_close(entering["fast"], torch.full_like(entering["fast"], 0.1), rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(entering["slow"], torch.full_like(entering["slow"], 1e-3), rtol=1e-3, atol=1e-8)
    with pytest.raises(ValueError, match=r"layer_weights_multiplier=0 must be a finite number > 0"):
        tiny_model("llama", 5, layer_weights_multiplier=0)


def test_hierarchical_head_attends_within_groups_of_consecutive_layers_then_across_them():
    model = tiny_model("llama", 5, head_attention="hierarchical", layer_group_size=2)  # 3 layers: [1, 2], [3]
    pooler = model.pooler
    summaries = torch.randn(4, 3, 32)
    with torch.no_grad():
        pooler.layer_weights.normal_()
        weighted = summaries + pooler.layer_weights
        groups = torch.stack([pooler.within(weighted[:, :2]), pooler.within(weighted[:, 2:])], dim=1)  # (4, 2, 32)
        torch.testing.assert_close(pooler(summaries), pooler.across(groups), rtol=0, atol=TOLERANCE)
    flat = tiny_model("llama", 5, head_attention="hierarchical", layer_group_size=3)  # one group of all 3 layers
    assert flat.pooler.within.feed_forward is None and flat.pooler.across.feed_forward is not None


def test_loading_a_saved_model_and_its_tokenizer_prints_nothing(tmp_path):
    """A saved model loads with its tokenizer without transformers' warnings (AutoTokenizer reading the poolattn
    config.json as a bare config warned that a `poolattn` model was loaded as a model of type ``)."""
    import logging

    records = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    transformers_logger = logging.getLogger("transformers")  # transformers' own handler does not propagate
    transformers_logger.addHandler(handler)
    try:
        tiny_model("llama", 5).save_pretrained(tmp_path)
        model = PoolAttnEmbeddingModel.from_pretrained(tmp_path)
        model.tokenizer = None  # loaded on demand, as after a model is built without one
        model.encode(SENTENCES[:2])
    finally:
        transformers_logger.removeHandler(handler)
    assert [record.getMessage() for record in records] == []


def test_a_backbone_folder_given_with_a_tilde_is_the_folder_it_names(tiny_backbone_folder, tmp_path, monkeypatch):
    """`--backbone=~/models/x` (no shell expands a `~` after `=`) was checked as the folder and then passed on as
    written, which transformers took for a malformed Hub id."""
    import shutil

    from poolattn.backbones import resolve_backbone

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(tiny_backbone_folder, tmp_path / "models" / "tiny")
    assert resolve_backbone("~/models/tiny") == str(tmp_path / "models" / "tiny")
