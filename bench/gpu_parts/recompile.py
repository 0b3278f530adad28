"""Does compiled flex compile again for every new batch layout? Block masks change every step;
shapes do not. Counts Dynamo's compiled graphs over many different layouts, with the recompile
limit raised so that a fallback to eager (after 8 recompiles by default) cannot hide the count."""

from __future__ import annotations

import torch
from torch._dynamo.utils import counters

from elasticast import ElasticAST, loss

from gpu_parts.common import Sizes, synchronize
from gpu_parts.speed import packed_batches


def compiled_graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


def run(sizes: Sizes, device: torch.device) -> dict:
    """Training steps (forward, backward) of the whole model on `sizes.layouts` batches, each packed
    from a different draw of lengths (so no two share a layout), and then the same in eval mode."""
    backend = "flex" if device.type == "cuda" else "split"
    torch.manual_seed(0)
    net = ElasticAST(sizes.model_config()).to(device)
    batches = [b.to(device) for b in packed_batches(sizes, sizes.layouts, seed=101)]
    distinct = len({tuple(b.segment_ids.flatten().tolist()) for b in batches})
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = 10 * sizes.layouts
    try:
        before = compiled_graphs()
        train_counts = []
        net.train()
        for batch in batches:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                value = loss(net(batch, attention=backend).float(), batch.labels)
            value.backward()
            net.zero_grad(set_to_none=True)
            train_counts.append(compiled_graphs() - before)
        net.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            for batch in batches:
                net(batch, attention=backend)
        synchronize(device)
        total = compiled_graphs() - before
    finally:
        torch._dynamo.config.recompile_limit = limit
    result = {
        "backend": backend,
        "layouts": sizes.layouts,
        "distinct_layouts": distinct,
        "graphs_after_first_train_step": train_counts[0],
        "graphs_after_all_train_steps": train_counts[-1],
        "graphs_after_eval_too": total,
        "bounded": train_counts[-1] <= max(train_counts[0], 1) and total <= train_counts[-1] + 1,
    }
    if device.type != "cuda":
        result["note"] = (
            "CPU: the split backend compiles nothing, so the count is 0; it means something on CUDA (compiled flex) only"
        )
    return result
