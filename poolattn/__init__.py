"""poolattn: decoder LLMs as text-embedding models with the pooling and attention designs of arXiv 2409.02727."""

from .configuration_poolattn import PAPER_VARIANTS, PoolAttnConfig, resolve_layers
from .modeling_poolattn import PoolAttnEmbeddingModel, PoolAttnEmbeddingOutput

__all__ = ["PAPER_VARIANTS", "PoolAttnConfig", "PoolAttnEmbeddingModel", "PoolAttnEmbeddingOutput", "resolve_layers"]
__version__ = "0.1.0"
