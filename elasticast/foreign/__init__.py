"""Weights made elsewhere, as elasticast models: the paper's released checkpoints (`paper`), AST
(`ast`, the original code's files; `ast-hf`, its HuggingFace port), SSAST (`ssast`) and timm ViTs
(`vit`); the mappings live in `paper.py`, `ast.py` (the AST family) and `elasticast.weights`
(ViT). `detect_format` tells the formats apart by their keys; `import_model` builds the model a
file describes (or the kind asked for) and says what it did with each tensor. The import command
(`jobs/import_weights.py`) and `--init` of training use these."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from elasticast.checkpoint import Model, make_model
from elasticast.config import ModelConfig
from elasticast.foreign.ast import ast_config, ast_format, ast_weights, canonical, elastic_weights
from elasticast.foreign.paper import default_heads, is_paper, paper_config, paper_weights
from elasticast.model import ElasticAST
from elasticast.weights import ImportReport, load_vit_weights_from, read_state_dict
from loaders.feature_spec import FeatureSpec

FORMATS = ("paper", "ast", "ast-hf", "ssast", "vit")
NATIVE_KIND = {"paper": "elasticast", "ast": "ast", "ast-hf": "ast", "ssast": "elasticast", "vit": "elasticast"}
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
    frame_shift_ms: float = 10.0  # at C = 1 (Epic-Sounds' recipe: 5 ms)

    def features(self) -> FeatureSpec:
        return FeatureSpec(
            SAMPLE_RATE,
            self.mean,
            self.std,
            max_frames=self.max_frames,
            multi_label=self.multi_label,
            recipe="paper",
            fixed_frames=self.fixed_frames,
            frame_shift_ms=self.frame_shift_ms,
        )


PAPER_DATASETS = {
    "voxceleb": PaperDataset(1251, -5.842545, 3.88305, False, 3072, None),
    "epic_sounds": PaperDataset(44, -8.660809, 3.878928, False, 3072, None, frame_shift_ms=5.0),
    "audioset": PaperDataset(527, -4.414, 4.905, True, 1024, 1024),
    "vggsound": PaperDataset(309, -5.08, 4.453, False, 1024, 1024),
}


def detect_format(state: dict, source: str | Path = "weights") -> str:
    """The format of a state dict, from its keys; a file of none is refused naming what it holds."""
    if is_paper(state):
        return "paper"
    if ast_format(state):
        return ast_format(state)
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


def import_model(
    format: str,
    state: dict[str, torch.Tensor],
    kind: str | None = None,
    classes: int | None = None,
    heads: int | None = None,
    frames: int | None = None,
    base: ModelConfig | None = None,
) -> tuple[Model, ImportReport]:
    """The model a foreign file fills, holding its weights, and what became of each tensor.

    kind: "elasticast" or "ast" (default: the format's own: AST files make the AST baseline).
    classes: the head's classes (default: the file's); a head of another size is left out.
    heads: attention heads (not in the weights; default head dim 64).
    frames: the time table's frames (paper: read from the file; AST baseline: the frames its
        grid was trained at, default 1024; ElasticAST from AST/SSAST/ViT: default 3072).
    base: the configuration a ViT fills (default: its width and depth, `classes`, `frames`)."""
    kind = kind or NATIVE_KIND[format]
    report = ImportReport()
    if format == "vit":
        if base is None and classes is None:
            raise ValueError("a vit file holds no classifier: name the classes (--labels)")
        dim = state["pos_embed"].shape[-1]
        depth = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
        own = ModelConfig(
            classes or 1, dim=dim, depth=depth, heads=default_heads(dim, heads), max_frames=frames or 3072
        )
        model = make_model(kind, base or own)
        return model, load_vit_weights_from(model, state, "ViT")
    if format == "paper":
        if kind != "elasticast":
            raise ValueError("the paper's files are ElasticAST models: they cannot fill the AST baseline")
        config = paper_config(state, heads)
        if frames not in (None, config.max_frames):
            raise ValueError(f"its time table covers {config.max_frames} frames, not {frames}")
        weights, report = paper_weights(state)
    else:
        common = canonical(format, state, report)
        if kind == "ast":
            config, rows = ast_config(common, _classes(common), heads, frames or 1024)
            weights = ast_weights(common, rows, report, dist=True)
        else:
            config = _encoder_config(common, heads, frames or 3072)
            weights = elastic_weights(common, config, report, ssast=format == "ssast")
    found = weights["head.weight"].shape[0] if "head.weight" in weights else None
    classes = classes or found
    if classes is None:
        raise ValueError(f"a {format} file holds no classifier: name the classes (--labels)")
    if found not in (None, classes):
        for key in ("head.weight", "head.bias"):
            del weights[key]
            report.loaded = {k: v for k, v in report.loaded.items() if v != key}
            report.left_out.append(f"{key} ({found} classes, not {classes})")
    config = replace(config, num_classes=classes)
    model = make_model(kind, config, config.max_frames, "cls_dist") if kind == "ast" else ElasticAST(config)
    target = model.state_dict()
    unknown = sorted(set(weights) - set(target))
    if unknown:
        raise KeyError(f"weights with no place in the model: {unknown[:5]}")
    model.load_state_dict(weights, strict=False)
    report.initialised = sorted(set(target) - set(weights))
    return model, report


def _classes(common: dict) -> int:
    return common["head.weight"].shape[0] if "head.weight" in common else 1


def _encoder_config(common: dict, heads: int | None, frames: int) -> ModelConfig:
    """ElasticAST at an AST-family file's width and depth, over `frames` frames."""
    dim = common["pos_embed"].shape[-1]
    depth = len({k.split(".")[1] for k in common if k.startswith("blocks.")})
    mlp_ratio = common["blocks.0.mlp.fc1.weight"].shape[0] / dim
    return ModelConfig(
        _classes(common), dim=dim, depth=depth, heads=default_heads(dim, heads), mlp_ratio=mlp_ratio, max_frames=frames
    )
