"""AST checkpoints: the original AST (`ast`: `module.v.*` timm names, `mlp_head`), its
HuggingFace port (`ast-hf`: `audio_spectrogram_transformer.*`, transformers 4 names
`encoder.layer.N.attention.attention.query` or 5 names `layers.N.attention.q_proj`, head
`classifier`) and SSAST (`ssast`: `module.v.*` with its pre-training heads, no classifier).

Each is first read into one common form (`canonical`): cls and distillation tokens, the position
table split into its leading positions and a frequency x time grid `[F, T, D]`, the patch
projection as a Linear on 256 frequency-major values (the conv `[D, 1, 16, 16]` flattened), the
blocks under our (timm's) names, the final norm and the head. From there:

- the AST baseline (`ast_weights`) takes it as it is: the grid reordered time-major (our token
  order), strides as in the file (10/10 for AudioSet-pretrained AST: a 12 x 101 grid);
- ElasticAST (`elastic_weights`) needs one frequency and one time table on its 16 x 16 grid: the
  grid is resampled at our patches' centres (`resample_grid`), then averaged over each axis.
"""

from __future__ import annotations

import re

import torch

from elasticast.config import ModelConfig
from elasticast.foreign.paper import default_heads
from elasticast.weights import ImportReport, crop_and_stretch

HF_PREFIX = "audio_spectrogram_transformer."
_HF4 = {
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
}
_HF5 = {
    "attention.o_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    **{k: _HF4[k] for k in ("layernorm_before", "layernorm_after")},
}
_HF_QKV = {4: "attention.attention.{}", 5: "attention.{}_proj"}
_HF_PARTS = {4: ("query", "key", "value"), 5: ("q", "k", "v")}
_HF_LAYER = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")


def ast_format(state: dict) -> str | None:
    """ "ast", "ast-hf", "ssast", or None: which AST layout the keys are."""
    if any(k.startswith(HF_PREFIX) or k.startswith("embeddings.distillation_token") for k in state):
        return "ast-hf"
    if "module.v.pos_embed" in state:
        return (
            "ssast"
            if any(k.startswith(("module.cpredlayer", "module.gpredlayer", "module.mask_embed")) for k in state)
            else "ast"
        )
    return None


