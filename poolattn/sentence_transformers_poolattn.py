"""A sentence-transformers input module for poolattn folders: the model's own tokenization, then its pooling head.

    >>> from sentence_transformers import SentenceTransformer  # doctest: +SKIP
    >>> model = SentenceTransformer("ORG/poolattn-smollm2-135m-v5", trust_remote_code=True)  # doctest: +SKIP
    >>> model.encode_query(["how do guitars make sound"]).shape  # doctest: +SKIP
    (1, 576)

Shipped beside the Hub pair in every published folder and named in its `modules.json`, so that
`SentenceTransformer(folder, trust_remote_code=True)` gives exactly what `AutoModel(...).encode` gives:

- texts are tokenized by `tokenize_for_embedding` (special tokens, the prompt on its own, the text, EOS where the
  tokenizer adds none), so a prompt (`prompts` in `config_sentence_transformers.json`, e.g. the query instruction)
  conditions the text but is left out of pooling through `pooling_mask`;
- the model's forward returns the pooled, normalised embedding, so no `Pooling` module follows (without this
  `modules.json`, sentence-transformers would mean-pool the last hidden states and silently skip the head).

`SentenceTransformer(folder, backend="onnx", trust_remote_code=True)` runs the folder's ONNX export
(`onnx/model.onnx`, or `model_kwargs={"file_name": "onnx/model_qint8.onnx"}`) in ONNX Runtime through
`onnx_poolattn.PoolAttnOnnxModel` instead of Optimum, which knows only the backbone: same tokens, same embeddings
(`token_embeddings` are not available there: the graph returns the pooled embedding only).

Only sentence-transformers loads this file; the Hub pair itself imports only torch and transformers.
"""

from pathlib import Path
from typing import Any

from sentence_transformers.base.modules.transformer import Transformer

from .modeling_poolattn import pad_features, pad_token_id_for, tokenize_for_embedding


class PoolAttnTransformer(Transformer):
    """`Transformer` whose text preprocessing is `PoolAttnEmbeddingModel.encode`'s, pooling mask included."""

    def preprocess(self, inputs, prompt: str | None = None, processing_kwargs=None, **kwargs) -> dict[str, Any]:
        if not inputs:
            return {}
        if not all(isinstance(text, str) for text in inputs):
            kinds = sorted({type(text).__name__ for text in inputs})
            raise TypeError(f"poolattn models embed text only; got inputs of type {', '.join(kinds)}. Pass strings.")
        max_length = kwargs.get("max_length") or self.max_seq_length or self.auto_model.config.max_length
        features = tokenize_for_embedding(
            self.tokenizer,
            list(inputs),
            prompt=prompt or None,
            max_length=max_length,
            add_eos=self.auto_model.config.add_eos,
        )
        batch = pad_features(
            features, pad_token_id=pad_token_id_for(self.tokenizer), padding_side=self.tokenizer.padding_side
        )
        return {**batch, "modality": "text"}  # input_ids, attention_mask, pooling_mask: each (batch, seq)

    def _load_model(self, model_name_or_path, transformer_task, config, backend, is_peft_model, **model_kwargs):
        if backend != "onnx":
            return super()._load_model(
                model_name_or_path, transformer_task, config, backend, is_peft_model, **model_kwargs
            )
        from .onnx_poolattn import ONNX_FILE, PoolAttnOnnxModel

        if model_kwargs.get("export"):
            raise ValueError(
                "poolattn models are exported to ONNX by poolattn, with the pooling head: run "
                "`poolattn-export-onnx FOLDER`, then load without export=True."
            )
        hub_keys = ("revision", "token", "cache_dir", "local_files_only")
        return PoolAttnOnnxModel.from_pretrained(
            model_name_or_path,
            file_name=model_kwargs.get("file_name") or ONNX_FILE,
            provider=model_kwargs.get("provider"),
            **{key: model_kwargs[key] for key in hub_keys if key in model_kwargs},
        )

    @property
    def max_seq_length(self) -> int | None:
        return Transformer.max_seq_length.fget(self)

    @max_seq_length.setter
    def max_seq_length(self, value: int | None) -> None:
        """The tokenizer's limit (sentence-transformers' own setter) and the model's `config.max_length`, which
        `encode` reads: so `AutoModel` on the saved folder truncates where `SentenceTransformer` does."""
        Transformer.max_seq_length.fset(self, value)
        config = getattr(self.auto_model, "config", None)
        if isinstance(value, int) and value > 0 and hasattr(config, "max_length"):
            config.max_length = value

    def save(self, output_path: str, *args, **kwargs) -> None:
        """`Transformer.save`, keeping the `config_sentence_transformers.json` that `SentenceTransformer.save` wrote
        just before (the model's prompts and similarity function as they are now): the model's `save_pretrained`
        copies the prompts of the folder it was loaded from, which would silently undo prompts set since."""
        settings = Path(output_path) / "config_sentence_transformers.json"
        written = settings.read_bytes() if settings.is_file() else None
        super().save(output_path, *args, **kwargs)
        if written is not None:
            settings.write_bytes(written)

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        """The pooled embedding (`sentence_embedding`) and the backbone's last hidden states (`token_embeddings`,
        for `encode(..., output_value="token_embeddings")`) from one forward pass."""
        inputs = {key: features[key] for key in ("input_ids", "attention_mask", "pooling_mask") if key in features}
        output = self.auto_model(**inputs)
        features[self.module_output_name] = output.embeddings
        if output.last_hidden_state is not None:  # None under ONNX Runtime
            features["token_embeddings"] = output.last_hidden_state
            return features
        return PooledOnly(features)


class PooledOnly(dict):
    """The features of an ONNX Runtime forward: asked for token embeddings, which its graph does not return, they
    say so and what to do (not a bare KeyError from inside sentence-transformers)."""

    def __missing__(self, key):
        if key == "token_embeddings":
            raise ValueError(
                "token_embeddings: the ONNX graph returns the pooled embedding only; load the model without "
                'backend="onnx" for the backbone\'s token embeddings.'
            )
        raise KeyError(key)
