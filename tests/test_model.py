"""ElasticAST's core promise: a sample's output does not depend on what it is packed with."""
from __future__ import annotations

import random

import pytest
import torch

from elasticast import ElasticAST, loss, preset
from elasticast.attention import run_ids
from loaders.batch import PackedBatch

CPU_BACKENDS = ["split", "dense", "flex"]


def small_model(**overrides) -> ElasticAST:
    torch.manual_seed(0)
    return ElasticAST(preset("tiny", num_classes=5, dim=64, depth=2, heads=4, max_frames=1024, **overrides)).eval()


def random_samples(count: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(8 * int(torch.randint(1, 12, (1,), generator=generator)), 256, generator=generator) for _ in range(count)]


def make_batch(rows: list[list[int]], samples: list[torch.Tensor], length: int, pad_value: float = 0.0,
               holes: dict[int, int] | None = None) -> PackedBatch:
    """Place samples (by index) in the given rows, in order; `holes` leaves a gap before a sample."""
    patches = torch.full((len(rows), length, 256), pad_value)
    segment_ids = torch.zeros(len(rows), length, dtype=torch.int32)
    freq_pos = torch.zeros(len(rows), length, dtype=torch.long)
    time_pos = torch.zeros(len(rows), length, dtype=torch.long)
    row_of, slot_of, keys = [], [], []
    for r, members in enumerate(rows):
        start = 0
        for slot, i in enumerate(members, start=1):
            start += (holes or {}).get(i, 0)
            n = samples[i].shape[0]
            patches[r, start:start + n] = samples[i]
            segment_ids[r, start:start + n] = slot
            freq_pos[r, start:start + n] = torch.arange(8).repeat(n // 8)
            time_pos[r, start:start + n] = torch.arange(n // 8).repeat_interleave(8)
            row_of.append(r)
            slot_of.append(slot)
            keys.append(str(i))
            start += n
        assert start <= length
    count = len(keys)
    return PackedBatch(patches, segment_ids, freq_pos, time_pos, labels=torch.tensor([int(k) % 5 for k in keys]),
                       row=torch.tensor(row_of), slot=torch.tensor(slot_of), n_tokens=torch.tensor([samples[int(k)].shape[0] for k in keys]),
                       scale=torch.ones(count), keys=keys)


def logits_by_key(model, batch, backend):
    with torch.no_grad():
        return dict(zip(batch.keys, model(batch, attention=backend)))


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # eager flex is the CPU path
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_logits_are_the_same_packed_in_any_row_and_order_as_alone(backend):
    model = small_model()
    samples = random_samples(9, seed=1)
    alone = {}
    for i in range(len(samples)):
        alone.update(logits_by_key(model, make_batch([[i]], samples, 128), backend))
    order = list(range(len(samples)))
    for seed in range(3):
        random.Random(seed).shuffle(order)
        rows = [order[0:4], order[4:6], order[6:]]
        packed = logits_by_key(model, make_batch(rows, samples, 320, pad_value=float(seed * 7 - 3), holes={order[5]: 16}), backend)
        for key, value in packed.items():
            assert torch.allclose(value, alone[key], atol=1e-5, rtol=0), (backend, key)


@pytest.mark.parametrize("backend", ["split", "dense"])
def test_gradient_of_one_sample_never_reaches_another(backend):
    model = small_model()
    samples = random_samples(5, seed=2)
    batch = make_batch([[0, 1, 2], [3, 4]], samples, 256)
    patches = batch.patches.clone().requires_grad_(True)
    batch = PackedBatch(**{**batch.__dict__, "patches": patches})
    logits = model(batch, attention=backend)
    logits[batch.keys.index("1")].sum().backward()
    grad = patches.grad
    own = (batch.segment_ids == 2) & (torch.arange(2)[:, None] == 0)
    assert grad[own].abs().sum() > 0
    assert torch.equal(grad[~own], torch.zeros_like(grad[~own]))  # other samples and padding: exactly 0


def test_split_agrees_with_dense_forward_and_backward():
    samples = random_samples(7, seed=3)
    batch = make_batch([[0, 1, 2], [3, 4, 5, 6]], samples, 384, holes={4: 24})
    grads = {}
    for backend in ("dense", "split"):
        model = small_model().train()
        out = model(batch, attention=backend)
        loss(out, batch.labels).backward()
        grads[backend] = (out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    assert torch.allclose(grads["split"][0], grads["dense"][0], atol=1e-5)
    for name, value in grads["dense"][1].items():
        assert torch.allclose(grads["split"][1][name], value, atol=1e-5), name


def test_runs_separate_samples_and_padding_stretches():
    ids = torch.tensor([[1, 1, 0, 0, 2, 2, 2, 0], [1, 2, 3, 3, 0, 0, 0, 0]])
    assert run_ids(ids).tolist() == [[0, 0, 1, 1, 2, 2, 2, 3], [0, 1, 2, 2, 3, 3, 3, 3]]


def test_loss_helpers_and_padding_batches():
    model = small_model().train()
    samples = random_samples(3, seed=4)
    batch = make_batch([[0, 1, 2]], samples, 512)
    value = loss(model(batch), batch.labels)
    assert value > 0
    empty = make_batch([[]], samples, 128)
    zero = loss(model(empty), empty.labels)
    assert zero == 0 and zero.requires_grad
    multi = torch.zeros(3, 5)
    multi[0, [1, 3]] = 1
    assert loss(model(batch), multi) > 0


def test_time_positions_beyond_the_table_are_refused():
    model = small_model()
    long_sample = [torch.randn(8 * 65, 256)]
    with pytest.raises(ValueError, match="crop inputs to max_frames"):
        model(make_batch([[0]], long_sample, 8 * 65))


def test_presets_and_bad_configs():
    assert preset("base", 10).dim == 768 and preset("base", 10).depth == 12
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge", 10)
    with pytest.raises(ValueError, match="divisible"):
        preset("tiny", 10, heads=5)


def test_model_trains_on_a_real_packed_stream_batch(tmp_path, make_shards):
    from loaders import PackedStream

    out = tmp_path / "demo"
    assert make_shards.main(["--out", str(out), "--demo-clips", "16", "--backend", "local", "--quiet"]) == 0
    stream = PackedStream(out / "train", 2, 2048, scales=(1.0, 2.0), backend="local")
    model = ElasticAST(preset("tiny", num_classes=len(stream.labels), depth=2)).train()
    batch = next(iter(stream.epoch(0)))
    logits = model(batch)
    assert logits.shape == (batch.num_samples, len(stream.labels))
    loss(logits, batch.labels).backward()
    assert model.patch_embed.weight.grad.abs().sum() > 0


def test_ast_baseline_crops_and_pads_each_sample_to_its_fixed_size():
    from elasticast.ast_baseline import ASTBaseline, fixed_size_tokens

    samples = random_samples(4, seed=5)
    batch = make_batch([[0, 1], [2, 3]], samples, 256)
    fixed = fixed_size_tokens(batch, 32)
    for i, key in enumerate(batch.keys):
        own = samples[int(key)]
        kept = min(own.shape[0], 32)
        assert torch.equal(fixed[i, :kept], own[:kept]) and torch.all(fixed[i, kept:] == 0)
    torch.manual_seed(0)
    for pooling in ("cls", "mean"):
        model = ASTBaseline(preset("tiny", num_classes=5, dim=64, depth=2, heads=4), target_frames=64, pooling=pooling).eval()
        with torch.no_grad():
            packed = model(batch)
            alone = torch.cat([model(make_batch([[int(k)]], samples, 128)) for k in batch.keys])
        assert packed.shape == (4, 5) and torch.allclose(packed, alone, atol=1e-5)
