"""Scoring every checkpoint at one evaluation point (`elasticast.evaluation.points`) on the same batches."""

from __future__ import annotations

import torch

from elasticast.evaluation.candidates import Candidate
from elasticast.evaluation.points import Point
from elasticast.metrics import score
from elasticast.predict import predict_many
from loaders import PackedStream, StreamConfig
from loaders.tokens import FREQ_TOKENS, PATCH


def point_logits(
    point: Point,
    split: str,
    candidates: list[Candidate],
    native_frames: int,
    backend: str = "local",
    workers: int = 1,
    rows_per_batch: int = 4,
    featurize: str = "loader",
) -> tuple[list[str], list[torch.Tensor], torch.Tensor, dict]:
    """Keys, each candidate's logits, the labels (in the candidates' classes) and the stream's
    counts at `point`. The split is featurized once, as the candidates' checkpoints say
    (`FeatureSpec`: the same for all, `jobs/evaluate.py` checks), at the point's scale and cap."""
    cap = point.cap(native_frames)
    config = StreamConfig(
        rows_per_batch=rows_per_batch,
        max_tokens=max(2048, cap // PATCH * FREQ_TOKENS),
        scales=(point.scale,),
        compression=point.compression,
        max_frames=cap,
        shuffle=False,
        backend=backend,
        workers=workers,
        featurize=featurize,
    )
    stream = PackedStream(split, config, features=candidates[0].features)
    forwards = [c.forward_at(point) for c in candidates]
    keys, logits, labels = predict_many(forwards, stream.epoch(0), featurizer=stream.featurizer)
    classes = candidates[0]
    return (
        keys,
        logits,
        in_classes(labels, stream.labels, classes.labels, classes.features.multi_label),
        stream.stats[0],
    )


def in_classes(labels: torch.Tensor, split_labels: list[str], classes: list[str], multi_label: bool) -> torch.Tensor:
    """A split's labels (ids or multi-hot over its own label list) as the model's classes: ids,
    or multi-hot for a multi-label model. The split's labels must be among the classes."""
    ids = torch.tensor([classes.index(label) for label in split_labels], dtype=torch.int64)
    if labels.dtype.is_floating_point:
        out = labels.new_zeros(len(labels), len(classes))
        out[:, ids] = labels
        return out
    return torch.nn.functional.one_hot(ids[labels], len(classes)).float() if multi_label else ids[labels]


def evaluate_point(point: Point, split: str, candidates: list[Candidate], native_frames: int, **stream) -> list[dict]:
    """One result row per candidate at `point`: the split is featurized once and every model
    scores the same batches (`stream`: `point_logits`' backend, workers, rows_per_batch, featurize)."""
    keys, logits, labels, stats = point_logits(point, split, candidates, native_frames, **stream)
    rows = []
    for candidate, candidate_logits in zip(candidates, logits):
        metrics = score(candidate_logits, labels)
        ast = candidate.kind == "ast"
        input_frames = point.ast_frames(candidate.target_frames) if ast else None
        rows.append(
            {
                "checkpoint": candidate.name,
                "model": candidate.kind,
                "sweep": point.sweep,
                "point": point.name,
                "max_frames": point.max_frames or "",
                "scale": point.scale,
                "compression": point.compression,
                "input_frames": input_frames or "",
                "metric": metrics["metric"],
                "metric_name": next(k for k in metrics if k != "metric"),
                "samples": len(keys),
                "failed": stats["failed"],
                "tokens_per_clip": candidate.model.input_tokens(input_frames)
                if ast
                else stats["tokens"] / max(stats["samples"], 1),
            }
        )
    return rows
