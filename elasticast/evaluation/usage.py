"""Training-token usage (the paper's Table 1), from the training split's index alone: the
share of computed token slots that were padding and of the data's tokens that were cut, for
each checkpoint's own training configuration. AST: every clip cropped or padded to its size;
ElasticAST: the epoch-0 packing plan, for each packing mode."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from elasticast.ast_baseline import fixed_size_usage
from elasticast.evaluation.candidates import Candidate
from loaders import PackedStream
from loaders.pack import MODES


def training_usage(train_split: str | Path, candidates: list[Candidate]) -> list[dict]:
    """One row per (training configuration, packing mode); duplicates are listed once.
    Candidates whose checkpoint does not record its training stream are left out; the split is
    planned with every sample once (uniform sampling), whatever the training drew."""
    rows, seen = [], set()
    for candidate in candidates:
        if candidate.stream is None:
            continue
        modes = [candidate.stream.packing] if candidate.kind == "ast" else list(MODES)
        for mode in modes:
            config = replace(
                candidate.stream, packing=mode, shuffle=True, backend="local", weights=None, sampling="uniform"
            )
            plan = PackedStream(train_split, config).plan(0)
            if candidate.kind == "ast":
                real, slots, cut = fixed_size_usage(plan.tokens, candidate.model.tokens, int(plan.cut.sum()))
                setting = f"{candidate.target_frames} frames"
                pad = 1 - real / max(slots, 1)
            else:
                real, cut = int(plan.tokens.sum()), int(plan.cut.sum())
                setting = f"{mode}, {config.rows_per_batch} x {config.max_tokens} tokens"
                pad = plan.pad_ratio
            key = (candidate.kind, setting, config.scales, config.max_frames)
            if key in seen:
                continue
            seen.add(key)
            rows.append(
                {
                    "checkpoint": candidate.name,
                    "model": candidate.kind,
                    "setting": setting,
                    "scales": " ".join(f"{c:g}" for c in config.scales),
                    "pad_ratio": pad,
                    "cut_ratio": cut / max(real + cut, 1),
                    "samples": len(plan.sample),
                }
            )
    return rows
