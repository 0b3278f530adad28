"""Ray-free training parts shared by `jobs/train.py` and any other PyTorch trainer."""
from elasticast.training.config import TrainConfig, parse_args
from elasticast.training.epoch_report import epoch_metrics, key_counts, progress_line
from elasticast.metrics import score
from elasticast.predict import predict
from elasticast.training.loop import EpochResult, build_model, train_epoch
from elasticast.training.schedule import make_optimizer, make_scheduler

__all__ = ["EpochResult", "TrainConfig", "build_model", "epoch_metrics", "key_counts", "make_optimizer", "make_scheduler", "parse_args",
           "predict", "progress_line", "score", "train_epoch"]
