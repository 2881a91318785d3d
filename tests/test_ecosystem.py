"""What a user does next with a poolattn folder using the tools they know: sentence-transformers' own training and
save, their own `Trainer` and peft, dtypes and devices at load, and re-saving. Tiny random backbones, in-process."""

import json

import pytest
import torch
from conftest import SENTENCES, TRIPLETS, tiny_model

from poolattn.export import write_sentence_transformers_prompts

pytest.importorskip("sentence_transformers")


def test_prompts_set_on_a_sentence_transformer_survive_its_save(tmp_path):
    """`SentenceTransformer.save` writes the prompts as they are now, then saves the module (the model's
    `save_pretrained`), which must not put back the prompts of the folder the model was loaded from."""
    from sentence_transformers import SentenceTransformer

    model = tiny_model("llama", 5)
    model.save_pretrained(tmp_path / "src")
    write_sentence_transformers_prompts(tmp_path / "src", "Instruct: old\nQuery: ")
    st = SentenceTransformer(str(tmp_path / "src"), trust_remote_code=True)
    st.prompts = {"query": "Instruct: new\nQuery: ", "document": ""}
    st.similarity_fn_name = "dot"
    st.save(str(tmp_path / "saved"))

    saved = json.loads((tmp_path / "saved" / "config_sentence_transformers.json").read_text())
    assert saved["prompts"] == st.prompts and saved["similarity_fn_name"] == "dot"
    reloaded = SentenceTransformer(str(tmp_path / "saved"), trust_remote_code=True)
    expected = model.encode(SENTENCES, prompt="Instruct: new\nQuery: ", convert_to_numpy=False)
    torch.testing.assert_close(reloaded.encode_query(SENTENCES, convert_to_tensor=True), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("modules_to_save", [None, ["pooler"]])
def test_training_a_peft_model_whose_head_is_frozen_is_said_once(modules_to_save, caplog):
    """peft freezes every module that is not an adapter unless named in `modules_to_save`: the head would keep its
    (fresh, random) weights while the loss falls, unsaid."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_model("llama", 5), LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=modules_to_save)
    )
    batch = model.get_base_model().get_tokenizer()(SENTENCES, padding=True, return_tensors="pt")
    with caplog.at_level("WARNING"):
        model.eval()(**batch)  # inference: nothing to say
        assert "pooling head frozen" not in caplog.text
        model.train()
        for _ in range(2):
            model(**batch).embeddings.sum().backward()
    head_grads = [p.grad for n, p in model.named_parameters() if "pooler" in n and p.requires_grad]
    assert caplog.text.count("pooling head frozen") == (1 if modules_to_save is None else 0)
    assert (len(head_grads) > 0) == (modules_to_save is not None) and all(g is not None for g in head_grads)


def test_sentence_transformers_own_trainer_trains_head_and_backbone_and_its_save_reloads(tmp_path):
    """An exported folder trained further with `SentenceTransformerTrainer` + `MultipleNegativesRankingLoss` (a
    query prompt): the head and the backbone move, and what `SentenceTransformer.save` writes reloads, in
    sentence-transformers and in `AutoModel`, as the trained model encodes (1e-6)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments as Arguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import AutoModel

    tiny_model("llama", 5).save_pretrained(tmp_path / "src")
    write_sentence_transformers_prompts(tmp_path / "src", "Instruct: find\nQuery: ")
    st = SentenceTransformer(str(tmp_path / "src"), trust_remote_code=True)
    before = {name: weight.detach().clone() for name, weight in st.named_parameters()}
    rows = Dataset.from_list([{"anchor": row["query"], "positive": row["positive"]} for row in TRIPLETS])
    arguments = Arguments(
        output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=6, learning_rate=1e-3,
        report_to="none", save_strategy="no", seed=0, prompts={"anchor": st.prompts["query"]},
    )  # fmt: skip
    SentenceTransformerTrainer(
        model=st, args=arguments, train_dataset=rows, loss=MultipleNegativesRankingLoss(st)
    ).train()
    moved = {name for name, weight in st.named_parameters() if not torch.equal(weight, before[name])}
    assert {name for name in before if ".pooler." in name} <= moved and any(".model.layers." in n for n in moved)

    st.eval()
    queries = st.encode_query(SENTENCES, convert_to_tensor=True)
    st.save(str(tmp_path / "saved"))
    reloaded = SentenceTransformer(str(tmp_path / "saved"), trust_remote_code=True)
    torch.testing.assert_close(reloaded.encode_query(SENTENCES, convert_to_tensor=True), queries, rtol=0, atol=1e-6)
    model = AutoModel.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    encoded = model.encode(SENTENCES, prompt="Instruct: find\nQuery: ", convert_to_numpy=False)
    torch.testing.assert_close(encoded, queries, rtol=0, atol=1e-6)


def test_a_max_seq_length_set_on_a_sentence_transformer_is_the_one_automodel_reads_from_its_save(tmp_path):
    """`st.max_seq_length = N` (sentence-transformers' way to truncate) before `save`: `AutoModel(...).encode` on the
    saved folder truncates at N as `SentenceTransformer` does, not at the config's earlier `max_length`."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    tiny_model("llama", 5, max_length=16).save_pretrained(tmp_path / "src")
    st = SentenceTransformer(str(tmp_path / "src"), trust_remote_code=True)
    st.max_seq_length = 6
    texts = ["the cat sat on the mat and the dog sat on the road", "a dog"]
    expected = st.encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(st[0].auto_model.encode(texts, convert_to_numpy=False), expected, rtol=0, atol=1e-6)
    st.save(str(tmp_path / "saved"))
    model = AutoModel.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    torch.testing.assert_close(model.encode(texts, convert_to_numpy=False), expected, rtol=0, atol=1e-6)
    reloaded = SentenceTransformer(str(tmp_path / "saved"), trust_remote_code=True)
    assert reloaded.max_seq_length == 6
    torch.testing.assert_close(reloaded.encode(texts, convert_to_tensor=True), expected, rtol=0, atol=1e-6)
