"""The query prompt format, in one place: e5-mistral's `Instruct: {instruction}\\nQuery: `.

>>> instruction_prompt("Retrieve semantically similar text.")
'Instruct: Retrieve semantically similar text.\\nQuery: '
>>> instruction_prompt(None) is None
True

Training (`data.TripletCollator`), evaluation (`mteb_encoder`) and the sentence-transformers files of a published
model all build query prompts with `instruction_prompt`; prompt tokens are left out of pooling.
"""

QUERY_PROMPT_FORMAT = "Instruct: {instruction}\nQuery: "
# Task name (or task type as a fallback) -> instruction; e5-mistral's table for the MTEB tasks shipped here.
TASK_INSTRUCTIONS = {
    "STS": "Retrieve semantically similar text.",
    "Banking77Classification": "Given a online banking query, find the corresponding intents",
    "EmotionClassification": "Classify the emotion expressed in the given Twitter message into one of the six "
    "emotions: anger, fear, joy, love, sadness, and surprise",
    "TwentyNewsgroupsClustering": "Identify the topic or theme of the given news articles",
    "TwentyNewsgroupsClustering.v2": "Identify the topic or theme of the given news articles",
    "TwitterURLCorpus": "Retrieve tweets that are semantically similar to the given tweet",
    "ArguAna": "Given a claim, find documents that refute the claim",
    "WikiQARetrieval": "Given a question, retrieve Wikipedia sentences that answer the question",
    "WikiQAReranking": "Given a question, retrieve Wikipedia sentences that answer the question",
    "Retrieval": "Given a query, retrieve relevant passages",
    "Reranking": "Given a query, retrieve relevant passages",
    "Classification": "Classify the given text",
    "Clustering": "Identify the topic or theme of the given text",
    "PairClassification": "Retrieve text that is semantically similar to the given text",
}


def instruction_prompt(instruction: str | None) -> str | None:
    """The query prompt for `instruction` (None without an instruction)."""
    return QUERY_PROMPT_FORMAT.format(instruction=instruction) if instruction else None


def sentence_transformers_prompts(
    query_prompt: str | None = None, instructions: dict = TASK_INSTRUCTIONS
) -> dict[str, str]:
    """`prompts` for `config_sentence_transformers.json`, keyed as mteb looks prompts up (task name + "-query" or
    "-document", task name, task type + type of text, task type, "query"/"document"), so that mteb's stock
    sentence-transformers route picks what poolattn's evaluation gives: each task's instruction on queries and on
    symmetric tasks' texts, nothing on documents. `query` is the model's own training prompt, for `encode_query`.

    >>> prompts = sentence_transformers_prompts("Instruct: Find it\\nQuery: ")
    >>> prompts["STS"], prompts["Retrieval-document"], prompts["document"]
    ('Instruct: Retrieve semantically similar text.\\nQuery: ', '', '')
    """
    prompts = {}
    for key, instruction in instructions.items():
        prompts[key] = instruction_prompt(instruction)
        prompts[f"{key}-document"] = ""
    return {**prompts, "query": query_prompt or "", "document": ""}
