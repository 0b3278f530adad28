"""PackedStream under a lightning.Trainer, through `loaders.lightning.PackedDataModule`.

python examples/trainers/lightning_fit.py SHARDS [EPOCHS]
"""

from __future__ import annotations

import sys

import lightning
import torch

from elasticast.model import loss
from elasticast.training import TrainConfig, build_model, make_optimizer, make_scheduler
from loaders.batch import PackedBatch
from loaders.lightning import PackedDataModule


class PackedClassifier(lightning.LightningModule):
    """ElasticAST on packed batches; `keys` records what each epoch trained on."""

    def __init__(self, config: TrainConfig, num_classes: int):
        super().__init__()
        self.config = config
        self.model = build_model(config, num_classes)
        self.keys: dict[int, list[str]] = {}

    def training_step(self, batch: PackedBatch, index: int) -> torch.Tensor:
        value = loss(
            self.model(batch), batch.labels, batch.targets
        )  # an all-padding filler batch: an exact 0 with a graph
        self.keys.setdefault(self.current_epoch, []).extend(batch.keys)
        self.log("loss", value, batch_size=max(batch.num_samples, 1))
        return value

    def configure_optimizers(self):
        optimizer = make_optimizer(self.model, self.config)
        steps = self.trainer.datamodule.train_stream.steps(0)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": make_scheduler(optimizer, steps, self.config), "interval": "step"},
        }


def train(
    config: TrainConfig, num_workers: int = 2, rank: int | None = None, world: int | None = None, **trainer_settings
) -> PackedClassifier:
    """rank / world: None for the trainer's own (set them to play one rank of a larger world)."""
    data = PackedDataModule(
        config.splits("train"), config.stream(backend="local"), num_workers=num_workers, rank=rank, world=world
    )
    module = PackedClassifier(config, len(data.labels))
    trainer = lightning.Trainer(max_epochs=config.epochs, logger=False, enable_checkpointing=False, **trainer_settings)
    trainer.fit(module, datamodule=data)
    return module


if __name__ == "__main__":
    train(TrainConfig(shards=sys.argv[1], epochs=int(sys.argv[2]) if len(sys.argv) > 2 else 2))
