"""Where training starts (`--init PATH`): an elasticast checkpoint (fine-tuning; a file
`elasticast-import-weights` wrote is one), or a foreign file the import reads directly (the
paper's released models, timm ViTs). Read once, before the streams, since the weights decide the
feature recipe as well as the model.

- An elasticast checkpoint gives the model (kind, sizes, attention scaling, time table): the
  preset and size flags are not used. Its head is kept when its labels are the data's, in the
  same order, and re-initialised otherwise.
- A paper file gives the whole ElasticAST too (heads: head dim 64); it names no classes, so its
  head is kept when the class count is the data's.
- A ViT initialises the configured model (`elasticast.weights`); its head is always new.
The recipe "auto" and fixed_frames 0 take the starting checkpoint's feature recipe and fixed
length (a paper file: the paper's recipe); the fbank statistics are the shard set's own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from elasticast.checkpoint import Checkpoint, Model, load_checkpoint, make_model
from elasticast.config import ModelConfig
from elasticast.foreign import model_config, read_weights
from elasticast.foreign.paper import paper_weights
from elasticast.model import ElasticAST
from elasticast.training.config import TrainConfig
from elasticast.training.loop import build_model
from elasticast.weights import load_vit_weights_from
from loaders.feature_spec import FeatureSpec


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
        return "paper" if self.format == "paper" else "elasticast"

    @property
    def fixed_frames(self) -> int | None:
        return self.checkpoint.features.fixed_frames if self.checkpoint is not None else None


def read_start(path: str) -> Start:
    """The file at `path`: an elasticast checkpoint if it is one, else a foreign format by its keys."""
    try:
        return Start(path, checkpoint=load_checkpoint(path))
    except ValueError as error:
        if "not an ElasticAST checkpoint" not in str(error):
            raise
    format, state = read_weights(path)
    return Start(path, format=format, state=state)


def feature_settings(config: TrainConfig, start: Start | None) -> dict:
    """The recipe and fixed length training featurizes with (`FeatureSpec` fields)."""
    recipe = config.recipe if config.recipe != "auto" else start.recipe if start else "elasticast"
    fixed = config.fixed_frames or (start.fixed_frames if start else None)
    return {"recipe": recipe, "fixed_frames": fixed}


def initial_model(config: TrainConfig, labels: list[str]) -> tuple[Model, list[str]]:
    """The Python form of `--init`: the model `config` starts from (its `init`, else fresh)."""
    return start_model(config, labels, read_start(config.init) if config.init else None)


def training_features(config: TrainConfig, meta: dict, start: Start | None) -> FeatureSpec:
    """How training featurizes: the shard set's statistics (`dataset.json`), the recipe and fixed
    length of `feature_settings`, the stream's compression and cap."""
    return FeatureSpec.of_shards(meta, config.stream(), **feature_settings(config, start))


def start_model(config: TrainConfig, labels: list[str], start: Start | None) -> tuple[Model, list[str]]:
    """The model training starts from, and what was done, in words."""
    if start is None:
        return build_model(config, len(labels)), []
    if start.checkpoint is not None:
        return _from_checkpoint(config, labels, start)
    if start.format == "paper":
        if config.model != "elasticast":
            raise ValueError(
                f"--init {start.path} is an ElasticAST of the paper; --model {config.model} cannot hold it"
            )
        found = model_config("paper", start.state)
        model = ElasticAST(_sized(found, config, len(labels)))
        weights, report = paper_weights(start.state)
        if found.num_classes == len(labels):
            note = f"head kept: {len(labels)} classes in the file and the data (it names none)"
        else:
            head = ["head.weight", "head.bias"]
            for key in head:
                del weights[key]
                del report.loaded[key]
            report.left_out += head
            report.initialised += head
            note = f"head re-initialised: the file has {found.num_classes} classes, the data {len(labels)}"
        model.load_state_dict(weights, strict=False)
        return model, [*report.lines(), note]
    model = build_model(config, len(labels))
    return model, [
        *load_vit_weights_from(model, start.state, start.path).lines(),
        "head: new (a ViT has none for audio)",
    ]


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
