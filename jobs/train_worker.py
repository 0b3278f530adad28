"""One Ray Train worker = one DDP rank: its streams, the epoch loop, step and epoch checkpoints,
the run folder's files and logging. Imported by the driver (`jobs.train`) only once
flags are parsed; runs in Ray workers."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
import uuid

import numpy as np
import torch

from elasticast.checkpoint import (
    CHECKPOINTS,
    KEEP_CHECKPOINTS,
    CheckpointStore,
    TrainedFeatures,
    save_checkpoint,
    write_atomic,
    write_text,
)
from elasticast.metrics import score
from elasticast.predict import predict
from elasticast.training.config import TrainConfig
from elasticast.training.epoch_report import delivery_check, epoch_metrics, progress_line
from elasticast.training.loop import EpochResult, build_model, train_epoch
from elasticast.training.schedule import make_optimizer, make_scheduler
from jobs.console import CONSOLE, Console
from loaders import PackedStream
from shards.location import Location


def streams(config: TrainConfig, rank: int, world: int) -> tuple[PackedStream, PackedStream]:
    """This rank's training stream (the configured packing and scales) and validation stream
    (`config.valid_split` at native length: C = 1, no augmentation, no shuffling)."""
    shards = Location.of(config.shards)
    train = PackedStream(str(shards / "train"), config.stream(), rank=rank, world=world)
    valid_config = config.stream(scales=(1.0,), shuffle=False, freq_mask=0, time_mask=0)
    valid = PackedStream(str(shards / config.valid_split), valid_config, rank=rank, world=world)
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


def training_state(
    model, optimizer, scheduler, position: dict, history: list, partial: list[EpochResult] | None
) -> dict:
    """Everything a resumed run needs to continue bitwise at `position` (the stream's epoch and
    next step); mid-epoch, `partial` holds each rank's share of the epoch so far."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "stream": dict(position),
        "history": history,
        "partial": [dataclasses.asdict(r) for r in partial] if partial else None,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
    }


