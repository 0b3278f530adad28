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
    check_label_map,
    save_checkpoint,
    write_atomic,
    write_text,
)
from elasticast.metrics import score
from elasticast.predict import predict
from elasticast.training.config import TrainConfig
from elasticast.training.epoch_report import delivery_check, epoch_metrics, progress_line, valid_metrics
from elasticast.training.init import Start, feature_settings, read_start, start_model
from elasticast.training.loop import EpochResult, train_epoch
from elasticast.training.schedule import make_optimizer, make_scheduler, rescale_schedule
from jobs.console import CONSOLE, Console
from loaders import FailureBudgetExceeded, PackedStream
from shards.location import Location
from shards.retry import set_storage_timeout


def streams(
    config: TrainConfig, rank: int, world: int, start: Start | None = None
) -> tuple[PackedStream, dict[str, PackedStream]]:
    """This rank's training stream (the configured packing and scales; several shard sets: their
    mix) and validation streams, one per shard set by its source name (`config.valid_split` at
    native length: C = 1, no augmentation, no mixup, every sample once; labels and features as the training
    stream's), featurized with the recipe `feature_settings` gives (`start`: what `--init` named)."""
    settings = feature_settings(config, start)
    train = PackedStream(config.splits("train"), config.stream(), rank=rank, world=world, features=settings)
    valid_config = config.valid_stream()
    valid = {
        name: PackedStream(
            split, valid_config, rank=rank, world=world, labels=train.labels, features=train.features.spec
        )
        for name, split in zip(train.sources.names, config.splits(config.valid_split))
    }
    label_type = "multi" if train.features.spec.multi_label else "single"
    if config.label_type not in ("auto", label_type):
        raise ValueError(f"label_type={config.label_type!r} but {config.shards} holds {label_type}-label data")
    return train, valid


def validate(model, valid: dict[str, PackedStream], device, world: int, weights: dict[str, float]) -> dict:
    """Each validation stream scored over all ranks, and merged (`valid_metrics`), with the
    samples that failed to read; a split that scores no sample stops the run."""
    scores, samples, failed = {}, {}, 0
    for name, stream in valid.items():
        predictions = gather(predict(model, stream.epoch(0), device, stream.featurizer), world)
        samples[name] = sum(len(p[0]) for p in predictions)
        lost = sum(gather(stream.stats[0]["failed"], world))
        if not samples[name]:
            raise FailureBudgetExceeded(
                f"validation on {stream.dataset.root / stream.split} scored 0 samples ({lost} failed)"
            )
        scores[name] = score(torch.cat([p[1] for p in predictions]), torch.cat([p[2] for p in predictions]))
        failed += lost
    return valid_metrics(scores, samples, weights) | {"failed_samples": failed}


def gather(value, world: int) -> list:
    """Every rank's `value`, on every rank."""
    if world == 1:
        return [value]
    out = [None] * world
    torch.distributed.all_gather_object(out, value)
    return out


