"""ms_vit: the Vision Transformer in MindSpore, for Ascend NPUs, GPUs and CPUs."""
from .factory import create_model
from .models.vit import (
    VARIANTS,
    Attention,
    DropPath,
    FeedForward,
    PatchEmbedding,
    ResidualCell,
    TransformerEncoder,
    ViT,
    ViTConfig,
    count_params,
    list_models,
    variant_config,
)
from .weights.checkpoint import CheckpointError

__all__ = ["ViT", "ViTConfig", "VARIANTS", "Attention", "FeedForward", "ResidualCell", "TransformerEncoder",
           "PatchEmbedding", "DropPath", "CheckpointError", "create_model", "list_models", "variant_config",
           "count_params"]
__version__ = "0.1.0"
