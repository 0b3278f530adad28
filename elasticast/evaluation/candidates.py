"""A checkpoint under evaluation: its model (ElasticAST or the AST baseline) rebuilt from a
training run's inference checkpoint, and how it is called at each evaluation point."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

import torch

from elasticast.checkpoint import Model, load_checkpoint, model_from_checkpoint
from loaders.batch import PackedBatch
from loaders.config import StreamConfig
from loaders.feature_spec import FeatureSpec
from shards.location import Location

CHECKPOINT_IN_RUN = "best.pt"


@dataclass
class Candidate:
    name: str
    kind: str  # "elasticast" | "ast"
    model: Model
    labels: list[str]
    features: FeatureSpec
    stream: StreamConfig | None  # the training stream's settings, when the trainer recorded them

    @property
    def target_frames(self) -> int:
        return self.model.target_frames if self.kind == "ast" else 0

    @property
    def max_frames(self) -> int:
        return self.model.config.max_frames

    def forward_at(self, point) -> Callable[[PackedBatch], torch.Tensor]:
        """The model as called at `point` (AST with its input size there)."""
        if self.kind == "ast":
            frames = point.ast_frames(self.target_frames)
            return lambda batch: self.model(batch, frames=frames)
        return self.model


def is_run_folder(location: Location) -> bool:
    """A folder (then its `best.pt` is meant); on a web server, which cannot say, any name but `*.pt`."""
    return location.is_dir() if location.can_list else not location.name.endswith(".pt")


def load_candidate(path: str | os.PathLike | Location, name: str | None = None) -> Candidate:
    """A run folder (its `best.pt`) or a checkpoint file written by `jobs/train.py`, local or a URL,
    in eval mode. Named after the run folder (or the file) unless `name` is given."""
    location = Location.of(path)
    folder = is_run_folder(location)
    checkpoint = load_checkpoint(location / CHECKPOINT_IN_RUN if folder else location)
    stream = checkpoint.extra.get("stream")
    return Candidate(
        name or (location.name if folder else PurePosixPath(location.name).stem),
        checkpoint.kind,
        model_from_checkpoint(checkpoint),
        checkpoint.labels,
        checkpoint.features,
        StreamConfig(**stream) if stream else None,
    )
