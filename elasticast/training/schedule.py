"""Learning-rate schedules as a multiplier of the base lr per optimizer step.

Linear warmup, then `cosine` (to `min_lr_ratio`), `constant`, or the paper's `step` decay
(x `decay_factor` every `decay_every` epochs from epoch `decay_start`).
"""

from __future__ import annotations

import math

import torch

from elasticast.training.config import TrainConfig


def lr_factor(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    warmup = config.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "step":
        epoch = step // steps_per_epoch
        if epoch < config.decay_start:
            return 1.0
        return config.decay_factor ** ((epoch - config.decay_start) // config.decay_every + 1)
    progress = min(1.0, (step - warmup) / max(1.0, config.epochs * steps_per_epoch - warmup))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, steps_per_epoch: int, config: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """Steps once per optimizer step. Epochs can differ in step count (random C changes the
    packing), so `steps_per_epoch` is the first epoch's: the schedule is a function of the step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps_per_epoch, config))


def rescale_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, saved_steps: int, steps: int) -> None:
    """A run resumed on another number of ranks runs `steps` per epoch where it ran `saved_steps`:
    its step count moves to the same share of the epochs, and the learning rates with it."""
    scheduler.last_epoch = round(scheduler.last_epoch * steps / saved_steps)
    scheduler._last_lr = [base * f(scheduler.last_epoch) for base, f in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, scheduler._last_lr):
        group["lr"] = lr


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; biases, norms, position tables and the [cls] token are not decayed (as in timm)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (no_decay if parameter.ndim < 2 or name.endswith(("_embed", "_token")) else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)
