"""Checkpoints that know what they hold: which model (ElasticAST or the AST baseline, with its
settings), its labels and the features it was trained on, so that one file rebuilds the model
(`model_from_checkpoint`) and serves it with the right features (`elasticast.Classifier`).
Checkpoints are read from and written to local paths or object-store URLs (`shards.location`).
Every model of the project is built here (`make_model`), fresh or from a checkpoint.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

import torch

from elasticast.ast_baseline import ASTBaseline
from elasticast.config import MODEL_KINDS, POOLINGS, ModelConfig
from elasticast.model import ElasticAST
from loaders.assemble import FeatureConfig
from loaders.tokens import COMPRESSIONS
from shards.location import Location

FORMAT = "elasticast-checkpoint"
FORMAT_VERSION = 2

Model = ElasticAST | ASTBaseline


@dataclass(frozen=True)
class TrainedFeatures:
    """How training featurized audio; inference must featurize the same way."""

    sample_rate: int
    mean: float
    std: float
    compression: str = "shift"
    max_frames: int = 3072
    multi_label: bool = False

    def __post_init__(self):
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression {self.compression!r} is not one of {COMPRESSIONS}")
        if self.sample_rate < 1 or self.std <= 0:
            raise ValueError(f"sample_rate ({self.sample_rate}) and fbank std ({self.std}) must be > 0")

    @classmethod
    def of_stream(cls, features: FeatureConfig) -> TrainedFeatures:
        """The settings a training stream featurized with (`PackedStream.features`)."""
        return cls(
            features.sample_rate,
            features.mean,
            features.std,
            features.stream.compression,
            features.stream.max_frames,
            features.multi_label,
        )


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint. `model`: kind, `ModelConfig` fields, and for AST its `target_frames`
    and `pooling`. `extra`: whatever the trainer stored (e.g. its configuration)."""

    model: dict
    state_dict: dict
    labels: list[str]
    features: TrainedFeatures
    extra: dict

    @property
    def kind(self) -> str:
        return self.model["kind"]


def make_model(kind: str, config: ModelConfig, target_frames: int = 1024, pooling: str = "cls") -> Model:
    """A fresh model: ElasticAST, or the AST baseline at `target_frames` with `pooling`."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind {kind!r} is not one of {MODEL_KINDS}")
    return ASTBaseline(config, target_frames, pooling) if kind == "ast" else ElasticAST(config)


def describe_model(model: Model) -> dict:
    """What `make_model` needs to build `model` again."""
    description = {
        "kind": "ast" if isinstance(model, ASTBaseline) else "elasticast",
        "config": dataclasses.asdict(model.config),
    }
    if isinstance(model, ASTBaseline):
        description |= {"target_frames": model.target_frames, "pooling": model.pooling}
    return description


def save_checkpoint(
    path: str | os.PathLike | Location | BinaryIO,
    model: Model,
    labels: Sequence[str],
    features: TrainedFeatures,
    extra: dict | None = None,
) -> None:
    """Everything inference needs in one `torch.save` dict, to a path, a URL (one PUT) or a binary
    file. `extra`: plain Python values and tensors only (loading uses `weights_only=True`)."""
    if len(labels) != model.config.num_classes:
        raise ValueError(f"{len(labels)} labels for a model with num_classes {model.config.num_classes}")
    content = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": describe_model(model),
        "state_dict": model.state_dict(),
        "labels": [str(label) for label in labels],
        "features": dataclasses.asdict(features),
        "extra": extra or {},
    }
    if hasattr(path, "write"):
        torch.save(content, path)
        return
    buffer = io.BytesIO()
    torch.save(content, buffer)
    Location.of(path).write_bytes(buffer.getvalue())  # complete or absent, local or remote


def read_torch(source: str | os.PathLike | Location, **load_options):
    """`torch.load` of a local file or an object (read whole, in one retried GET, then parsed)."""
    location = Location.of(source)
    if location.is_local:
        return torch.load(location.local, **load_options)
    return torch.load(io.BytesIO(location.read_bytes()), **load_options)


def load_checkpoint(path: str | os.PathLike | Location, device: str | torch.device = "cpu") -> Checkpoint:
    """The checkpoint at a path or URL, validated: a missing file or another format is refused by
    name. Version 1 files (before the model kind and features were recorded) are read too."""
    path = Location.of(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    raw = read_torch(path, map_location=device, weights_only=True)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not an ElasticAST checkpoint (no format {FORMAT!r}); write it with save_checkpoint"
        )
    version = raw.get("format_version")
    if version == 1:
        raw = _from_version_1(raw)
    elif version != FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format_version {version!r}; this code reads 1 and {FORMAT_VERSION}")
    if raw["model"].get("kind") not in MODEL_KINDS or raw["model"].get("pooling", "cls") not in POOLINGS:
        raise ValueError(
            f"{path}: unknown model {raw['model'].get('kind')!r} (pooling {raw['model'].get('pooling')!r})"
        )
    return Checkpoint(raw["model"], raw["state_dict"], raw["labels"], TrainedFeatures(**raw["features"]), raw["extra"])


def model_from_checkpoint(
    checkpoint: Checkpoint | str | os.PathLike | Location, device: str | torch.device = "cpu"
) -> Model:
    """The checkpoint's model with its weights, on `device`, in eval mode."""
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint, device)
    spec = checkpoint.model
    model = make_model(
        spec["kind"], ModelConfig(**spec["config"]), spec.get("target_frames", 1024), spec.get("pooling", "cls")
    )
    model.load_state_dict(checkpoint.state_dict)
    return model.to(device).eval()


def _from_version_1(raw: dict) -> dict:
    """Version 1 kept the model kind only in the trainer's config, and the features loose."""
    train = raw.get("extra", {}).get("train_config", {})
    model = {"kind": train.get("model", "elasticast"), "config": raw["config"]}
    if model["kind"] == "ast":
        model |= {"target_frames": train["target_frames"], "pooling": train["pooling"]}
    features = {
        "sample_rate": raw["sample_rate"],
        "mean": raw["fbank"]["mean"],
        "std": raw["fbank"]["std"],
        "compression": raw.get("compression", "shift"),
        "max_frames": train.get("max_frames", raw["config"]["max_frames"]),
        "multi_label": raw["multi_label"],
    }
    return {
        "model": model,
        "state_dict": raw["state_dict"],
        "labels": raw["labels"],
        "features": features,
        "extra": raw["extra"],
    }
