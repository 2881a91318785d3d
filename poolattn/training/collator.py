"""The batch of one contrastive step: queries, positives and hard negatives tokenized with their prompts and padded."""

import torch

from ..modeling_poolattn import pad_features, pad_token_id_for, tokenize_for_embedding
from ..prompts import instruction_prompt
from .data import row_negatives, text_id


class TripletCollator:
    """Rows -> {"queries": batch, "documents": batch, "text_ids": ids}; documents are the positives, then every
    row's hard negatives (row by row).

    Each text batch holds `input_ids`, `attention_mask` and `pooling_mask` (query instruction tokens excluded from
    pooling). A row's own `instruction` wins over its source's (`source_instructions`, indexed by the row's
    `source`), which wins over `query_instruction`. `text_ids` (`text_id` of each query, each
    query's positive and each document) lets the loss mask duplicates: a document whose text is a query's positive
    or the query itself is not one of that query's negatives.
    """

    def __init__(
        self,
        tokenizer,
        *,
        query_max_length: int,
        document_max_length: int,
        add_eos: bool,
        query_instruction: str | None = None,
        source_instructions: list[str | None] | None = None,
    ):
        self.tokenizer = tokenizer
        self.source_instructions = list(source_instructions or [])
        self.query_max_length, self.document_max_length = query_max_length, document_max_length
        self.add_eos, self.query_instruction = add_eos, query_instruction
        self.pad_token_id = pad_token_id_for(tokenizer)

    def _batch(self, texts, *, prompt, max_length) -> dict[str, torch.Tensor]:
        features = tokenize_for_embedding(
            self.tokenizer, texts, prompt=prompt, max_length=max_length, add_eos=self.add_eos
        )
        return pad_features(features, pad_token_id=self.pad_token_id, padding_side=self.tokenizer.padding_side)

    def _source_instruction(self, row: dict) -> str | None:
        index = row.get("source")
        return (
            self.source_instructions[index]
            if isinstance(index, int) and index < len(self.source_instructions)
            else None
        )

    def __call__(self, rows: list[dict]) -> dict[str, dict[str, torch.Tensor]]:
        prompts = [
            instruction_prompt(row.get("instruction") or self._source_instruction(row) or self.query_instruction)
            for row in rows
        ]
        queries = [row["query"] for row in rows]
        documents = [row["positive"] for row in rows] + [text for row in rows for text in row_negatives(row)]

        def ids(texts):
            return torch.tensor([text_id(text) for text in texts], dtype=torch.long)

        return {
            "queries": self._batch(queries, prompt=prompts, max_length=self.query_max_length),
            "documents": self._batch(documents, prompt=None, max_length=self.document_max_length),
            "text_ids": {
                "queries": ids(queries),
                "positives": ids(documents[: len(rows)]),
                "documents": ids(documents),
                # the query each document answers (its row's, for positives; -1 for hard negatives, no text has it):
                # another row's positive for the same query text is a correct answer, not a negative
                "document_queries": torch.cat([ids(queries), torch.full((len(documents) - len(rows),), -1)]),
            },
        }
