"""The ElasticAST model: packed encoder, masked attention pooling, presets (never imports Ray)."""
from elasticast.config import PRESETS, ModelConfig, preset
from elasticast.inference import Classifier, Prediction, load_checkpoint, save_checkpoint
from elasticast.model import ElasticAST, loss

__all__ = ["PRESETS", "Classifier", "ElasticAST", "ModelConfig", "Prediction", "load_checkpoint", "loss", "preset", "save_checkpoint"]
