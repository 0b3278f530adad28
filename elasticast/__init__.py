"""The model side (never imports Ray): `model` (ElasticAST: packed encoder, masked attention
pooling), `attention` (its kernels), `ast_baseline` (the fixed-length AST), `config` (presets),
`weights` (initialising from a ViT-B/16 state dict), `checkpoint` (every checkpoint: inference
files, training states, the run folder's safe writes), `inference` and `predict` (the
`Classifier`, logits over streams), `metrics`; `training/` (Ray-free training parts) and
`evaluation/` (sweeps across lengths and resolutions). Names load on first use, so that a
command's `--help` does not wait for torch."""

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
