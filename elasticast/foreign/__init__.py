"""Weights made elsewhere, as elasticast models: the paper's released checkpoints (`paper`) and
timm ViTs (`vit`). `detect_format` tells them apart by their keys; `import_model` builds the
model they describe and says what it did with each tensor. The import command
(`jobs/import_weights.py`) and `--init` of training use these."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from elasticast.config import ModelConfig
from elasticast.foreign.paper import HEAD_DIM, is_paper, paper_config, paper_weights
from elasticast.model import ElasticAST
from elasticast.weights import ImportReport, load_vit_weights_from, read_state_dict
from loaders.feature_spec import FeatureSpec

FORMATS = ("paper", "vit")
SAMPLE_RATE = 16000  # every released model's


@dataclass(frozen=True)
class PaperDataset:
    """A released model's settings, from the paper's recipes (docs/pretrained.md)."""

    classes: int
    mean: float
    std: float
    multi_label: bool
    max_frames: int  # its time table: 192 rows (30 s datasets) or 64 (10 s ones)
    fixed_frames: int | None  # the fixed-length resolution mode of its loader (10 s datasets)

    def features(self) -> FeatureSpec:
        return FeatureSpec(
            SAMPLE_RATE,
            self.mean,
            self.std,
            max_frames=self.max_frames,
            multi_label=self.multi_label,
            recipe="paper",
            fixed_frames=self.fixed_frames,
        )


PAPER_DATASETS = {
    "voxceleb": PaperDataset(1251, -5.842545, 3.88305, False, 3072, None),
    "epic_sounds": PaperDataset(44, -8.660809, 3.878928, False, 3072, None),
    "audioset": PaperDataset(527, -4.414, 4.905, True, 1024, 1024),
    "vggsound": PaperDataset(309, -5.08, 4.453, False, 1024, 1024),
}


def detect_format(state: dict, source: str | Path = "weights") -> str:
    """The format of a state dict, from its keys; a file of none is refused naming what it holds."""
    if is_paper(state):
        return "paper"
    if "patch_embed.proj.weight" in state and "pos_embed" in state:
        return "vit"
    sample = ", ".join(list(state)[:6])
    raise ValueError(
        f"{source}: not a format elasticast imports ({', '.join(FORMATS)}): its {len(state)} tensors "
        f"start {sample or '(none)'}; pass --format if you know it"
    )


def read_weights(path: str | Path, format: str | None = None) -> tuple[str, dict[str, torch.Tensor]]:
    """(format, state dict) of a foreign weights file: the given format, else the detected one."""
    state = read_state_dict(path)
    if format is not None and format not in FORMATS:
        raise ValueError(f"format {format!r} is not one of {FORMATS}")
    return format or detect_format(state, path), state


def model_config(
    format: str,
    state: dict[str, torch.Tensor],
    labels: list[str] | None = None,
    heads: int | None = None,
    max_frames: int | None = None,
) -> ModelConfig:
    """The ElasticAST a foreign file fills. The paper's files fix every size (`heads` cannot be
    read: default head dim 64); a ViT fixes the encoder's, `labels` the classes, `max_frames` the
    time table (default 3072)."""
    if format == "paper":
        config = paper_config(state, heads)
        if max_frames not in (None, config.max_frames):
            raise ValueError(f"its time table covers {config.max_frames} frames, not --max-frames {max_frames}")
        return config
    if not labels:
        raise ValueError(f"a {format} file holds no classifier: name the classes (--labels)")
    dim = state["pos_embed"].shape[-1]
    depth = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    return ModelConfig(len(labels), dim=dim, depth=depth, heads=heads or dim // HEAD_DIM, max_frames=max_frames or 3072)


def import_model(format: str, state: dict[str, torch.Tensor], config: ModelConfig) -> tuple[ElasticAST, ImportReport]:
    """An ElasticAST of `config` (`model_config`) holding the foreign weights, and what became of each."""
    model = ElasticAST(config)
    if format == "paper":
        weights, report = paper_weights(state)
        model.load_state_dict(weights)
        return model, report
    return model, load_vit_weights_from(model, state, "ViT")
