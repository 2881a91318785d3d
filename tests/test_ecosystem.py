"""What a user does next with a poolattn folder using the tools they know: sentence-transformers' own training and
save, their own `Trainer` and peft, dtypes and devices at load, and re-saving. Tiny random backbones, in-process."""

import json

import pytest
import torch
from conftest import SENTENCES, tiny_model

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
