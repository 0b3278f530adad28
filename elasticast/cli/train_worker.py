"""One Ray Train worker = one DDP rank: its streams, the epoch loop, checkpoints and logging.
Imported by the driver (`elasticast.cli.train`) only once flags are parsed; runs in Ray workers."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from elasticast.checkpoint import TrainedFeatures, save_checkpoint
from elasticast.metrics import score
from elasticast.predict import predict
from elasticast.training.config import TrainConfig
from elasticast.training.epoch_report import delivery_check, epoch_metrics, progress_line
from elasticast.training.loop import build_model, train_epoch
from elasticast.training.schedule import make_optimizer, make_scheduler
from loaders import PackedStream


def streams(config: TrainConfig, rank: int, world: int) -> tuple[PackedStream, PackedStream]:
    """This rank's training stream (the configured packing and scales) and validation stream
    (native length: C = 1, no augmentation, no shuffling)."""
    train = PackedStream(Path(config.shards) / "train", config.stream(), rank=rank, world=world)
    valid_config = config.stream(scales=(1.0,), shuffle=False, freq_mask=0, time_mask=0)
    valid = PackedStream(Path(config.shards) / "test", valid_config, rank=rank, world=world)
    label_type = "multi" if train.features.multi_label else "single"
    if config.label_type not in ("auto", label_type):
        raise ValueError(f"label_type={config.label_type!r} but {config.shards} holds {label_type}-label data")
    return train, valid


def gather(value, world: int) -> list:
    """Every rank's `value`, on every rank."""
    if world == 1:
        return [value]
    out = [None] * world
    torch.distributed.all_gather_object(out, value)
    return out


def save_state(folder: Path, model, optimizer, scheduler, epoch: int, history: list, train: PackedStream, config: TrainConfig) -> None:
    """Full training state (resumes at the start of epoch `epoch + 1`) and an inference checkpoint."""
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "next_epoch": epoch + 1, "next_step": 0, "history": history,
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}},
               folder / "state.pt")
    save_checkpoint(folder / "model.pt", model, train.labels, TrainedFeatures.of_stream(train.features),
                    extra={"train_config": config.to_dict(), "stream": dataclasses.asdict(train.config)})


def restore_state(model, optimizer, scheduler) -> tuple[int, list]:
    """(first epoch to run, history so far) from Ray Train's latest checkpoint, if any."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, []
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / "state.pt", weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    if ray.train.get_context().get_world_rank() == 0:
        say(f"resuming from the checkpoint after epoch {state['next_epoch']}")
    return state["next_epoch"], state["history"]


def say(message: str) -> None:
    """A worker's line, printed once: Ray Train's patched `print` would also echo it through its
    logger when stdout is wrapped, and the driver would show it twice."""
    print(message, file=sys.__stdout__, flush=True)


def train_worker(values: dict) -> None:
    """One Ray Train worker = one DDP rank."""
    import ray.train
    import ray.train.torch

    config = TrainConfig(**values)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config.threads or max(1, (os.cpu_count() or 1) // context.get_local_world_size()))
    torch.manual_seed(config.seed)
    device = ray.train.torch.get_device()
    train, valid = streams(config, rank, world)
    model = build_model(config, len(train.labels)).to(device)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, train.steps(0), config)
    first_epoch, history = restore_state(model, optimizer, scheduler)
    unused = config.model == "ast" and config.pooling == "mean"  # the [cls] token is unused then
    trained = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": unused})
    if config.compile:
        trained = torch.compile(trained)
    run = Path(config.out)
    logger = _wandb(config, run) if rank == 0 else None
    started = time.perf_counter()
    for epoch in range(first_epoch, config.run_epochs):
        result = train_epoch(trained, train.epoch(epoch), optimizer, scheduler, device, config.clip_grad, model.token_usage)
        result.failed = train.stats[epoch]["failed"]
        results, predictions = gather(result, world), gather(predict(model, valid.epoch(0), device), world)
        valid_scores = score(torch.cat([p[1] for p in predictions]), torch.cat([p[2] for p in predictions]))
        metrics = epoch_metrics(epoch, result, results, valid_scores, scheduler.get_last_lr()[0])
        metrics["val_samples"] = sum(len(p[0]) for p in predictions)
        history.append(metrics)
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                counts = delivery_check(train.index, epoch, [k for r in results for k in r.keys], metrics["failed_samples"])
                (run / "keys").mkdir(exist_ok=True)
                (run / "keys" / f"epoch-{epoch:03d}.json").write_text(json.dumps(counts))
                (run / "history.json").write_text(json.dumps(history, indent=1))
                save_state(Path(folder), model, optimizer, scheduler, epoch, history, train, config)
                say(progress_line(metrics, config.epochs, time.perf_counter() - started, epoch + 1 - first_epoch))
                if not counts["exactly_once"]:
                    say(f"WARNING: epoch {epoch + 1}: {len(counts['missing'])} keys missing ({counts['failed']} failed samples), "
                        f"{len(counts['duplicates'])} duplicated; see keys/epoch-{epoch:03d}.json")
                if logger:
                    logger.log(metrics, step=epoch + 1)
            checkpoint = ray.train.Checkpoint.from_directory(folder) if rank == 0 else None
            ray.train.report(metrics, checkpoint=checkpoint)
    if logger:
        logger.finish()


def _wandb(config: TrainConfig, run: Path):
    """A wandb run under the run folder (offline by default: `wandb sync` it later), resumed
    under the same id when Ray Train restarts the worker group or the run is resumed."""
    if config.wandb == "disabled":
        return None
    import wandb

    id_file = run / "wandb_id"
    if not id_file.exists():
        id_file.write_text(uuid.uuid4().hex[:12])
    return wandb.init(project=config.wandb_project, dir=str(run), mode=config.wandb, id=id_file.read_text().strip(),
                      resume="allow", name=run.name, config=config.to_dict(),
                      settings=wandb.Settings(console="off"))  # Ray already keeps the workers' output
