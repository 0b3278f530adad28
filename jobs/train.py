"""Train ElasticAST (or the AST baseline) on a shard set with Ray Train.

    python jobs/train.py                                   # tiny preset on the demo shards, local Ray
    python jobs/train.py --shards OUT --out runs/x --workers 2 --epochs 20 --config my.yaml
    ray job submit --working-dir . -- python jobs/train.py --shards /shared/OUT --out /shared/runs/x

Each Ray Train worker is one DDP rank fed by its own `PackedStream` split (Ray Data tasks
assemble its batches). Every epoch: train, validate on `valid` (else `test`, with a warning) at
native length, checkpoint, log; with `--checkpoint-every N` also checkpoint every N steps. The run
folder `--out` gets `config.yaml`, `history.json`, `keys/epoch-NNN.json` (how often each training
key was seen), `best.pt` and `last.pt` (inference checkpoints for `elasticast.Classifier`),
`metrics.json`, `checkpoints/` (the two latest full training states: `--resume` and retries after a
failure continue from the latest at its exact step), `wandb/` and `ray/`. Every file is written
under a temporary name, then renamed: complete or absent. A failure of the storage itself (no
space, no permission) stops the run with exit status 2 instead of being retried. On a multi-node
cluster `--out` must be storage every node sees.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import random
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import torch
import yaml

from elasticast.checkpoint import TrainedFeatures, save_checkpoint
from elasticast.metrics import score
from elasticast.predict import predict
from elasticast.training.checkpoints import (
    CheckpointStore,
    RunStorageError,
    write_atomic,
    write_text,
)
from elasticast.training.config import TrainConfig, parse_args
from elasticast.training.epoch_report import epoch_metrics, key_counts, progress_line
from elasticast.training.loop import EpochResult, build_model, train_epoch
from elasticast.training.schedule import make_optimizer, make_scheduler
from loaders import PackedStream
from shards.dataset import DATASET_FILE

DEMO_SHARDS = TrainConfig.shards
RAY_DIR = "ray"
CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2


def streams(config: TrainConfig, rank: int, world: int) -> tuple[PackedStream, PackedStream]:
    """This rank's training stream (the configured packing and scales) and validation stream
    (`config.valid_split` at native length: C = 1, no augmentation, no shuffling)."""
    train = PackedStream(Path(config.shards) / "train", config.stream(), rank=rank, world=world)
    valid_config = config.stream(scales=(1.0,), shuffle=False, freq_mask=0, time_mask=0)
    valid = PackedStream(Path(config.shards) / config.valid_split, valid_config, rank=rank, world=world)
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


def training_state(model, optimizer, scheduler, position: dict, history: list, partial: list[EpochResult] | None) -> dict:
    """Everything a resumed run needs to continue bitwise at `position` (the stream's epoch and
    next step); mid-epoch, `partial` holds each rank's share of the epoch so far."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "stream": dict(position), "history": history, "partial": [dataclasses.asdict(r) for r in partial] if partial else None,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}}


