"""A plain-PyTorch training epoch and split prediction over `PackedBatch` iterables.

Ray-free: `jobs/train.py` runs these inside Ray Train workers; any other trainer can run them
on `loaders.PackedStream(..., backend="local").epoch(e)`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from elasticast.checkpoint import Model, make_model
from elasticast.config import preset
from elasticast.model import ElasticAST, loss
from elasticast.training.config import TrainConfig
from loaders.batch import PackedBatch
from loaders.device_features import DeviceFeaturizer, to_device


def build_model(config: TrainConfig, num_classes: int) -> Model:
    """The model `config` asks for, freshly initialised."""
    sizes = {"depth": config.depth} if config.depth else {}
    if config.model == "ast":
        sizes |= {"freq_stride": config.ast_stride, "time_stride": config.ast_stride}
    model_config = preset(config.preset, num_classes, max_frames=config.max_frames, attention=config.attention, **sizes)
    return make_model(config.model, model_config, config.target_frames, config.pooling)


@dataclass
class EpochResult:
    """What one rank did in one epoch; token counts are as the model computed them."""

    steps: int = 0
    samples: int = 0
    loss_sum: float = 0.0  # per-sample loss, summed
    tokens: int = 0  # real tokens computed
    slots: int = 0  # token slots computed (real + padding)
    cut_tokens: int = 0
    seconds: float = 0.0
    data_wait_s: float = 0.0
    failed: int = 0  # samples the loader could not read (left as padding, named in its log)
    requests: int = 0  # storage requests the epoch's reads took (retries included)
    retries: int = 0  # of those, retries after transient storage errors
    keys: list[str] = field(default_factory=list)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.samples, 1)

    def copy(self) -> EpochResult:
        return dataclasses.replace(self, keys=list(self.keys))

    @classmethod
    def merged(cls, shares: list[EpochResult]) -> EpochResult:
        """Several ranks' shares of an epoch as one (counts added, keys joined, the longest time)."""
        total = cls(keys=[key for share in shares for key in share.keys])
        for name in ("steps", "samples", "loss_sum", "tokens", "slots", "cut_tokens", "failed", "requests", "retries"):
            setattr(total, name, sum(getattr(share, name) for share in shares))
        total.seconds = max((share.seconds for share in shares), default=0.0)
        total.data_wait_s = max((share.data_wait_s for share in shares), default=0.0)
        return total


def train_epoch(
    model: nn.Module,
    batches: Iterable[PackedBatch],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    clip_grad: float = 0.0,
    usage: Callable[[PackedBatch], tuple[int, int, int]] | None = None,
    so_far: EpochResult | None = None,
    checkpoint_every: int = 0,
    checkpoint: Callable[[int, EpochResult], None] | None = None,
    featurizer: DeviceFeaturizer | None = None,
) -> EpochResult:
    """One pass: a step per batch (all-padding fillers included, so DDP ranks stay in step).
    bf16 autocast on CUDA. `usage` counts (real, slots, cut) tokens; default: the packed row.
    Nothing in a step waits for the device: token counts come from the host batch and the loss
    sum stays on the device until the epoch ends, so the host fetches and copies the next batch
    while the GPU still runs this step.

    Resuming mid-epoch: `batches` start at the resumed step and `so_far` is what the epoch had
    done until then. `checkpoint(next_step, result_so_far)` is called after every stream step
    `s` with (s + 1) % checkpoint_every == 0 (only then does the loss sum leave the device).
    `featurizer`: the stream's `featurizer`, for batches that come as waveforms (featurize="device")."""
    model.train()
    usage = usage or ElasticAST.token_usage
    result, started = (
        (so_far.copy() if so_far else EpochResult()),
        time.perf_counter() - (so_far.seconds if so_far else 0.0),
    )
    loss_sum = torch.tensor(result.loss_sum, dtype=torch.float64, device=device)
    waited = time.perf_counter()
    for batch in batches:
        result.data_wait_s += time.perf_counter() - waited
        real, slots, cut = usage(batch)
        samples = batch.num_samples
        result.failed += len(batch.failed)
        result.requests += batch.requests
        result.retries += batch.retries
        batch = to_device(batch, device, featurizer)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(batch)
        value = loss(logits.float(), batch.labels, batch.targets)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        if clip_grad > 0:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        scheduler.step()
        loss_sum += value.detach() * samples
        result.steps += 1
        result.samples += samples
        result.tokens, result.slots, result.cut_tokens = (
            result.tokens + real,
            result.slots + slots,
            result.cut_tokens + cut,
        )
        result.keys.extend(batch.sample_ids)
        if checkpoint is not None and checkpoint_every > 0 and (batch.step + 1) % checkpoint_every == 0:
            result.loss_sum, result.seconds = float(loss_sum), time.perf_counter() - started
            checkpoint(batch.step + 1, result.copy())
        waited = time.perf_counter()
    result.loss_sum = float(loss_sum)
    result.seconds = time.perf_counter() - started
    return result
