"""Your own map-style dataset of ready fbanks, packed like the stream: `PackingSampler` and
`collate_packed` in a torch DataLoader.

    python examples/trainers/own_dataset.py [EPOCHS]
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from elasticast.training import EpochResult, TrainConfig, build_model, make_optimizer, make_scheduler, train_epoch
from loaders import PackingSampler, frame_tokens


class RandomFbanks(Dataset):
    """A stand-in for yours: items with an `fbank` [frames, 128], a `label` and a `key`; the
    frame counts are known without loading an item (as a length column would tell)."""

    def __init__(self, size: int, num_classes: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.frames = rng.integers(10, 700, size)
        self.labels = rng.integers(0, num_classes, size)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict:
        noise = np.random.default_rng([self.seed, index]).standard_normal((self.frames[index], 128), dtype=np.float32)
        return {"fbank": torch.from_numpy(noise), "label": int(self.labels[index]), "key": f"item-{index}"}


def train(
    config: TrainConfig, dataset: RandomFbanks, num_classes: int, num_workers: int = 2, rank: int = 0, world: int = 1
) -> list[EpochResult]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    counts = frame_tokens(dataset.frames, max_frames=config.max_frames, capacity=config.max_tokens).tokens
    sampler = PackingSampler(
        counts,
        config.max_tokens,
        config.rows_per_batch,
        max_frames=config.max_frames,
        seed=config.seed,
        rank=rank,
        world=world,
    )
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=sampler.collate, num_workers=num_workers)
    model = build_model(config, num_classes).to(device)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, len(sampler), config)
    results = []
    for epoch in range(config.epochs):
        sampler.set_epoch(epoch)
        results.append(train_epoch(model, loader, optimizer, scheduler, device))
    return results


if __name__ == "__main__":
    config = TrainConfig(
        epochs=int(sys.argv[1]) if len(sys.argv) > 1 else 2, max_tokens=512, max_frames=512, rows_per_batch=2
    )
    for result in train(config, RandomFbanks(200, num_classes=5), num_classes=5):
        print(f"{result.steps} steps, {result.samples} samples, loss {result.loss:.4f}")