def restore_state(path: Path, model, optimizer, scheduler, rank: int, world: int) -> tuple[dict, list, EpochResult | None]:
    """(stream position, history, this rank's share of the epoch so far) from checkpoint `path`."""
    state = CheckpointStore.load(path)
    partial = state["partial"]
    if partial is not None and len(partial) != world:
        raise ValueError(f"{path} was written mid-epoch by {len(partial)} ranks: resume it with --workers {len(partial)}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return state["stream"], state["history"], EpochResult(**partial[rank]) if partial else None


def save_inference(path: Path, model, train: PackedStream, config: TrainConfig) -> None:
    """A checkpoint for `elasticast.Classifier`, written atomically."""
    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            save_checkpoint(handle, model, train.labels, TrainedFeatures.of_stream(train.features),
                            extra={"train_config": config.to_dict(), "stream": dataclasses.asdict(train.config)})

    write_atomic(path, write)


def say(message: str) -> None:
    """A worker's line, printed once: Ray Train's patched `print` would also echo it through its
    logger when stdout is wrapped, and the driver would show it twice."""
    print(message, file=sys.__stdout__, flush=True)


def train_worker(values: dict) -> None:
    """One Ray Train worker = one DDP rank. Rank 0 writes the run folder and the checkpoints;
    a restarted worker group continues from the latest complete checkpoint."""
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
    run = Path(config.out)
    store = CheckpointStore(run / CHECKPOINTS, KEEP_CHECKPOINTS)
    latest = store.latest()
    position, history, so_far = {"epoch": 0, "next_step": 0}, [], None
    if latest is not None:
        position, history, so_far = restore_state(latest, model, optimizer, scheduler, rank, world)
        if rank == 0:
            write_text(run / "history.json", json.dumps(history, indent=1))  # no epoch the checkpoint does not hold
            say(f"resuming from checkpoint {latest.name}: epoch {position['epoch'] + 1}, step {position['next_step']}")
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
                    store.save(training_state(model, optimizer, scheduler, {"epoch": epoch, "next_step": next_step}, history, shares),
                               epoch, next_step)

        result = train_epoch(trained, train.epoch(epoch, position["next_step"] if resumed else 0), optimizer, scheduler, device,
                             config.clip_grad, model.token_usage, so_far if resumed else None, config.checkpoint_every, save_step)
        result.failed += train.stats[epoch]["failed"]
        results, predictions = gather(result, world), gather(predict(model, valid.epoch(0), device), world)
        valid_scores = score(torch.cat([p[1] for p in predictions]), torch.cat([p[2] for p in predictions]))
        metrics = epoch_metrics(epoch, result, results, valid_scores, scheduler.get_last_lr()[0])
        metrics["val_samples"] = sum(len(p[0]) for p in predictions)
        best_so_far = max((m["val_metric"] for m in history), default=-math.inf)
        history.append(metrics)
        if rank == 0:
            counts = key_counts(train.index["key"].tolist(), epoch, [k for r in results for k in r.keys], metrics["failed_samples"])
            (run / "keys").mkdir(exist_ok=True)
            write_text(run / "keys" / f"epoch-{epoch:03d}.json", json.dumps(counts))
            save_inference(run / "last.pt", model, train, config)
            if metrics["val_metric"] > best_so_far:
                save_inference(run / "best.pt", model, train, config)
            store.save(training_state(model, optimizer, scheduler, {"epoch": epoch + 1, "next_step": 0}, history, None), epoch + 1, 0)
            write_text(run / "history.json", json.dumps(history, indent=1))
            say(progress_line(metrics, config.epochs, time.perf_counter() - started, epoch + 1 - position["epoch"]))
            if not counts["exactly_once"]:
                say(f"WARNING: epoch {epoch + 1}: {len(counts['missing'])} keys missing ({counts['failed']} failed samples), "
                    f"{len(counts['duplicates'])} duplicated; see keys/epoch-{epoch:03d}.json")
            if logger:
                logger.log(metrics, step=epoch + 1)
        ray.train.report(metrics)
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


def prepare_run(config: TrainConfig) -> TrainConfig | str:
    """Absolute paths (workers run elsewhere), demo shards built if missing, the validation split
    chosen, the run folder checked against `--resume`. A string is the reason to stop."""
    shards, out = Path(config.shards).resolve(), Path(config.out).resolve()
    if not (shards / DATASET_FILE).is_file():
        if config.shards != DEMO_SHARDS:
            return f"{shards} is not a make_shards output (no {DATASET_FILE}); run jobs/make_shards.py first"
        print(f"building the demo shard set in {shards} ...", flush=True)
        if _make_shards().main(["--out", str(shards), "--overwrite", "--quiet", "--backend", "local"]) != 0:
            return "building the demo shards failed"
    splits = json.loads((shards / DATASET_FILE).read_text()).get("splits", {})
    valid_split = config.valid_split if config.valid_split != "auto" else "valid" if "valid" in splits else "test"
    if not {"train", valid_split} <= set(splits):
        return f"{shards} has splits {sorted(splits)}; training needs 'train' and '{valid_split}' (to validate on)"
    if config.valid_split == "auto" and valid_split == "test":
        print(f"WARNING: {shards} has no 'valid' split: validating on 'test' and choosing best.pt there, so results on test "
              "are optimistic (make_shards --valid-fraction makes a valid split)", file=sys.stderr, flush=True)
    latest = CheckpointStore(out / CHECKPOINTS).latest()
    if not config.resume and ((out / CHECKPOINTS).exists() or (out / "history.json").exists()):
        return f"{out} already holds a run: pass --resume to continue it, or choose another --out"
    if config.resume and latest is None:
        if not (out / "config.yaml").exists():
            return f"--resume: {out} holds no run to resume"
        return (f"--resume: {out / CHECKPOINTS} holds no complete checkpoint, so there is nothing to continue from; "
                "remove the run folder to start afresh, or choose another --out")
    config = TrainConfig(**(config.to_dict() | {"shards": str(shards), "out": str(out), "valid_split": valid_split}))
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    except (OSError, RunStorageError) as error:
        return f"cannot write to --out {out}: {getattr(error, 'strerror', None) or error}"
    return config


def _make_shards():
    spec = importlib.util.spec_from_file_location("make_shards_job", Path(__file__).with_name("make_shards.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_resources(config: TrainConfig, use_gpu: bool, available: dict) -> str | None:
    """A request the cluster can never grant would wait forever: refuse it now."""
    loader = config.loader_workers * config.loader_cpus if config.loader == "ray" else 0.0
    cpus = config.workers * (config.cpus_per_worker + loader)
    if cpus > available.get("CPU", 0) + 1e-9:
        return (f"{config.workers} workers x ({config.cpus_per_worker} trainer CPUs + {loader:g} loader CPUs) = {cpus:g} CPUs, "
                f"but the Ray cluster has {available.get('CPU', 0):g}: lower --workers, --cpus-per-worker or --loader-cpus")
    if use_gpu and config.workers > available.get("GPU", 0):
        return f"{config.workers} GPU workers, but the Ray cluster has {available.get('GPU', 0):g} GPUs"
    return None


def main(argv: list[str] | None = None) -> int:
    import ray
    from ray.train import TrainingFailedError

    prepared = prepare_run(parse_args(argv, __doc__))
    if isinstance(prepared, str):
        print(f"error: {prepared}", file=sys.stderr)
        return 2
    config, out = prepared, Path(prepared.out)
    if not ray.is_initialized():
        ray.init(log_to_driver=True)  # joins RAY_ADDRESS / a running cluster, else starts a local one
    available = ray.cluster_resources()
    use_gpu = config.device == "cuda" or (config.device == "auto" and available.get("GPU", 0) > 0)
    problem = check_resources(config, use_gpu, available)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    print(f"training {config.model} ({config.preset}) on {config.shards}: {config.workers} worker(s), "
          f"{'GPU' if use_gpu else 'CPU'}, {config.epochs} epochs -> {out}", flush=True)
    for attempt in range(config.max_failures + 1):
        if attempt:
            print(f"restarting from the latest checkpoint (retry {attempt} of --max-failures {config.max_failures})", flush=True)
        try:
            trainer(config, use_gpu).fit()
            break
        except TrainingFailedError as error:
            stop = storage_failure(error)
            if stop:
                print(f"error: {stop}; stopped (a retry would fail the same way)", file=sys.stderr)
                return 2
            failure = error
    else:
        print(f"error: training failed after {config.max_failures + 1} attempt(s): {failure}", file=sys.stderr)
        return 1
    try:
        return summarise(config, out)
    except RunStorageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def trainer(config: TrainConfig, use_gpu: bool):
    """One attempt at the run. Ray Train does not retry it: `main` does, after telling failures
    of the run folder's storage (not worth a retry) from the rest."""
    from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        train_worker,
        train_loop_config=config.to_dict(),
        scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=use_gpu, resources_per_worker={"CPU": config.cpus_per_worker}),
        run_config=RunConfig(name=RAY_DIR, storage_path=config.out, failure_config=FailureConfig(max_failures=0),
                             logging_config=LoggingConfig(log_level="WARNING")),  # main reports a failure, in one line
    )


def storage_failure(error: Exception) -> str | None:
    """The message of a worker's `RunStorageError` within a failed `fit()`, if any. Ray Train wraps
    a worker's exception (with its traceback text) and keeps the original as `_base_exc`."""
    for failure in getattr(error, "worker_failures", {}).values():
        cause = getattr(failure, "_base_exc", failure)
        if isinstance(cause, RunStorageError):
            return str(cause)
    return None


def summarise(config: TrainConfig, out: Path) -> int:
    """metrics.json (final and best epochs) and the closing line."""
    history = json.loads((out / "history.json").read_text())
    summary = {"final": history[-1], "best": max(history, key=lambda m: m["val_metric"]), "epochs_run": len(history),
               "valid_split": config.valid_split, "config": config.to_dict()}
    write_text(out / "metrics.json", json.dumps(summary, indent=1))
    print(f"done: best val_metric {summary['best']['val_metric']:.4f} ({config.valid_split}) at epoch {summary['best']['epoch']}; "
          f"final {summary['final']['val_metric']:.4f}; inference checkpoint {out / 'best.pt'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
