"""The ElasticAST model: packed encoder, masked attention pooling, presets (never imports Ray)."""
from elasticast.config import PRESETS, ModelConfig, preset
from elasticast.model import ElasticAST, loss

__all__ = ["PRESETS", "ElasticAST", "ModelConfig", "loss", "preset"]
