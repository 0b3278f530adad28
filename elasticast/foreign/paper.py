"""The paper's released ElasticAST checkpoints (`module.`-prefixed `state_dict()` of their model
in `nn.DataParallel`) as our ElasticAST: same function, our names.

- `patch_embed.0` (Linear on 256 frequency-major patch values) -> `patch_embed`, as it is;
- `pos_embed_freq` / `pos_embed_time` -> `freq_embed` / `time_embed` (the time table's rows fix
  `max_frames` = rows x 16: 192 rows = 3072 frames, 64 rows = 1024);
- each block's `attn.to_q` and `attn.to_kv` (keys, then values) -> one `attn.qkv` (q, k, v);
- the pooling's learned query goes through its `to_q` once, here: our pool keeps the projected
  query (`to_q(query)` = W q + b, computed in float64), `to_kv` -> `kv`;
- `mlp_norm` -> `head_norm`; `norm`, `head`, `proj`, `fc1`/`fc2`, `norm1`/`norm2` by name.

Their attention logits are not scaled by 1/sqrt(head dim): the model is built with
`scaled_attention=False`. The head count cannot be read from the weights (default: head dim 64).
"""

from __future__ import annotations

import re

import torch

from elasticast.config import ModelConfig
from elasticast.weights import ImportReport

PREFIX = "module."
MARKERS = ("pos_embed_freq", "pos_embed_time", "attn_pool_queries")
HEAD_DIM = 64


def default_heads(dim: int, heads: int | None) -> int:
    """`heads`, else head dim 64 as in every released model (at least one head)."""
    return heads or max(1, dim // HEAD_DIM)


_BLOCK = re.compile(r"^blocks\.modules_list\.(\d+)\.(.+)$")
_RENAMED = {
    "mlp_norm": "head_norm",
    "attn_pool.to_kv": "pool.kv",
    "attn_pool.proj": "pool.proj",
    "patch_embed.0": "patch_embed",
}


def is_paper(state: dict) -> bool:
    return all(any(key.endswith(marker) for key in state) for marker in MARKERS)


def strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key.removeprefix(PREFIX): value for key, value in state.items()}


def paper_config(state: dict[str, torch.Tensor], heads: int | None = None, **settings) -> ModelConfig:
    """The model the weights describe: sizes from the shapes, heads given (or dim / 64)."""
    state = strip_prefix(state)
    dim = state["pos_embed_freq"].shape[1]
    patch = int(round(state["patch_embed.0.weight"].shape[1] ** 0.5))
    depth = len({m.group(1) for key in state if (m := _BLOCK.match(key))})
    return ModelConfig(
        num_classes=state["head.weight"].shape[0],
        dim=dim,
        depth=depth,
        heads=default_heads(dim, heads),
        mlp_ratio=state["blocks.modules_list.0.mlp.fc1.weight"].shape[0] / dim,
        patch=patch,
        n_mels=state["pos_embed_freq"].shape[0] * patch,
        max_frames=state["pos_embed_time"].shape[0] * patch,
        scaled_attention=False,
        **settings,
    )


def paper_weights(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], ImportReport]:
    """Our ElasticAST's state dict from the paper's, and what happened to each tensor."""
    state = strip_prefix(state)
    report = ImportReport()
    out: dict[str, torch.Tensor] = {}
    merged = {"attn_pool_queries", "attn_pool.to_q.weight", "attn_pool.to_q.bias"}
    for key, value in state.items():
        block = _BLOCK.match(key)
        if block:
            n, rest = block.groups()
            if rest.startswith(("attn.to_q.", "attn.to_kv.")):
                merged.add(key)
                continue
            target = f"blocks.{n}.{rest}"
        elif key in ("pos_embed_freq", "pos_embed_time"):
            target = {"pos_embed_freq": "freq_embed", "pos_embed_time": "time_embed"}[key]
        elif key in merged:
            continue
        else:
            stem, _, leaf = key.rpartition(".")
            target = f"{_RENAMED.get(stem, stem)}.{leaf}"
        out[target] = value
        report.loaded[key] = target
    for n in sorted({m.group(1) for key in state if (m := _BLOCK.match(key))}, key=int):
        source = f"blocks.modules_list.{n}.attn"
        for leaf in ("weight", "bias"):
            out[f"blocks.{n}.attn.qkv.{leaf}"] = torch.cat(
                [state[f"{source}.to_q.{leaf}"], state[f"{source}.to_kv.{leaf}"]]
            )
            report.converted[f"blocks.{n}.attn.qkv.{leaf}"] = f"cat({source}.to_q.{leaf}, {source}.to_kv.{leaf})"
    weight, bias = state["attn_pool.to_q.weight"].double(), state["attn_pool.to_q.bias"].double()
    out["pool.query"] = (weight @ state["attn_pool_queries"].double() + bias).to(state["attn_pool_queries"].dtype)
    report.converted["pool.query"] = "attn_pool.to_q(attn_pool_queries)"
    return out, report
