"""Model configuration and presets (timm-style names: tiny, small, base = ViT-B/16)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from loaders.tokens import N_MELS, PATCH

MODEL_KINDS = ("elasticast", "ast")  # ElasticAST, or the fixed-size AST baseline of the paper's comparisons
ATTENTION_BACKENDS = ("split", "dense", "flex", "varlen")  # see elasticast.attention
POOLINGS = (
    "cls",
    "mean",
    "cls_dist",
)  # the AST baseline's head; cls_dist: cls and distillation tokens averaged, as AST
PRESETS = {
    "tiny": dict(dim=192, depth=6, heads=3),
    "small": dict(dim=384, depth=12, heads=6),
    "base": dict(dim=768, depth=12, heads=12),
}


@dataclass(frozen=True)
class ModelConfig:
    """ElasticAST hyper-parameters. `max_frames` sizes the time-position table (frames / 16).
    `beyond_table` says what a longer input meets: "error" (default: crop upstream, as the
    loaders do) or "interpolate" (the time table is linearly stretched to the input's length).
    `scaled_attention=False` leaves attention logits undivided by sqrt(head dim), as in the
    paper's code, whose released weights need it; ours scale them. `freq_stride`/`time_stride`:
    the AST baseline's patch strides (16: non-overlapping, as ElasticAST's and the paper's
    baselines; 10: AudioSet-pretrained AST's overlapping patches)."""

    num_classes: int
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    patch: int = PATCH
    n_mels: int = N_MELS
    max_frames: int = 3072
    attention: str = "auto"  # auto | split | dense | flex | varlen
    beyond_table: str = "error"  # error | interpolate
    scaled_attention: bool = True
    freq_stride: int = PATCH
    time_stride: int = PATCH

    def __post_init__(self):
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.attention not in ("auto", *ATTENTION_BACKENDS):
            raise ValueError(f"attention must be 'auto' or one of {ATTENTION_BACKENDS}, got {self.attention!r}")
        if self.beyond_table not in ("error", "interpolate"):
            raise ValueError(f"beyond_table must be 'error' or 'interpolate', got {self.beyond_table!r}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if not (1 <= self.freq_stride <= self.patch and 1 <= self.time_stride <= self.patch):
            raise ValueError(
                f"strides {self.freq_stride}/{self.time_stride} must be in 1..{self.patch} (patches may overlap, not skip)"
            )
        if self.n_mels % self.patch or self.max_frames < self.patch:
            raise ValueError(
                f"n_mels {self.n_mels} and max_frames {self.max_frames} must hold whole {self.patch}-patches"
            )

    @property
    def freq_steps(self) -> int:
        """Patches along frequency at `freq_stride` (AST's grid height: 8 at 16, 12 at 10)."""
        return (self.n_mels - self.patch) // self.freq_stride + 1

    @property
    def freq_patches(self) -> int:
        return self.n_mels // self.patch

    @property
    def time_patches(self) -> int:
        return self.max_frames // self.patch


def preset(name: str, num_classes: int, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(ModelConfig(num_classes=num_classes, **PRESETS[name]), **overrides)