def grid_shape(cells: int, target_frames: int = 1024, n_mels: int = 128, patch: int = 16) -> tuple[int, int]:
    """(stride, frequency rows) of a grid of `cells` patches over `target_frames` x `n_mels` at
    equal strides: 12 x 101 at stride 10 for AST's 1024 frames, 8 x 64 at 16."""
    for stride in range(patch, 0, -1):
        rows = (n_mels - patch) // stride + 1
        if rows * ((target_frames - patch) // stride + 1) == cells:
            return stride, rows
    raise ValueError(
        f"no stride makes a grid of {cells} patches over {target_frames} frames: pass the frames it was trained at (--max-frames)"
    )


def canonical(format: str, state: dict[str, torch.Tensor], report: ImportReport) -> dict:
    """The common form of an AST-family state dict (module docstring); `report` records the names."""
    if format == "ast-hf":
        state = {k.removeprefix(HF_PREFIX): v for k, v in state.items()}
        out = _hf_blocks(state, report)
        taken = {
            "cls_token": "embeddings.cls_token",
            "dist_token": "embeddings.distillation_token",
            "pos_embed": "embeddings.position_embeddings",
            "patch": "embeddings.patch_embeddings.projection",
            "norm": "layernorm",
            "head_norm": "classifier.layernorm",
            "head": "classifier.dense",
        }
    else:
        original = {k.removeprefix("module."): k for k in state}
        state = {k.removeprefix("module."): v for k, v in state.items()}
        out = {}
        for key, value in state.items():
            if key.startswith("v.blocks."):
                out[key.removeprefix("v.")] = value
                report.loaded[key] = key.removeprefix("v.")
        taken = {
            "cls_token": "v.cls_token",
            "dist_token": "v.dist_token",
            "pos_embed": "v.pos_embed",
            "patch": "v.patch_embed.proj",
            "norm": "v.norm",
            "head_norm": "mlp_head.0",
            "head": "mlp_head.1",
        }
    for ours, theirs in taken.items():
        if ours in ("cls_token", "dist_token", "pos_embed"):
            if theirs in state:
                out[ours] = state[theirs]
            continue
        for leaf in ("weight", "bias"):
            if f"{theirs}.{leaf}" in state:
                out[f"{ours}.{leaf}"] = state[f"{theirs}.{leaf}"]
                if ours != "patch":
                    report.loaded[f"{theirs}.{leaf}"] = f"{ours}.{leaf}"
    conv = out.pop("patch.weight")
    if conv.shape[1:] != (1, 16, 16):
        raise ValueError(f"patches of shape {tuple(conv.shape[1:])}: elasticast reads 16 x 16 patches of one channel")
    out["patch.weight"] = conv.flatten(1)
    report.converted["patch_embed.weight"] = f"{taken['patch']}.weight [D, 1, 16, 16] flattened frequency-major"
    report.loaded[f"{taken['patch']}.bias"] = "patch_embed.bias"
    out["leading"] = 1 + ("dist_token" in out)
    out["cells"] = out["pos_embed"].shape[1] - out["leading"]
    used = {*report.loaded, f"{taken['patch']}.weight"} | {taken[k] for k in ("cls_token", "dist_token", "pos_embed")}
    report.left_out = sorted(k for k in state if k not in used and not _is_hf_attention(k))
    if format != "ast-hf":  # name their tensors as their file does
        report.loaded = {original[k]: v for k, v in report.loaded.items()}
        report.left_out = [original[k] for k in report.left_out]
    return out


def grid(common: dict, rows: int) -> torch.Tensor:
    """The position grid `[F, T, D]` (their tokens are frequency-major: row f, step t)."""
    table = common["pos_embed"][0, common["leading"] :]
    return table.reshape(rows, -1, table.shape[-1])


def ast_config(common: dict, classes: int, heads: int | None, target_frames: int) -> tuple[ModelConfig, int]:
    """The AST baseline the file describes at `target_frames` (equal strides, read from its grid)
    and its grid's frequency rows."""
    stride, rows = grid_shape(common["cells"], target_frames)
    dim = common["pos_embed"].shape[-1]
    depth = len({k.split(".")[1] for k in common if k.startswith("blocks.")})
    config = ModelConfig(
        num_classes=classes,
        dim=dim,
        depth=depth,
        heads=default_heads(dim, heads),
        mlp_ratio=common["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        max_frames=target_frames,
        freq_stride=stride,
        time_stride=stride,
    )
    return config, rows


def ast_weights(common: dict, rows: int, report: ImportReport, dist: bool) -> dict[str, torch.Tensor]:
    """The AST baseline's state dict: the grid reordered time-major behind the leading positions."""
    out = _shared(common)
    table = grid(common, rows).transpose(0, 1).flatten(0, 1)
    leading = common["pos_embed"][0, : common["leading"]]
    if dist and common["leading"] == 1:
        leading = leading.expand(2, -1)
    out["pos_embed"] = torch.cat([leading[: 1 + dist], table]).unsqueeze(0)
    report.converted["pos_embed"] = "position grid reordered time-major (their tokens are frequency-major)"
    out["cls_token"] = common["cls_token"]
    if dist:
        out["dist_token"] = common.get("dist_token", common["cls_token"])
    return out


def elastic_weights(common: dict, config: ModelConfig, report: ImportReport, ssast: bool) -> dict[str, torch.Tensor]:
    """ElasticAST's state dict. AST (stride 10 or 16, over 1024 frames): the grid resampled to
    our 16 x 16 patches (`resample_grid`); SSAST, as the paper: its 8-row grid interpolated in
    time to our table (`elasticast.weights.crop_and_stretch`). Then averaged over each axis."""
    if ssast:
        rows = 8
        table = crop_and_stretch(grid(common, rows), config.freq_patches, config.time_patches)
        how = f"{rows} x {common['cells'] // rows} grid centre-cropped in frequency, interpolated in time"
    else:
        stride, rows = grid_shape(common["cells"])
        table = resample_grid(grid(common, rows), stride, stride, config.freq_patches, config.time_patches)
        how = f"{rows} x {common['cells'] // rows} grid at stride {stride} resampled to 16-frame patches"
    out = _shared(common)
    out["freq_embed"], out["time_embed"] = table.mean(dim=1), table.mean(dim=0)
    report.converted |= {"freq_embed": f"{how}, mean over time", "time_embed": f"{how}, mean over frequency"}
    return out


def resample_grid(table: torch.Tensor, freq_stride: int, time_stride: int, freqs: int, times: int) -> torch.Tensor:
    """A position grid `[F, T, D]` of 16 x 16 patches at the given strides → `[freqs, times, D]`
    at stride 16, read at each of our patches' positions: our patch k starts 16 k bins or frames
    in, their patch j at stride x j, so ours reads theirs at j = 16 k / stride, linearly
    interpolated; beyond their last step it holds the last one (they cover no later frames)."""
    out = table
    for axis, stride, size in ((0, freq_stride, freqs), (1, time_stride, times)):
        where = (torch.arange(size, dtype=torch.float64) * 16 / stride).clamp(max=out.shape[axis] - 1)
        low = where.floor().long()
        high = (low + 1).clamp(max=out.shape[axis] - 1)
        frac = (where - low).to(out.dtype)
        shape = [-1 if i == axis else 1 for i in range(3)]
        out = out.index_select(axis, low) * (1 - frac.reshape(shape)) + out.index_select(axis, high) * frac.reshape(
            shape
        )
    return out


def _shared(common: dict) -> dict[str, torch.Tensor]:
    """What both models take by name: patch projection, blocks, final norm, head."""
    out = {"patch_embed.weight": common["patch.weight"], "patch_embed.bias": common["patch.bias"]}
    for key, value in common.items():
        if key.startswith(("blocks.", "norm.", "head_norm.", "head.")):
            out[key] = value
    return out


def _is_hf_attention(key: str) -> bool:
    match = _HF_LAYER.match(key)
    return bool(match) and any(
        part in match.group(2) for part in ("query", "key", "value", "q_proj", "k_proj", "v_proj")
    )


def _hf_blocks(state: dict[str, torch.Tensor], report: ImportReport) -> dict[str, torch.Tensor]:
    """HuggingFace AST layers (transformers 4 or 5 names) under our block names."""
    version = 5 if any(k.startswith("layers.") for k in state) else 4
    prefix, names = ("layers", _HF5) if version == 5 else ("encoder.layer", _HF4)
    out = {}
    layers = sorted({int(m.group(1)) for k in state if (m := _HF_LAYER.match(k))})
    for n in layers:
        for leaf in ("weight", "bias"):
            parts = [f"{prefix}.{n}.{_HF_QKV[version].format(p)}.{leaf}" for p in _HF_PARTS[version]]
            out[f"blocks.{n}.attn.qkv.{leaf}"] = torch.cat([state[p] for p in parts])
            report.converted[f"blocks.{n}.attn.qkv.{leaf}"] = "cat(" + ", ".join(parts) + ")"
            for theirs, ours in names.items():
                key = f"{prefix}.{n}.{theirs}.{leaf}"
                out[f"blocks.{n}.{ours}.{leaf}"] = state[key]
                report.loaded[key] = f"blocks.{n}.{ours}.{leaf}"
    return out
