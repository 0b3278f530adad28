"""PackedStream in a Hugging Face Accelerate loop (`accelerate launch` for several processes).

python examples/trainers/accelerate_loop.py SHARDS [EPOCHS]
"""

from __future__ import annotations

import sys

from accelerate import Accelerator
from torch.utils.data import DataLoader

from elasticast.model import loss
from elasticast.training import TrainConfig, build_model, make_optimizer, make_scheduler
from loaders import PackedStream
from loaders.device_features import to_device


def train(config: TrainConfig, num_workers: int = 2) -> list[list[str]]:
    """The keys each epoch trained on, in order."""
    accelerator = Accelerator()
    stream = PackedStream(
        config.splits("train"),
        config.stream(backend="local"),
        rank=accelerator.process_index,
        world=accelerator.num_processes,
    )
    # not through accelerator.prepare: the stream already deals batches to ranks
    loader = DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=accelerator.device.type == "cuda")
    model = build_model(config, len(stream.labels))
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, stream.steps(0), config)
    model, optimizer = accelerator.prepare(model, optimizer)
    keys = []
    for epoch in range(config.epochs):
        stream.set_epoch(epoch)
        keys.append([])
        for batch in loader:
            batch = to_device(batch, accelerator.device, stream.featurizer)  # featurize="device": fbanks made here
            with accelerator.autocast():
                value = loss(model(batch), batch.labels, batch.targets)
            optimizer.zero_grad()
            accelerator.backward(value)
            optimizer.step()
            scheduler.step()
            keys[-1] += batch.keys
    return keys


if __name__ == "__main__":
    train(TrainConfig(shards=sys.argv[1], epochs=int(sys.argv[2]) if len(sys.argv) > 2 else 2))
