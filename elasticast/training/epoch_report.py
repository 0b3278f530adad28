"""What an epoch reports, merged over DDP ranks: the metrics logged to history and wandb, the
per-key delivery counts that check the exactly-once invariant, and the progress line."""
from __future__ import annotations

from collections import Counter

from elasticast.training.loop import EpochResult


def key_counts(keys: list[str], epoch: int, seen: list[str], failed: int) -> dict:
    """How often each of the split's `keys` was delivered this epoch (`seen`, all ranks);
    exactly once is the invariant."""
    counts = Counter(seen)
    expected = set(keys)
    return {
        "epoch": epoch,
        "expected": len(expected),
        "seen": len(counts),
        "exactly_once": set(counts) == expected and all(c == 1 for c in counts.values()),
        "duplicates": sorted(k for k, c in counts.items() if c > 1),
        "missing": sorted(expected - set(counts)),
        "failed": failed,
        "counts": dict(sorted(counts.items())),
    }


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
        **{f"val_{name}": value for name, value in valid.items()},
    }


def progress_line(metrics: dict, epochs: int, elapsed: float, done: int) -> str:
    """The per-epoch line; ETA from the mean time of the `done` epochs of this invocation."""
    eta = elapsed / max(done, 1) * (epochs - metrics["epoch"])
    name = "accuracy" if "val_accuracy" in metrics else "mAP"
    return (f"epoch {metrics['epoch']}/{epochs} | loss {metrics['train_loss']:.4f} | {metrics['samples_per_s']:.1f} samples/s | "
            f"{metrics['tokens_per_s']:.0f} tokens/s | pad {metrics['pad_ratio']:.1%} | cut {metrics['cut_ratio']:.1%} | "
            f"data wait {metrics['data_wait']:.0%} | val {name} {metrics['val_metric']:.4f} | "
            f"{metrics['epoch_s']:.0f} s/epoch | ETA {eta / 60:.1f} min")
