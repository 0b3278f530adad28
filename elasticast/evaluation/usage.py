"""Training-token usage (the paper's Table 1), from the training split's index alone: the
share of computed token slots that were padding and of the data's tokens that were cut, for
each checkpoint's own training configuration. AST: every clip cropped or padded to its size;
ElasticAST: the epoch-0 packing plan, for each packing mode."""
from __future__ import annotations

from pathlib import Path

from elasticast.ast_baseline import fixed_size_usage
from elasticast.evaluation.candidates import Candidate
from loaders import PackedStream
from loaders.pack import MODES

PLAN_KEYS = ("rows_per_batch", "max_tokens", "buffer", "scales", "compression", "max_frames", "seed")


def training_usage(train_split: str | Path, candidates: list[Candidate]) -> list[dict]:
    """One row per (training configuration, packing mode); duplicates are listed once."""
    rows, seen = [], set()
    for candidate in candidates:
        config = candidate.train_config
        plan_args = {key: tuple(config[key]) if key == "scales" else config[key] for key in PLAN_KEYS if key in config}
        modes = [config.get("packing", "first_fit")] if candidate.kind == "ast" else list(MODES)
        for mode in modes:
            stream = PackedStream(train_split, packing=mode, shuffle=True, backend="local", **plan_args)
            plan = stream.plan(0)
            if candidate.kind == "ast":
                size = candidate.model.tokens
                real, slots, cut = fixed_size_usage(plan.tokens, size, int(plan.cut.sum()))
                setting = f"{candidate.target_frames} frames"
                pad = 1 - real / max(slots, 1)
            else:
                real, cut = int(plan.tokens.sum()), int(plan.cut.sum())
                setting = f"{mode}, {stream.plan_config.rows_per_batch} x {stream.plan_config.max_tokens} tokens"
                pad = plan.pad_ratio
            key = (candidate.kind, setting, tuple(stream.plan_config.scales), stream.plan_config.max_frames)
            if key in seen:
                continue
            seen.add(key)
            rows.append({"checkpoint": candidate.name, "model": candidate.kind, "setting": setting,
                         "scales": " ".join(f"{c:g}" for c in stream.plan_config.scales),
                         "pad_ratio": pad, "cut_ratio": cut / max(real + cut, 1), "samples": len(plan.sample)})
    return rows
