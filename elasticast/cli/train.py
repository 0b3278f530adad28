"""Train ElasticAST (or the AST baseline) on a shard set with Ray Train.

    elasticast-train                                   # tiny preset on the demo shards, local Ray
    elasticast-train --shards OUT --out runs/x --workers 2 --epochs 20 --config my.yaml
    ray job submit --working-dir . -- python jobs/train.py --shards /shared/OUT --out /shared/runs/x

(`python jobs/train.py ...` is the same command.) Each Ray Train worker is one DDP rank fed by
its own `PackedStream` split (`elasticast.cli.train_worker`). Every epoch: train, validate on
`test` at native length, checkpoint (Ray Train format: full state to resume), log. The run
folder `--out` gets `config.yaml`, `history.json`, `keys/epoch-NNN.json` (how often each
training key was seen), `best.pt` and `last.pt` (inference checkpoints for
`elasticast.Classifier`), `metrics.json`, `wandb/` and `ray/` (Ray Train checkpoints). On a
multi-node cluster `--out` must be storage every node sees.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import yaml

from elasticast.cli import make_shards
from elasticast.training.config import TrainConfig, parse_args
from shards.options import DATASET_FILE
DEMO_SHARDS = TrainConfig.shards
RAY_DIR = "ray"


def prepare_run(config: TrainConfig) -> TrainConfig | str:
    """Absolute paths (workers run elsewhere), demo shards built if missing, the run folder
    checked against `--resume`. A string is the reason to stop."""
    shards, out = Path(config.shards).resolve(), Path(config.out).resolve()
    if not (shards / DATASET_FILE).is_file():
        if config.shards != DEMO_SHARDS:
            return f"{shards} is not a make_shards output (no {DATASET_FILE}); run elasticast-make-shards first"
        print(f"building the demo shard set in {shards} ...", flush=True)
        if make_shards.main(["--out", str(shards), "--overwrite", "--quiet", "--backend", "local"]) != 0:
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
    config = parse_args(argv, __doc__)  # before the heavy imports: --help and bad flags answer at once
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from elasticast.cli.train_worker import train_worker

    prepared = prepare_run(config)
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
