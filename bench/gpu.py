"""The whole GPU path in one command: correctness, attention speed and MFU, recompilation,
feeding the GPU, and an end-to-end training run; prints a block for bench/RESULTS.md and writes
the same numbers as JSON.

    .venv/bin/python bench/gpu.py                      # on a CUDA machine: about 6-8 minutes on one H100/H200
    .venv/bin/python bench/gpu.py --smoke              # on CPU, tiny shapes (the test runs this; ~30 s there, Ray up)
    .venv/bin/python bench/gpu.py --only correctness speed --json runs/gpu.json

Sections (each printed as soon as it is done; the JSON is rewritten after each one, so a run cut
short still leaves what it measured):
  correctness  flex (compiled) and varlen against dense, forward and backward, fp32 and bf16
               tolerances; packing invariance; exactly zero cross-sample gradient; an all-padding
               filler batch through DDP (nccl; world of one)
  speed        dense / flex / varlen, forward+backward in bf16 autocast, for one block and the whole
               model (with AdamW) on 8 packed rows of 2048 tokens from VoxCeleb-like lengths, against
               AST at 1024 frames (32 samples, the same patch tokens a step); tokens/s, peak memory,
               TFLOP/s and MFU (FLOPs: `gpu_parts.common.training_flops`); pinned vs pageable copies
  recompile    compiled graphs over 50 batches of different layouts (train, then eval)
  feeding      the loader's production per CPU core vs the trainer's consumption: cores per GPU at
               C = 1 and random C, and for an 8-GPU node
  featurize    `DeviceFeaturizer` (featurize="device") on batches of waveforms already on the device:
               s of audio per second at C = 1 and random C, its share of the speed section's
               whole-model step, and its patches against the CPU path's (max abs <= 1e-4)
  e2e          `jobs/train.py --device cuda` (base preset, Ray Data loader) on a shard set built here
The smoke run uses the same code on CPU with a 2-layer 64-wide model and 256-token rows; compiled
flex and varlen are CUDA-only and are replaced there by the CPU backends (split, dense).
Anything that starts Ray (e2e) joins a running instance if this process has one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_parts, and the benchmarks it reuses

from gpu_parts import correctness, end_to_end, featurize, feeding, recompile, report, speed  # noqa: E402
from gpu_parts.common import FULL, SMOKE, peak_tflops, skipped  # noqa: E402

SECTIONS = ("correctness", "speed", "recompile", "feeding", "featurize", "e2e")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes: checks this script without a GPU")
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run (default: all)"
    )
    parser.add_argument(
        "--json", type=Path, default=Path("runs/gpu-bench.json"), help="where the results go (default: %(default)s)"
    )
    parser.add_argument(
        "--peak-tflops", type=float, help="the device's bf16 dense peak, for MFU (default: from the device name)"
    )
    parser.add_argument(
        "--loader-workers", type=int, help="e2e: Ray Data loader tasks (default: the machine's cores - 4)"
    )
    parser.add_argument("--e2e-epochs", type=int, help="e2e: epochs (default 3; smoke 1)")
    parser.add_argument(
        "--e2e-clips", type=int, help="e2e: clips in the shard set (default 1200, 10 %% of them test; smoke 12)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device; run with --smoke for the CPU check of this script", file=sys.stderr)
        return 2
    sizes = SMOKE if args.smoke else FULL
    overrides = {k: v for k, v in (("e2e_epochs", args.e2e_epochs), ("e2e_clips", args.e2e_clips)) if v}
    sizes = replace(sizes, **overrides)
    peak, name = peak_tflops(device, args.peak_tflops)
    results = {
        "device": name,
        "torch": torch.__version__,
        "smoke": args.smoke,
        "sizes": sizes.__dict__,
        "peak_tflops": peak,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    print(report.header(results), flush=True)
    with tempfile.TemporaryDirectory(prefix="elasticast-gpu-") as work:
        for section in SECTIONS:
            started = time.perf_counter()
            if section not in args.only:
                continue
            if section == "correctness":
                results[section] = correctness.run(device)
            elif section == "speed":
                results[section] = speed.run(sizes, device, peak)
            elif section == "recompile":
                results[section] = recompile.run(sizes, device)
            elif section == "feeding":
                results[section] = (
                    feeding.run(sizes, Path(work), report.consumption(results))
                    if "speed" in results
                    else skipped("needs the speed section's consumption")
                )
            elif section == "featurize":
                results[section] = featurize.run(sizes, device, Path(work), report.step_ms(results))
            else:
                results[section] = end_to_end.run(sizes, device, Path(work), args.loader_workers)
            results[section]["section_s"] = time.perf_counter() - started
            args.json.write_text(json.dumps(results, indent=1))
            print(report.section(section, results), flush=True)
    failed = report.failures(results)
    print(f"\nJSON: {args.json}" + (f"\nFAILED: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
