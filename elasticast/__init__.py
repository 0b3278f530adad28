"""The ElasticAST model: packed encoder, masked attention pooling, presets (never imports Ray).
Names load on first use, so that a command's `--help` does not wait for torch."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "config": ["PRESETS", "ModelConfig", "preset"],
        "checkpoint": ["load_checkpoint", "model_from_checkpoint", "save_checkpoint"],
        "inference": ["Classifier", "Prediction"],
        "model": ["ElasticAST", "loss"],
    },
)
