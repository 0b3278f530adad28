"""Training mechanics without a job: the loss against numpy, `train_epoch` on hand-made batches
(gradient clipping, filler batches, what it counts), the optimiser's decay groups by name."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from elasticast import ElasticAST, loss, preset
from elasticast.ast_baseline import ASTBaseline
from elasticast.predict import predict
from elasticast.training import (
    TrainConfig,
    make_optimizer,
    make_scheduler,
    train_epoch,
)
from loaders.batch import PackedBatch, from_features
from loaders.features import patchify

CPU = torch.device("cpu")
CLASSES, LENGTH = 3, 64
DECAYED_IN_ELASTICAST = (
    "patch_embed.weight",
    "blocks.0.attn.qkv.weight",
    "blocks.0.attn.proj.weight",
    "blocks.0.mlp.fc1.weight",
    "blocks.0.mlp.fc2.weight",
    "pool.kv.weight",
    "pool.proj.weight",
    "head.weight",
)
DECAYED_IN_AST = (
    "patch_embed.weight",
    "blocks.0.attn.qkv.weight",
    "blocks.0.attn.proj.weight",
    "blocks.0.mlp.fc1.weight",
    "blocks.0.mlp.fc2.weight",
    "head.weight",
)


def tiny_model() -> ElasticAST:
    torch.manual_seed(0)
    return ElasticAST(preset("tiny", num_classes=CLASSES, dim=32, depth=1, heads=2, max_frames=256))


def packed(rows: list[list[int]], seed: int) -> PackedBatch:
    """Rows of samples given by their length in 16-frame patches (8 tokens each), random features."""
    generator = torch.Generator().manual_seed(seed)
    features, row, offset = [], [], []
    for r, times in enumerate(rows):
        start = 0
        for t in times:
            features.append(patchify(torch.randn(16 * t, 128, generator=generator)))
            row.append(r)
            offset.append(start)
            start += 8 * t
    labels = torch.randint(0, CLASSES, (len(features),), generator=generator)
    keys = [f"s{seed}-{i}" for i in range(len(features))]
    return from_features(features, np.array(row), np.array(offset), np.ones(len(features)), keys, labels, LENGTH)


def filler(rows: int = 2) -> PackedBatch:
    """What the stream hands a rank short of the last round: no samples, all padding."""
    empty = torch.zeros(0, dtype=torch.int64)
    return PackedBatch(
        torch.zeros(rows, LENGTH, 256),
        torch.zeros(rows, LENGTH, dtype=torch.int32),
        torch.zeros(rows, LENGTH, dtype=torch.int64),
        torch.zeros(rows, LENGTH, dtype=torch.int64),
        labels=empty,
        row=empty,
        slot=empty,
        n_tokens=empty,
        scale=torch.zeros(0),
        is_padding=True,
    )


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def constant_lr(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def test_single_label_loss_is_numpys_cross_entropy_and_multi_hot_is_bce():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0)) * 3
    ids = torch.tensor([0, 3, 1, 1, 2])
    x = logits.double().numpy()
    cross_entropy = np.mean(np.log(np.exp(x).sum(axis=1)) - x[np.arange(5), ids.numpy()])
    assert float(loss(logits, ids)) == pytest.approx(cross_entropy, rel=1e-6)
    multi_hot = torch.zeros(5, 4)
    multi_hot[[0, 0, 2, 4, 4, 4], [1, 3, 0, 0, 1, 2]] = 1.0
    y = multi_hot.double().numpy()
    bce = np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x))))
    assert float(loss(logits, multi_hot)) == pytest.approx(bce, rel=1e-6)
    one_hot = torch.nn.functional.one_hot(ids, 4).float()  # float labels mean multi-label, even one-hot
    y = one_hot.double().numpy()
    assert float(loss(logits, one_hot)) == pytest.approx(
        np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))), rel=1e-6
    )


@pytest.mark.parametrize("ratio", [0.25, None, 4.0])  # clip at a quarter of the norm, off, above the norm
def test_gradient_clipping_bounds_the_update_to_the_clip_norm(ratio):
    batch = packed([[2, 3, 1], [4, 2]], seed=1)
    reference = tiny_model()
    loss(reference(batch), batch.labels).backward()
    gradient = torch.cat([p.grad.flatten() for p in reference.parameters()])
    norm = float(gradient.double().norm())
    clip = 0.0 if ratio is None else norm * ratio
    model = tiny_model()
    before = flat(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # update = -gradient, exactly
    train_epoch(model, [batch], optimizer, constant_lr(optimizer), CPU, clip_grad=clip)
    update = before - flat(model)
    expected = gradient * (ratio if ratio is not None and ratio < 1 else 1.0)
    assert float(update.double().norm()) == pytest.approx(norm * min(ratio or 1.0, 1.0), rel=1e-4)
    assert torch.allclose(update, expected, atol=1e-6, rtol=1e-4)


def test_a_filler_batch_runs_a_zero_step_that_reaches_every_parameter_and_counts_no_sample():
    model = tiny_model()
    before = flat(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = constant_lr(optimizer)
    result = train_epoch(model, [filler(rows=2)], optimizer, scheduler, CPU, clip_grad=1.0)
    assert torch.equal(flat(model), before)
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in model.parameters())  # in the graph: no DDP hang
    assert (result.steps, result.samples, result.loss_sum, result.keys, result.tokens, result.slots) == (
        1,
        0,
        0.0,
        [],
        0,
        2 * LENGTH,
    )
    assert scheduler.last_epoch == 1


def test_soft_targets_take_soft_cross_entropy_for_class_ids_and_bce_for_multi_hot():
    """Mixup's targets, made by hand: with class-id labels the loss is cross-entropy against the
    soft distribution (torch's and numpy's), with multi-hot labels BCE against the soft targets."""
    logits = torch.randn(3, 4, generator=torch.Generator().manual_seed(1)) * 3
    soft = torch.tensor([[0.7, 0.3, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.55, 0.0, 0.0, 0.45]])
    ids = torch.tensor([0, 2, 3])
    x, y = logits.double().numpy(), soft.double().numpy()
    by_hand = np.mean(np.log(np.exp(x).sum(axis=1)) - (x * y).sum(axis=1))
    assert float(loss(logits, ids, soft)) == pytest.approx(by_hand, rel=1e-6)
    assert torch.equal(loss(logits, ids, soft), torch.nn.functional.cross_entropy(logits, soft))
    multi_hot = torch.tensor([[1.0, 1.0, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1]])
    multi_soft = torch.tensor([[1.0, 0.7, 0.3, 0.0], [0.2, 0.0, 0.8, 0.0], [0.55, 0.0, 0.45, 0.45]])
    y = multi_soft.double().numpy()
    bce = np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x))))
    assert float(loss(logits, multi_hot, multi_soft)) == pytest.approx(bce, rel=1e-6)
    assert torch.equal(
        loss(logits, multi_hot, multi_soft), torch.nn.functional.binary_cross_entropy_with_logits(logits, multi_soft)
    )


def test_an_epoch_is_the_manual_loop_and_counts_what_it_computed():
    """Zero grad, backward, clip, step, schedule step: per batch, fillers included; a batch with
    mixup's soft targets trains on them."""
    config = TrainConfig(lr=3e-3, weight_decay=0.1, warmup_epochs=1, clip_grad=0.5)
    mixed = packed([[2, 3, 1], [4, 2]], seed=2)
    soft = torch.nn.functional.one_hot(mixed.labels, CLASSES).float() * 0.6 + 0.4 / CLASSES
    batches = [
        replace(mixed, targets=soft),
        replace(packed([[8], [1, 1, 5]], seed=3), failed=[{"key": "x", "shard": "s", "reason": "r"}], requests=4),
        replace(packed([[3], [6]], seed=4), requests=3, retries=2),
        filler(),
    ]
    model, reference = tiny_model(), tiny_model()
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, len(batches), config)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(config.lr / 4)  # warmup: step 0 of 4
    result = train_epoch(model, batches, optimizer, scheduler, CPU, config.clip_grad)

    decayed = set(DECAYED_IN_ELASTICAST)
    reference_optimizer = torch.optim.AdamW(
        [
            {
                "params": [p for n, p in reference.named_parameters() if n in decayed],
                "weight_decay": config.weight_decay,
            },
            {"params": [p for n, p in reference.named_parameters() if n not in decayed], "weight_decay": 0.0},
        ],
        lr=config.lr,
    )
    values = []
    for step, batch in enumerate(batches):
        for group in reference_optimizer.param_groups:
            group["lr"] = config.lr * min(step + 1, 4) / 4
        reference_optimizer.zero_grad()
        logits = reference(batch)
        value = loss(logits, batch.labels) if batch.targets is None else -(soft * logits.log_softmax(1)).sum(1).mean()
        value.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), config.clip_grad)
        reference_optimizer.step()
        values.append(float(value.detach()))
    assert torch.allclose(flat(model), flat(reference), atol=1e-6, rtol=0)
    assert (
        result.steps == 4 and scheduler.last_epoch == 4 and optimizer.param_groups[0]["lr"] == pytest.approx(config.lr)
    )
    assert result.samples == 3 + 2 + 4 + 2 + 0
    assert result.loss_sum == pytest.approx(sum(v * b.num_samples for v, b in zip(values, batches)), rel=1e-5)
    assert result.keys == [k for b in batches for k in b.keys]
    assert (result.tokens, result.slots) == (8 * (12 + 15 + 9), 4 * 2 * LENGTH)
    assert (result.failed, result.requests, result.retries) == (1, 7, 2)  # as the batches say, resumable with the rest


