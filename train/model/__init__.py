"""The MoE vision-language model: native-resolution ViT -> MLP adapter -> MoE decoder (see vlm.py)."""

from train.model.config import ContrastiveConfig, ModelConfig, MoEConfig, VisionConfig
from train.model.vlm import VLM, ModelOutput

__all__ = ["VLM", "ModelOutput", "ModelConfig", "MoEConfig", "VisionConfig", "ContrastiveConfig"]
