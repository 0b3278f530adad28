"""The masked attention-pooling head against a per-sample reference written out by hand: one
learned query, per head a softmax of q.k / sqrt(head dim) over the sample's own tokens only."""

from __future__ import annotations

import numpy as np
import torch

from elasticast import ElasticAST, preset
from loaders.batch import from_features
from loaders.features import patchify


def reference_pool(pool: torch.nn.Module, tokens: torch.Tensor, heads: int) -> torch.Tensor:
    """One sample's tokens `[n, D]` → its pooled vector `[D]`, with no masks involved."""
    dim = tokens.shape[1]
    head_dim = dim // heads
    k, v = pool.kv(tokens).split(dim, dim=1)
    out = []
    for h in range(heads):
        part = slice(h * head_dim, (h + 1) * head_dim)
        weights = torch.softmax(k[:, part] @ pool.query[part] / head_dim**0.5, dim=0)
        out.append(weights @ v[:, part])
    return pool.proj(torch.cat(out))


def test_pooling_weighs_each_samples_own_tokens_by_scaled_query_scores():
    torch.manual_seed(0)
    model = ElasticAST(preset("tiny", num_classes=3, dim=32, depth=1, heads=4, max_frames=256)).eval()
    with torch.no_grad():
        model.pool.query.mul_(50)  # sharp scores, so a missing or wrong scaling shows
    generator = torch.Generator().manual_seed(1)
    times, row, offset = [3, 1, 2, 4, 2], np.array([0, 0, 0, 1, 1]), np.array([0, 24, 40, 0, 40])  # a hole in row 1
    features = [patchify(torch.randn(16 * t, 128, generator=generator)) for t in times]
    batch = from_features(features, row, offset, np.ones(5), [str(i) for i in range(5)], length=64)
    x = torch.randn(2, 64, 32, generator=generator)
    with torch.no_grad():
        pooled = model.pool(x, batch)
        for i in range(batch.num_samples):
            own = x[batch.row[i]][batch.segment_ids[batch.row[i]] == batch.slot[i]]
            assert own.shape[0] == batch.n_tokens[i]
            assert torch.allclose(pooled[i], reference_pool(model.pool, own, heads=4), atol=1e-5), batch.keys[i]