def restore_state(
    path: Location, model, optimizer, scheduler, rank: int, world: int
) -> tuple[dict, list, EpochResult | None]:
    """(stream position, history, this rank's share of the epoch so far) from checkpoint `path`."""
    state = CheckpointStore.load(path)
    partial = state["partial"]
    if partial is not None and len(partial) != world:
        raise ValueError(
            f"{path} was written mid-epoch by {len(partial)} ranks: resume it with --workers {len(partial)}"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return state["stream"], state["history"], EpochResult(**partial[rank]) if partial else None


def save_inference(location: Location, model, train: PackedStream, config: TrainConfig) -> None:
    """A checkpoint for `elasticast.Classifier`, complete or absent."""
    write_atomic(
        location,
        lambda handle: save_checkpoint(
            handle,
            model,
            train.labels,
            TrainedFeatures.of_stream(train.features),
            extra={"train_config": config.to_dict(), "stream": dataclasses.asdict(train.config)},
        ),
    )


def train_worker(values: dict) -> None:
    """One Ray Train worker = one DDP rank. Rank 0 writes the run folder and the checkpoints;
    a restarted worker group continues from the latest complete checkpoint."""
    import ray.train
    import ray.train.torch

    console = Console(values.get(CONSOLE))
    config = TrainConfig(**{k: v for k, v in values.items() if k != CONSOLE})
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config.threads or max(1, (os.cpu_count() or 1) // context.get_local_world_size()))
    torch.manual_seed(config.seed)
    device = ray.train.torch.get_device()
    train, valid = streams(config, rank, world)
    model = build_model(config, len(train.labels)).to(device)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, train.steps(0), config)
    run = Location.of(config.out)
    store = CheckpointStore(run / CHECKPOINTS, KEEP_CHECKPOINTS)
    latest = store.latest()
    position, history, so_far = {"epoch": 0, "next_step": 0}, [], None
    if latest is not None:
        position, history, so_far = restore_state(latest, model, optimizer, scheduler, rank, world)
        if rank == 0:
            write_text(run / "history.json", json.dumps(history, indent=1))  # no epoch the checkpoint does not hold
            console.say(
                f"resuming from checkpoint {latest.name}: epoch {position['epoch'] + 1}, step {position['next_step']}"
            )
    unused = config.model == "ast" and config.pooling == "mean"  # the [cls] token is unused then
    trained = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": unused})
    if config.compile:
        trained = torch.compile(trained)
    logger = _wandb(config, run) if rank == 0 else None
    started = time.perf_counter()
    for epoch in range(position["epoch"], config.run_epochs):
        resumed = epoch == position["epoch"] and position["next_step"] > 0

        def save_step(next_step: int, partial: EpochResult, epoch: int = epoch) -> None:
            if next_step < train.steps(epoch):  # the epoch's end is checkpointed below, with its metrics
                shares = gather(partial, world)
                if rank == 0:
                    store.save(
                        training_state(
                            model, optimizer, scheduler, {"epoch": epoch, "next_step": next_step}, history, shares
                        ),
                        epoch,
                        next_step,
                    )

        result = train_epoch(
            trained,
            train.epoch(epoch, position["next_step"] if resumed else 0),
            optimizer,
            scheduler,
            device,
            config.clip_grad,
            model.token_usage,
            so_far if resumed else None,
            config.checkpoint_every,
            save_step,
        )
        results, predictions = gather(result, world), gather(predict(model, valid.epoch(0), device), world)
        valid_scores = score(torch.cat([p[1] for p in predictions]), torch.cat([p[2] for p in predictions]))
        metrics = epoch_metrics(epoch, result, results, valid_scores, scheduler.get_last_lr()[0])
        metrics["val_samples"] = sum(len(p[0]) for p in predictions)
        best_so_far = max((m["val_metric"] for m in history), default=-math.inf)
        history.append(metrics)
        if rank == 0:
            counts = delivery_check(train.index, epoch, [k for r in results for k in r.keys], metrics["failed_samples"])
            write_text(run / "keys" / f"epoch-{epoch:03d}.json", json.dumps(counts))
            save_inference(run / "last.pt", model, train, config)
            if metrics["val_metric"] > best_so_far:
                save_inference(run / "best.pt", model, train, config)
            store.save(
                training_state(model, optimizer, scheduler, {"epoch": epoch + 1, "next_step": 0}, history, None),
                epoch + 1,
                0,
            )
            write_text(run / "history.json", json.dumps(history, indent=1))
            console.say(
                progress_line(metrics, config.epochs, time.perf_counter() - started, epoch + 1 - position["epoch"])
            )
            if not counts["exactly_once"]:
                console.say(
                    f"WARNING: epoch {epoch + 1}: {len(counts['missing'])} keys missing ({counts['failed']} failed samples), "
                    f"{len(counts['duplicates'])} duplicated; see keys/epoch-{epoch:03d}.json",
                    error=True,
                )
            if logger:
                logger.log(metrics, step=epoch + 1)
        ray.train.report(metrics)
    if logger:
        logger.finish()


def _wandb(config: TrainConfig, run: Location):
    """A wandb run in `config.wandb_dir`, a local folder (offline by default: `wandb sync` it later),
    resumed under the same id, kept in the run folder, when Ray Train restarts the worker group or
    the run is resumed."""
    if config.wandb == "disabled":
        return None
    import wandb

    id_file = run / "wandb_id"
    if not id_file.exists():
        write_text(id_file, uuid.uuid4().hex[:12])
    folder = config.wandb_dir or str(run.local)
    os.makedirs(folder, exist_ok=True)
    return wandb.init(
        project=config.wandb_project,
        dir=folder,
        mode=config.wandb,
        id=id_file.read_text().strip(),
        resume="allow",
        name=run.name,
        config=config.to_dict(),
        settings=wandb.Settings(console="off"),
    )  # Ray already keeps the workers' output
