"""PackedStream in a plain PyTorch loop.

python examples/trainers/loop.py SHARDS [EPOCHS]      # SHARDS: a make_shards output
"""

from __future__ import annotations

import sys

import torch

from elasticast.training import EpochResult, TrainConfig, build_model, make_optimizer, make_scheduler, train_epoch
from loaders import PackedStream


def train(config: TrainConfig, rank: int = 0, world: int = 1) -> list[EpochResult]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    stream = PackedStream(config.splits("train"), config.stream(backend="local"), rank=rank, world=world)
    model = build_model(config, len(stream.labels)).to(device)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, stream.steps(0), config)
    results = []
    for epoch in range(config.epochs):
        batches = stream.epoch(epoch)  # stream.epoch(epoch, start_step=k) resumes at step k
        results.append(train_epoch(model, batches, optimizer, scheduler, device, featurizer=stream.featurizer))
    return results


if __name__ == "__main__":
    for result in train(TrainConfig(shards=sys.argv[1], epochs=int(sys.argv[2]) if len(sys.argv) > 2 else 2)):
        print(f"{result.steps} steps, {result.samples} samples, loss {result.loss:.4f}")