def test_predict_returns_eval_logits_and_labels_in_delivery_order():
    model = tiny_model().train()
    batches = [packed([[2, 3], [4]], seed=5), packed([[1, 1, 1]], seed=6)]
    keys, logits, labels = predict(model, batches, CPU)
    assert not model.training
    with torch.no_grad():
        expected = torch.cat([model(b) for b in batches])
    assert keys == batches[0].keys + batches[1].keys
    assert torch.equal(logits, expected) and torch.equal(labels, torch.cat([b.labels for b in batches]))


def tiny_ast() -> ASTBaseline:
    return ASTBaseline(preset("tiny", num_classes=CLASSES, dim=32, depth=1, heads=2), target_frames=64)


@pytest.mark.parametrize(
    "make, decayed", [(tiny_model, DECAYED_IN_ELASTICAST), (tiny_ast, DECAYED_IN_AST)], ids=["elasticast", "ast"]
)
def test_only_the_linear_weights_are_decayed(make, decayed):
    """timm's rule: no decay on biases, norms, position tables, the query and the [cls] token."""
    model = make()
    config = TrainConfig(lr=2e-3, weight_decay=0.07)
    groups = make_optimizer(model, config).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    by_decay = {g["weight_decay"]: sorted(names[id(p)] for p in g["params"]) for g in groups}
    assert set(by_decay) == {0.07, 0.0} and all(g["lr"] == 2e-3 for g in groups)
    assert by_decay[0.07] == sorted(decayed)
    assert by_decay[0.0] == sorted(set(names.values()) - set(decayed))
