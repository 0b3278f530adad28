"""Initialise ElasticAST (or the AST baseline) from a local timm ViT-B/16 state dict.

No download: the file (.pth / .pt / .safetensors) is the user's. Mapping, as in the paper's code:
- patch conv `[D, 3, 16, 16]` summed over RGB → the Linear on 256 patch values (the conv's
  (height, width) = our (mel bins, frames) patch layout);
- the 14x14 position grid (cls dropped): centre-cropped to 8 rows in frequency, linearly
  interpolated to the model's time patches; ElasticAST factorises it by averaging each axis
  (frequency table = mean over time, time table = mean over frequency), the AST baseline keeps
  the 2D grid (time-major, as its tokens are) behind the cls position;
- blocks and the final norm by name (ours use timm's names); the classifier head is not loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ImportReport:
    """`loaded`: copied as they are (source -> target); `converted`: reshaped, merged or resampled
    (target <- sources and how); `left_out`: source tensors with no place; `initialised`: target
    tensors left at their fresh initialisation."""

    loaded: dict[str, str] = field(default_factory=dict)
    converted: dict[str, str] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"loaded {len(self.loaded)} tensors as they are"]
        out += [f"converted {target} <- {how}" for target, how in self.converted.items()]
        out += [f"left out {name}" for name in self.left_out] or ["left out nothing"]
        out += [f"newly initialised {name}" for name in self.initialised] or ["newly initialised nothing"]
        return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found (weights are never downloaded)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for nested in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(nested), dict):
            state = state[nested]
    return state


def load_vit_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Copy a timm ViT's weights into `model`; returns the model keys left at their init."""
    return load_vit_weights_from(model, read_state_dict(path), path).initialised


def load_vit_weights_from(model: nn.Module, source: dict[str, torch.Tensor], path: str | Path) -> ImportReport:
    """`load_vit_weights` of a state dict already read (`path` names it in errors)."""
    for needed in ("patch_embed.proj.weight", "pos_embed"):
        if needed not in source:
            raise KeyError(f"{path} is not a timm ViT state dict: no {needed!r}")
    target = model.state_dict()
    report = ImportReport()
    mapped = {
        "patch_embed.weight": source["patch_embed.proj.weight"].sum(dim=1).flatten(1),
        "patch_embed.bias": source["patch_embed.proj.bias"],
    }
    report.converted["patch_embed.weight"] = "patch_embed.proj.weight summed over RGB, flattened"
    report.loaded["patch_embed.proj.bias"] = "patch_embed.bias"
    config = model.config
    how = "pos_embed grid centre-cropped in frequency, interpolated in time"
    if "freq_embed" in target:
        grid = position_grid(source["pos_embed"], config.freq_patches, config.time_patches)
        mapped["freq_embed"], mapped["time_embed"] = grid.mean(dim=1), grid.mean(dim=0)
        report.converted |= {"freq_embed": f"{how}, mean over time", "time_embed": f"{how}, mean over frequency"}
    else:  # the AST baseline: its grid at its strides over max_frames, cut to its input, time-major
        steps = (config.max_frames - config.patch) // config.time_stride + 1
        grid = position_grid(source["pos_embed"], config.freq_steps, steps)[:, : model.tokens // config.freq_steps]
        leading = source["pos_embed"][0, :1].expand(model.leading, -1)
        mapped["pos_embed"] = torch.cat([leading, grid.transpose(0, 1).flatten(0, 1)]).unsqueeze(0)
        mapped["cls_token"] = source["cls_token"]
        report.converted["pos_embed"] = f"{how}, time-major, behind the cls position (also the dist position)"
        report.loaded["cls_token"] = "cls_token"
        if model.dist_token is not None:
            mapped["dist_token"] = source["cls_token"]
            report.converted["dist_token"] = "cls_token (a ViT has no distillation token)"
    by_name = {k: v for k, v in source.items() if k.startswith(("blocks.", "norm."))}
    mapped.update(by_name)
    report.loaded |= {k: k for k in by_name}
    unknown = sorted(set(mapped) - set(target))
    if unknown:
        raise KeyError(f"{path}: weights with no place in the model (depth differs?): {unknown[:5]}")
    for key, value in mapped.items():
        if value.shape != target[key].shape:
            raise ValueError(
                f"{path}: {key} has shape {tuple(value.shape)}, the model needs {tuple(target[key].shape)}"
            )
    model.load_state_dict(mapped, strict=False)
    used = {"patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed", "cls_token", *by_name}
    report.left_out = sorted(set(source) - used)
    report.initialised = sorted(set(target) - set(mapped))
    return report


def position_grid(pos_embed: torch.Tensor, freq_patches: int, time_patches: int) -> torch.Tensor:
    """timm's `[1, 1 + 14*14, D]` → `[freq_patches, time_patches, D]` (centre crop, interpolate)."""
    side = int(round((pos_embed.shape[1] - 1) ** 0.5))
    return crop_and_stretch(pos_embed[0, 1:].reshape(side, side, -1), freq_patches, time_patches)


def crop_and_stretch(grid: torch.Tensor, freq_patches: int, time_patches: int) -> torch.Tensor:
    """The paper's rule for a `[F, T, D]` position grid: the middle `freq_patches` rows, then the
    time axis linearly interpolated to `time_patches` (half-pixel centres)."""
    rows = grid.shape[0]
    if freq_patches > rows:
        raise ValueError(f"the position grid has {rows} frequency rows, fewer than {freq_patches}")
    top = (rows - freq_patches) // 2
    grid = grid[top : top + freq_patches]  # [F, T, D]
    stretched = F.interpolate(grid.permute(0, 2, 1), size=time_patches, mode="linear", align_corners=False)
    return stretched.permute(0, 2, 1)
