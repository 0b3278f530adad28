"""What an epoch reports, merged over DDP ranks: the metrics logged to history and wandb, the
check of the exactly-once invariant (cheap: counts and a digest; per-key counts on a mismatch),
and the progress line."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from elasticast.training.loop import EpochResult
from loaders.keyed import keyed_bits
from loaders.plan import fnv1a64

_SALT_DIGEST = 0xD16E57


def key_counts(keys: list[str], epoch: int, seen: list[str], failed: int) -> dict:
    """How often each of the epoch's planned `keys` was delivered this epoch (`seen`, all ranks);
    each as often as planned (once, except a mix's repeating sources) is the invariant."""
    counts, expected = Counter(seen), Counter(keys)
    return {
        "epoch": epoch,
        "expected": len(expected),
        "seen": len(counts),
        "exactly_once": counts == expected,
        "duplicates": sorted(k for k, c in counts.items() if c > expected[k]),
        "missing": sorted(k for k, c in expected.items() if counts[k] < c),
        "failed": failed,
        "counts": dict(sorted(counts.items())),
    }


def delivery_check(planned: pa.Array, epoch: int, seen: Sequence[str], failed: int) -> dict:
    """Exactly once, at the cost of hashing the delivered keys: the delivered count and an
    order-independent digest (sum mod 2^64 of a 64-bit mix of each key's hash) must equal those
    of the epoch's `planned` keys (`PackedStream.planned_ids`: a split's keys, or a mix's
    `source/key`s). A duplicate and a missing key could cancel only through a 64-bit coincidence.
    On a mismatch the report adds `key_counts`' per-key detail (missing, duplicates, all counts)."""
    expected, delivered = _digest(fnv1a64(planned)), _digest(fnv1a64(pa.array(seen, pa.string())))
    report = {
        "epoch": epoch,
        "expected": len(planned),
        "delivered": len(seen),
        "expected_digest": f"{expected:016x}",
        "delivered_digest": f"{delivered:016x}",
        "exactly_once": len(seen) == len(planned) and delivered == expected,
        "failed": failed,
        "duplicates": [],
        "missing": [],
    }
    if report["exactly_once"]:
        return report
    return report | key_counts(planned.to_pylist(), epoch, list(seen), failed) | {"exactly_once": False}


def _digest(key_hash: np.ndarray) -> int:
    return int(np.sum(keyed_bits(key_hash, _SALT_DIGEST), dtype=np.uint64))


def epoch_metrics(epoch: int, result: EpochResult, totals: list[EpochResult], valid: dict, lr: float) -> dict:
    """The epoch over all ranks (`totals`); data wait is this rank's (`result`)."""
    samples, tokens = sum(r.samples for r in totals), sum(r.tokens for r in totals)
    slots, cut = sum(r.slots for r in totals), sum(r.cut_tokens for r in totals)
    seconds = max(r.seconds for r in totals)
    return {
        "epoch": epoch + 1,
        "train_loss": sum(r.loss_sum for r in totals) / max(samples, 1),
        "lr": lr,
        "samples_per_s": samples / seconds,
        "tokens_per_s": tokens / seconds,
        "pad_ratio": 1 - tokens / max(slots, 1),
        "cut_ratio": cut / max(tokens + cut, 1),
        "data_wait": result.data_wait_s / max(result.seconds, 1e-9),
        "epoch_s": seconds,
        "failed_samples": sum(r.failed for r in totals),
        "storage_requests_per_step": sum(r.requests for r in totals) / max(sum(r.steps for r in totals), 1),
        "storage_retries": sum(r.retries for r in totals),
        **{f"val_{name}": value for name, value in valid.items()},
    }


def valid_metrics(scores: dict[str, dict], samples: dict[str, int], weights: dict[str, float]) -> dict:
    """The validation scores (`epoch_metrics` prefixes them with `val_`) of one split; of a mix's
    several (one per source), each score averaged over the sources by their mix weights, plus
    `metric/<source>` and `samples/<source>`."""
    if len(scores) == 1:
        ((name, only),) = scores.items()
        return only | {"samples": samples[name]}
    total = sum(weights.values())
    keys = next(iter(scores.values()))
    merged = {key: sum(weights[name] * scores[name][key] for name in scores) / total for key in keys}
    per_source = {f"metric/{name}": scores[name]["metric"] for name in scores}
    return merged | {"samples": sum(samples.values())} | per_source | {f"samples/{n}": samples[n] for n in scores}


def progress_line(metrics: dict, epochs: int, elapsed: float, done: int) -> str:
    """The per-epoch line; ETA from the mean time of the `done` epochs of this invocation."""
    eta = elapsed / max(done, 1) * (epochs - metrics["epoch"])
    name = "accuracy" if "val_accuracy" in metrics else "mAP"
    return (
        f"epoch {metrics['epoch']}/{epochs} | loss {metrics['train_loss']:.4f} | {metrics['samples_per_s']:.1f} samples/s | "
        f"{metrics['tokens_per_s']:.0f} tokens/s | pad {metrics['pad_ratio']:.1%} | cut {metrics['cut_ratio']:.1%} | "
        f"data wait {metrics['data_wait']:.0%} | val {name} {metrics['val_metric']:.4f} | "
        f"{metrics['epoch_s']:.0f} s/epoch | ETA {eta / 60:.1f} min"
    )
