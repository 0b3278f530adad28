"""Where training starts (`--init PATH`): an elasticast checkpoint (fine-tuning; a file
`elasticast-import-weights` wrote is one), or a foreign file the import reads directly (the
paper's released models, timm ViTs). Read once, before the streams, since the weights decide the
feature recipe as well as the model.

- An elasticast checkpoint gives the model (kind, sizes, attention scaling, time table): the
  preset and size flags are not used. Its head is kept when its labels are the data's, in the
  same order, and re-initialised otherwise.
- A foreign file (`elasticast.foreign`) fills the `--model` asked for: a paper file gives the
  whole ElasticAST (heads: head dim 64), an AST or SSAST file the encoder (ElasticAST: its
  position grid converted and factorised; the AST baseline: as it is, at its strides, with
  `--target-frames` the frames it was trained at), a ViT the configured preset. A file names no
  classes: its head is kept when the class count is the data's, else re-initialised.
The recipe "auto", fixed_frames 0 and frame_shift 0 take the starting checkpoint's feature recipe,
fixed length and frame shift (a foreign file but a ViT: the reference codes' recipe, "paper"); the fbank statistics
are the shard set's own.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, replace

import torch

from elasticast.checkpoint import Checkpoint, Model, load_checkpoint, make_model
from elasticast.config import ModelConfig
from elasticast.foreign import import_model, read_weights
from elasticast.training.config import TrainConfig
from elasticast.training.loop import build_model
from loaders.tokens import BASE_SHIFT_MS


@dataclass(frozen=True)
class Start:
    """The weights `--init` names: an elasticast checkpoint, or a foreign format and state dict."""

    path: str
    checkpoint: Checkpoint | None = None
    format: str | None = None
    state: dict[str, torch.Tensor] | None = None

    @property
    def recipe(self) -> str:
        if self.checkpoint is not None:
            return self.checkpoint.features.recipe
        return "elasticast" if self.format == "vit" else "paper"

    @property
    def fixed_frames(self) -> int | None:
        return self.checkpoint.features.fixed_frames if self.checkpoint is not None else None

    @property
    def frame_shift_ms(self) -> float | None:
        return self.checkpoint.features.frame_shift_ms if self.checkpoint is not None else None


def read_start(path: str) -> Start:
    """The file at `path`: an elasticast checkpoint if it is one, else a foreign format by its
    keys; a file that is neither is refused naming what went wrong with each reading."""
    try:
        return Start(path, checkpoint=load_checkpoint(path))
    except (ValueError, RuntimeError, pickle.UnpicklingError) as error:  # another format, or no torch file
        as_checkpoint = error
    try:
        format, state = read_weights(path)
    except (ValueError, RuntimeError, pickle.UnpicklingError) as error:
        raise ValueError(
            f"{path} is neither an elasticast checkpoint ({as_checkpoint}) nor weights elasticast imports ({error})"
        ) from error
    return Start(path, format=format, state=state)


def feature_settings(config: TrainConfig, start: Start | None) -> dict:
    """The recipe, fixed length and frame shift training featurizes with (`FeatureSpec` fields):
    the configured ones, else the starting checkpoint's, else ours."""
    recipe = config.recipe if config.recipe != "auto" else start.recipe if start else "elasticast"
    fixed = config.fixed_frames or (start.fixed_frames if start else None)
    shift = config.frame_shift or (start.frame_shift_ms if start else None) or BASE_SHIFT_MS
    return {"recipe": recipe, "fixed_frames": fixed, "frame_shift_ms": shift}


def initial_model(config: TrainConfig, labels: list[str]) -> tuple[Model, list[str]]:
    """The Python form of `--init`: the model `config` starts from (its `init`, else fresh)."""
    return start_model(config, labels, read_start(config.init) if config.init else None)


def start_model(config: TrainConfig, labels: list[str], start: Start | None) -> tuple[Model, list[str]]:
    """The model training starts from, and what was done, in words."""
    if start is None:
        return build_model(config, len(labels)), []
    if start.checkpoint is not None:
        return _from_checkpoint(config, labels, start)
    frames = {"paper": None, "vit": None}.get(
        start.format, config.target_frames if config.model == "ast" else config.max_frames
    )
    base = build_model(config, len(labels)).config if start.format == "vit" else None
    model, report = import_model(start.format, start.state, config.model, len(labels), frames=frames, base=base)
    if config.model == "elasticast":
        _sized(model.config, config, len(labels))  # the clips must fit its time table
    if "head.weight" in report.initialised:
        note = f"head re-initialised: the file's classes are not the data's {len(labels)} (or it has none)"
    else:
        note = f"head kept: {len(labels)} classes in the file and the data (it names none)"
    return model, [*report.lines(), note]


def _from_checkpoint(config: TrainConfig, labels: list[str], start: Start) -> tuple[Model, list[str]]:
    spec = start.checkpoint.model
    found = ModelConfig(**spec["config"])
    model = make_model(
        spec["kind"], _sized(found, config, len(labels)), spec.get("target_frames", 1024), spec.get("pooling", "cls")
    )
    state = start.checkpoint.state_dict
    lines = [f"model from {start.path}: {spec['kind']} {model.config} (preset and size flags not used)"]
    if list(start.checkpoint.labels) == list(labels):
        model.load_state_dict(state)
        lines.append(f"head kept: the checkpoint's {len(labels)} classes are the data's")
    else:
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")}, strict=False)
        lines.append(
            f"head re-initialised: the checkpoint's {len(start.checkpoint.labels)} classes are not the data's {len(labels)}"
        )
    return model, lines


def _sized(found: ModelConfig, config: TrainConfig, classes: int) -> ModelConfig:
    """The starting model's sizes with the data's classes and this run's attention kernel; the
    frames a clip keeps must fit its time table."""
    if config.max_frames > found.max_frames:
        raise ValueError(
            f"--max-frames {config.max_frames} exceeds the starting model's time table ({found.max_frames} frames): "
            f"pass --max-frames {found.max_frames}"
        )
    return replace(found, num_classes=classes, attention=config.attention)