def training_state(
    model,
    optimizer,
    scheduler,
    position: dict,
    history: list,
    partial: list[EpochResult] | None,
    world: int,
    label_map: dict,
) -> dict:
    """Everything a resumed run needs to continue bitwise at `position` (the epoch and the batches
    of its plan consumed, all ranks together); mid-epoch, `partial` holds each rank's share of the
    epoch so far; `world` the ranks that wrote it; `label_map` each source's labels' ids."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "stream": dict(position),
        "world": world,
        "label_map": label_map,
        "history": history,
        "partial": [dataclasses.asdict(r) for r in partial] if partial else None,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
    }


def restore_state(
    path: Location, model, optimizer, scheduler, rank: int, world: int, train: PackedStream
) -> tuple[dict, list, EpochResult | None, int]:
    """(stream position, history, this rank's share of the epoch so far, the world that wrote it)
    from checkpoint `path`. On another world the epoch's remaining batches are dealt to the new
    ranks (`PackedStream.epoch(consumed=...)`), the shares so far go to rank 0 as one, and the
    schedule moves to the same point in the epochs."""
    state = CheckpointStore.load(path)
    check_label_map(path, state.get("label_map"), train.sources.label_map)
    partial = [EpochResult(**share) for share in state["partial"] or []]
    saved_world = state.get("world", len(partial) or world)  # checkpoints before "world" resumed on theirs
    stream = state["stream"]
    position = {"epoch": stream["epoch"], "consumed": stream.get("consumed", stream.get("next_step", 0) * saved_world)}
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if saved_world != world:
        rescale_schedule(scheduler, train.plan(0).steps(saved_world), train.steps(0))
        partial = [EpochResult.merged(partial)] + [EpochResult() for _ in range(world - 1)] if partial else []
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return position, state["history"], partial[rank] if partial else None, saved_world


def save_inference(location: Location, model, train: PackedStream, config: TrainConfig) -> None:
    """A checkpoint for `elasticast.Classifier`, complete or absent."""
    write_atomic(
        location,
        lambda handle: save_checkpoint(
            handle,
            model,
            train.labels,
            train.features.spec,
            extra={
                "train_config": config.to_dict(),
                "stream": dataclasses.asdict(train.config),
                "label_map": train.sources.label_map,
            },
        ),
    )


def train_worker(values: dict) -> None:
    """One Ray Train worker = one DDP rank. Rank 0 writes the run folder and the checkpoints;
    a restarted worker group continues from the latest complete checkpoint."""
    import ray.train
    import ray.train.torch

    console = Console(values.get(CONSOLE))
    config = TrainConfig(**{k: v for k, v in values.items() if k != CONSOLE})
    set_storage_timeout(config.storage_timeout)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config.threads or max(1, (os.cpu_count() or 1) // context.get_local_world_size()))
    torch.manual_seed(config.seed)
    device = ray.train.torch.get_device()
    start = read_start(config.init) if config.init else None
    train, valid = streams(config, rank, world, start)
    labels = train.sources.label_map
    model, how = start_model(config, train.labels, start)
    model = model.to(device)
    if rank == 0:
        for line in how:
            console.say(f"init: {line}")
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, train.steps(0), config)
    run = Location.of(config.out)
    store = CheckpointStore(run / CHECKPOINTS, KEEP_CHECKPOINTS)
    latest = store.latest()
    position, history, so_far = {"epoch": 0, "consumed": 0}, [], None
    if latest is not None:
        position, history, so_far, saved_world = restore_state(latest, model, optimizer, scheduler, rank, world, train)
        if rank == 0:
            write_text(run / "history.json", json.dumps(history, indent=1))  # no epoch the checkpoint does not hold
            moved = (
                f" (written by {saved_world} ranks, its remaining batches dealt to {world})"
                if saved_world != world
                else ""
            )
            console.say(
                f"resuming from checkpoint {latest.name}: epoch {position['epoch'] + 1}, "
                f"step {position['consumed'] // world}{moved}"
            )
    unused = config.model == "ast" and config.pooling == "mean"  # the [cls] token is unused then
    trained = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": unused})
    if config.compile:
        trained = torch.compile(trained)
    logger = _wandb(config, run) if rank == 0 else None
    started = time.perf_counter()
    for epoch in range(position["epoch"], config.run_epochs):
        resumed = epoch == position["epoch"] and position["consumed"] > 0
        start = position["consumed"] if resumed else 0

        def save_step(next_step: int, partial: EpochResult, epoch: int = epoch, start: int = start) -> None:
            consumed = train.plan(epoch).consumed(next_step, world, start % world)
            if consumed < train.plan(epoch).n_batches:  # the epoch's end is checkpointed below, with its metrics
                shares = gather(partial, world)
                if rank == 0:
                    at = {"epoch": epoch, "consumed": consumed}
                    store.save(
                        training_state(model, optimizer, scheduler, at, history, shares, world, labels),
                        epoch,
                        consumed,
                    )

        result = train_epoch(
            trained,
            train.epoch(epoch, consumed=start),
            optimizer,
            scheduler,
            device,
            config.clip_grad,
            model.token_usage,
            so_far if resumed else None,
            config.checkpoint_every,
            save_step,
            train.featurizer,
        )
        mix = train.mix(epoch)
        weights = {name: m["weight"] for name, m in mix.items()}
        results, valid_scores = gather(result, world), validate(model, valid, device, world, weights)
        metrics = epoch_metrics(epoch, result, results, valid_scores, scheduler.get_last_lr()[0])
        if mix:
            metrics["mix"] = mix
        best_so_far = max((m["val_metric"] for m in history), default=-math.inf)
        history.append(metrics)
        if rank == 0:
            seen = [k for r in results for k in r.keys]
            counts = delivery_check(train.planned_ids(epoch), epoch, seen, metrics["failed_samples"])
            write_text(run / "keys" / f"epoch-{epoch:03d}.json", json.dumps(counts))
            save_inference(run / "last.pt", model, train, config)
            if metrics["val_metric"] > best_so_far:
                save_inference(run / "best.pt", model, train, config)
            store.save(
                training_state(
                    model, optimizer, scheduler, {"epoch": epoch + 1, "consumed": 0}, history, None, world, labels
                ),
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
