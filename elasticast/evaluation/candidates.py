"""A checkpoint under evaluation: its model (ElasticAST or the AST baseline) rebuilt from a
training run's inference checkpoint, and how it is called at each evaluation point."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from elasticast.ast_baseline import ASTBaseline
from elasticast.config import ModelConfig
from elasticast.inference import load_checkpoint
from elasticast.model import ElasticAST
from loaders.batch import PackedBatch

CHECKPOINT_IN_RUN = "best.pt"


@dataclass
class Candidate:
    name: str
    kind: str  # "elasticast" | "ast"
    model: ElasticAST | ASTBaseline
    labels: list[str]
    fbank: dict
    train_config: dict

    @property
    def target_frames(self) -> int:
        return int(self.train_config.get("target_frames", 0))

    @property
    def max_frames(self) -> int:
        return self.model.config.max_frames

    def forward_at(self, point) -> Callable[[PackedBatch], torch.Tensor]:
        """The model as called at `point` (AST with its input size there)."""
        if self.kind == "ast":
            frames = point.ast_frames(self.target_frames)
            return lambda batch: self.model(batch, frames=frames)
        return self.model


def load_candidate(path: str | Path, name: str | None = None) -> Candidate:
    """A run folder (its `best.pt`) or a checkpoint file written by `jobs/train.py`, in eval mode.
    Named after the run folder unless `name` is given."""
    path = Path(path)
    file = path / CHECKPOINT_IN_RUN if path.is_dir() else path
    checkpoint = load_checkpoint(file)
    train_config = checkpoint["extra"].get("train_config", {})
    kind = train_config.get("model", "elasticast")
    config = ModelConfig(**checkpoint["config"])
    if kind == "ast":
        model = ASTBaseline(config, train_config["target_frames"], train_config["pooling"])
    else:
        model = ElasticAST(config)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    return Candidate(name or (path.name if path.is_dir() else path.stem), kind, model, checkpoint["labels"],
                     checkpoint["fbank"], train_config)
