"""PackedStream in a torch DataLoader: workers featurize in parallel, batches arrive in step
order, each once.

    python examples/trainers/dataloader.py SHARDS [EPOCHS]
"""

from __future__ import annotations

import sys

import torch
from torch.utils.data import DataLoader

from elasticast.training import EpochResult, TrainConfig, build_model, make_optimizer, make_scheduler, train_epoch
from loaders import PackedStream


def train(config: TrainConfig, num_workers: int = 2, rank: int = 0, world: int = 1) -> list[EpochResult]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    stream = PackedStream(config.splits("train"), config.stream(backend="local"), rank=rank, world=world)
    model = build_model(config, len(stream.labels)).to(device)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, stream.steps(0), config)
    loader = DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=device.type == "cuda")
    results = []
    for epoch in range(config.epochs):
        stream.set_epoch(epoch)  # as with a DistributedSampler
        results.append(train_epoch(model, loader, optimizer, scheduler, device, featurizer=stream.featurizer))
    return results


if __name__ == "__main__":
    for result in train(TrainConfig(shards=sys.argv[1], epochs=int(sys.argv[2]) if len(sys.argv) > 2 else 2)):
        print(f"{result.steps} steps, {result.samples} samples, loss {result.loss:.4f}")
