"""Train ElasticAST (or the AST baseline) on a shard set with Ray Train.

    python jobs/train.py                                   # tiny preset on the demo shards, local Ray
    python jobs/train.py --shards OUT --out runs/x --workers 2 --epochs 20 --config my.yaml
    ray job submit --working-dir . -- python jobs/train.py --shards /shared/OUT --out /shared/runs/x

Each Ray Train worker is one DDP rank fed by its own `PackedStream` split (Ray Data tasks
assemble its batches). Every epoch: train, validate on `test` at native length, checkpoint
(Ray Train format: full state to resume), log. The run folder `--out` gets `config.yaml`,
`history.json`, `keys/epoch-NNN.json` (how often each training key was seen), `best.pt` and
`last.pt` (inference checkpoints for `elasticast.Classifier`), `metrics.json`, `wandb/` and
`ray/` (Ray Train checkpoints). On a multi-node cluster `--out` must be storage every node sees.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch
import yaml

from elasticast.checkpoint import TrainedFeatures, save_checkpoint
from elasticast.metrics import score
from elasticast.predict import predict
from elasticast.training.config import TrainConfig, parse_args
from elasticast.training.epoch_report import epoch_metrics, key_counts, progress_line
from elasticast.training.loop import build_model, train_epoch
from elasticast.training.schedule import make_optimizer, make_scheduler
from loaders import PackedStream
from shards.dataset import DATASET_FILE

DEMO_SHARDS = TrainConfig.shards
RAY_DIR = "ray"


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
                counts = key_counts(train.index["key"].tolist(), epoch, [k for r in results for k in r.keys], metrics["failed_samples"])
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


def prepare_run(config: TrainConfig) -> TrainConfig | str:
    """Absolute paths (workers run elsewhere), demo shards built if missing, the run folder
    checked against `--resume`. A string is the reason to stop."""
    shards, out = Path(config.shards).resolve(), Path(config.out).resolve()
    if not (shards / DATASET_FILE).is_file():
        if config.shards != DEMO_SHARDS:
            return f"{shards} is not a make_shards output (no {DATASET_FILE}); run jobs/make_shards.py first"
        print(f"building the demo shard set in {shards} ...", flush=True)
        if _make_shards().main(["--out", str(shards), "--overwrite", "--quiet", "--backend", "local"]) != 0:
            return "building the demo shards failed"
    splits = json.loads((shards / DATASET_FILE).read_text()).get("splits", {})
    if not {"train", "test"} <= set(splits):
        return f"{shards} has splits {sorted(splits)}; training needs 'train' and 'test'"
    previous = (out / RAY_DIR).exists()
    if previous and not config.resume:
        return f"{out} already holds a run: pass --resume to continue it, or choose another --out"
    if config.resume and not previous:
        return f"--resume: {out} holds no run to resume"
    out.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(**(config.to_dict() | {"shards": str(shards), "out": str(out)}))
    (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
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
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

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
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=config.to_dict(),
        scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=use_gpu, resources_per_worker={"CPU": config.cpus_per_worker}),
        run_config=RunConfig(
            name=RAY_DIR,
            storage_path=str(out),
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_metric", checkpoint_score_order="max"),
        ),
    )
    result = trainer.fit()
    if result.error:
        print(f"error: training failed: {result.error}", file=sys.stderr)
        return 1
    best = result.get_best_checkpoint("val_metric", "max")
    for name, checkpoint in (("best.pt", best), ("last.pt", result.checkpoint)):
        with checkpoint.as_directory() as folder:
            shutil.copyfile(Path(folder) / "model.pt", out / name)
    history = json.loads((out / "history.json").read_text())
    summary = {"final": history[-1], "best": max(history, key=lambda m: m["val_metric"]), "epochs_run": len(history),
               "config": config.to_dict()}
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    print(f"done: best val_metric {summary['best']['val_metric']:.4f} at epoch {summary['best']['epoch']}; "
          f"final {summary['final']['val_metric']:.4f}; inference checkpoint {out / 'best.pt'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
