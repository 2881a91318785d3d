"""train.py's named recipes (`--preset paper`, `--preset small`) and the names that stand for several designs."""

from ..backbones import DEFAULT_BACKBONE
from ..configuration_poolattn import BASELINE_DESIGNS, PAPER_VARIANTS
from ..shared_data import SHARED_DATA, UNSET_DATA

LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


BATCH_SAMPLING = ("one_source_per_batch", "mixed")


SYMMETRIC_INSTRUCTION = "Retrieve semantically similar text."  # the STS instruction of the evaluation


SMALL_RECIPE_INSTRUCTIONS = {
    "snli_triplets": SYMMETRIC_INSTRUCTION,
    "quora_duplicates": SYMMETRIC_INSTRUCTION,
    "msrp_paraphrases": SYMMETRIC_INSTRUCTION,
    "wikiqa_triplets": "Given a question, retrieve Wikipedia sentences that answer the question",
    "trecqa_triplets": "Given a question, retrieve sentences that answer the question",
    "msmarco_nq_samples": "Given a web search query, retrieve relevant passages that answer the query",
}


PRESETS = {
    # Tang & Yang 2024, Section 4.1 and the paper's code: Mistral-7B-v0.1, LoRA r16 on every projection, lr 1e-5,
    # 1000 steps, warmup 100, batch 2048, bf16, 512 tokens. GradCache chunks make the batch real on any GPU count.
    "paper": {
        "backbone": "mistralai/Mistral-7B-v0.1",
        "train_data": "yixuantt/ir_data",
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.1,
        "lora_target_modules": LORA_TARGETS,
        "learning_rate": 1e-5,
        "max_steps": 1000,
        "warmup_steps": 100,
        "lr_scheduler_type": "linear",
        "contrastive_batch_size": 2048,
        "gradcache_chunk_size": 32,
        "bf16": True,
        "model_dtype": "bfloat16",
        "query_max_length": 512,
        "document_max_length": 512,
        "activation_checkpointing": True,
        "temperature": 0.05,
        "save_steps": 100,
    },
    # The small real recipe for a 2-core CPU (~8-12 min per run on SmolLM2-135M): the six sources of the shared
    # training folder (SNLI, Quora, MSRP, WikiQA, TrecQA, MS MARCO/NQ), one source per batch, each source's query
    # instruction in the e5 form the evaluation uses. Learning rate from a sweep of variant 5 at these settings
    # (README "Results": 1e-4, 3e-4, 1e-3 at 60 steps, scored on the five STS tasks).
    "small": {
        "backbone": DEFAULT_BACKBONE,
        "train_data": str(SHARED_DATA / "train") if SHARED_DATA else f"{UNSET_DATA}/train",
        "source_instructions": SMALL_RECIPE_INSTRUCTIONS,
        "per_device_train_batch_size": 16,
        "max_steps": 60,
        "warmup_steps": 6,
        "lr_scheduler_type": "linear",
        "learning_rate": 1e-4,
        "query_max_length": 128,
        "document_max_length": 128,
        "negatives_per_query": 1,
        "batch_sampling": "one_source_per_batch",
        "temperature": 0.05,
        "save_steps": 30,
        "logging_steps": 5,
    },
}


# --variant names that stand for several designs
DESIGN_GROUPS = {"all": [str(number) for number in PAPER_VARIANTS], "baselines": list(BASELINE_DESIGNS)}
