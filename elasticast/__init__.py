"""The ElasticAST model: packed encoder, masked attention pooling, presets (never imports Ray)."""
from elasticast.config import PRESETS, ModelConfig, preset
from elasticast.checkpoint import TrainedFeatures, load_checkpoint, model_from_checkpoint, save_checkpoint
from elasticast.inference import Classifier, Prediction
from elasticast.model import ElasticAST, loss

__all__ = ["PRESETS", "Classifier", "ElasticAST", "ModelConfig", "Prediction", "TrainedFeatures", "load_checkpoint", "loss",
           "model_from_checkpoint", "preset", "save_checkpoint"]
