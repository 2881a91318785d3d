"""The query prompt format, in one place: e5-mistral's `Instruct: {instruction}\\nQuery: `.

>>> instruction_prompt("Retrieve semantically similar text.")
'Instruct: Retrieve semantically similar text.\\nQuery: '
>>> instruction_prompt(None) is None
True

Training (`data.TripletCollator`), evaluation (`mteb_encoder`) and the sentence-transformers files of a published
model all build query prompts with `instruction_prompt`; prompt tokens are left out of pooling.
"""

QUERY_PROMPT_FORMAT = "Instruct: {instruction}\nQuery: "


def instruction_prompt(instruction: str | None) -> str | None:
    """The query prompt for `instruction` (None without an instruction)."""
    return QUERY_PROMPT_FORMAT.format(instruction=instruction) if instruction else None
