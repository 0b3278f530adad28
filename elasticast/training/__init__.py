"""Ray-free training parts shared by `jobs/train.py` and any other PyTorch trainer: `config`
(`TrainConfig`, every flag), `loop` (the epoch loop), `schedule` (optimiser and learning rate),
`epoch_report` (epoch metrics, the progress line, the exactly-once check). Loaded on first use."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "config": ["TrainConfig", "parse_args"],
        "epoch_report": ["epoch_metrics", "key_counts", "progress_line"],
        "loop": ["EpochResult", "build_model", "train_epoch"],
        "schedule": ["make_optimizer", "make_scheduler"],
    },
)
