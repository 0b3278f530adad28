"""ElasticAST's core promise: a sample's output does not depend on what it is packed with."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from elasticast import ElasticAST, loss, preset
from elasticast.attention import run_bounds, run_ids
from loaders.batch import PackedBatch

CPU_BACKENDS = ["split", "dense", "flex"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled flex, varlen)")
# backend -> (autocast dtype or None, tolerance): varlen is a half-precision kernel
CUDA_BACKENDS = {"flex": (None, 1e-4), "dense": (None, 1e-4), "varlen": (torch.bfloat16, 3e-2)}


def small_model(**overrides) -> ElasticAST:
    torch.manual_seed(0)
    return ElasticAST(preset("tiny", num_classes=5, dim=64, depth=2, heads=4, max_frames=1024, **overrides)).eval()


def random_samples(count: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(8 * int(torch.randint(1, 12, (1,), generator=generator)), 256, generator=generator)
        for _ in range(count)
    ]


def make_batch(
    rows: list[list[int]],
    samples: list[torch.Tensor],
    length: int,
    pad_value: float = 0.0,
    holes: dict[int, int] | None = None,
) -> PackedBatch:
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
            patches[r, start : start + n] = samples[i]
            segment_ids[r, start : start + n] = slot
            freq_pos[r, start : start + n] = torch.arange(8).repeat(n // 8)
            time_pos[r, start : start + n] = torch.arange(n // 8).repeat_interleave(8)
            row_of.append(r)
            slot_of.append(slot)
            keys.append(str(i))
            start += n
        assert start <= length
    count = len(keys)
    return PackedBatch(
        patches,
        segment_ids,
        freq_pos,
        time_pos,
        labels=torch.tensor([int(k) % 5 for k in keys]),
        row=torch.tensor(row_of),
        slot=torch.tensor(slot_of),
        n_tokens=torch.tensor([samples[int(k)].shape[0] for k in keys]),
        scale=torch.ones(count),
        keys=keys,
    )


def logits_by_key(model, batch, backend, device="cpu", dtype=None):
    with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
        return dict(zip(batch.keys, model(batch.to(device), attention=backend).float().cpu()))


def assert_packing_invariant(model, backend, atol, device="cpu", dtype=None):
    model = model.to(device)
    samples = random_samples(9, seed=1)
    alone = {}
    for i in range(len(samples)):
        alone.update(logits_by_key(model, make_batch([[i]], samples, 128), backend, device, dtype))
    order = list(range(len(samples)))
    for seed in range(3):
        random.Random(seed).shuffle(order)
        rows = [order[0:4], order[4:6], order[6:]]
        batch = make_batch(rows, samples, 320, pad_value=float(seed * 7 - 3), holes={order[5]: 16})
        for key, value in logits_by_key(model, batch, backend, device, dtype).items():
            assert torch.allclose(value, alone[key], atol=atol, rtol=0), (backend, key)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # eager flex is the CPU path
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_logits_are_the_same_packed_in_any_row_and_order_as_alone(backend):
    assert_packing_invariant(small_model(), backend, atol=1e-5)


@needs_cuda
@pytest.mark.parametrize("backend", sorted(CUDA_BACKENDS))
def test_packing_invariance_on_cuda(backend):
    dtype, atol = CUDA_BACKENDS[backend]
    assert_packing_invariant(small_model(), backend, atol, "cuda", dtype)


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
    alone = make_batch([[1]], samples, 256)
    patches_alone = alone.patches.clone().requires_grad_(True)
    model(PackedBatch(**{**alone.__dict__, "patches": patches_alone}), attention=backend).sum().backward()
    assert torch.allclose(grad[own], patches_alone.grad[alone.segment_ids == 1], atol=1e-6)  # as if alone
    assert torch.equal(grad[~own], torch.zeros_like(grad[~own]))  # other samples and padding: exactly 0


def outputs_and_gradients(backend, device="cpu", dtype=None):
    samples = random_samples(7, seed=3)
    batch = make_batch([[0, 1, 2], [3, 4, 5, 6]], samples, 384, holes={4: 24}).to(device)
    model = small_model().train().to(device)
    with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
        out = model(batch, attention=backend)
        loss(out, batch.labels).backward()
    return out.detach().float().cpu(), {n: p.grad.float().cpu() for n, p in model.named_parameters()}


def assert_agree(a, b, atol):
    assert torch.allclose(a[0], b[0], atol=atol)
    for name, value in b[1].items():
        assert torch.allclose(a[1][name], value, atol=atol, rtol=atol), name


def test_split_agrees_with_dense_forward_and_backward():
    assert_agree(outputs_and_gradients("split"), outputs_and_gradients("dense"), 1e-5)


@needs_cuda
@pytest.mark.parametrize("backend", ["flex", "varlen"])
def test_cuda_backends_agree_with_dense_forward_and_backward(backend):
    dtype, atol = CUDA_BACKENDS[backend]
    assert_agree(outputs_and_gradients(backend, "cuda", dtype), outputs_and_gradients("dense", "cuda", dtype), atol)


def test_varlen_needs_cuda_and_its_bounds_follow_the_runs():
    ids = torch.tensor([[1, 1, 0, 0, 2, 2, 2, 0], [1, 2, 3, 3, 0, 0, 0, 0]])
    bounds, longest = run_bounds(run_ids(ids))
    assert bounds.tolist() == [0, 2, 4, 7, 8, 9, 10, 12, 16] and longest == 4 and bounds.dtype == torch.int32
    with pytest.raises(ValueError, match="needs a CUDA device"):
        small_model()(make_batch([[0]], random_samples(1, seed=0), 128), attention="varlen")


def test_runs_separate_samples_and_padding_stretches():
    ids = torch.tensor([[1, 1, 0, 0, 2, 2, 2, 0], [1, 2, 3, 3, 0, 0, 0, 0]])
    assert run_ids(ids).tolist() == [[0, 0, 1, 1, 2, 2, 2, 3], [0, 1, 2, 2, 3, 3, 3, 3]]


def test_loss_helpers_and_padding_batches():
    model = small_model().train()
    samples = random_samples(3, seed=4)
    batch = make_batch([[0, 1, 2]], samples, 512)
    logits = model(batch)
    assert torch.equal(loss(logits, batch.labels), F.cross_entropy(logits, batch.labels))
    empty = make_batch([[]], samples, 128)
    zero = loss(model(empty), empty.labels)
    assert zero == 0 and zero.requires_grad
    multi = torch.zeros(3, 5)
    multi[0, [1, 3]] = 1
    assert torch.equal(loss(logits, multi), F.binary_cross_entropy_with_logits(logits, multi))


def test_all_padding_batches_reach_every_parameter_with_a_zero_loss():
    """DDP needs every parameter in the graph on every rank, also on filler batches."""
    from elasticast.ast_baseline import ASTBaseline

    empty = make_batch([[]], random_samples(1, seed=0), 128)
    torch.manual_seed(0)
    for model in (
        small_model().train(),
        ASTBaseline(preset("tiny", num_classes=5, dim=64, depth=2, heads=4), target_frames=64),
    ):
        value = loss(model(empty), empty.labels)
        value.backward()
        assert value == 0 and all(p.grad is not None for p in model.parameters()), type(model).__name__


def test_training_steps_are_bitwise_reproducible_on_several_cpu_threads():
    """Same seed, same batches, same weights after training: no op accumulates gradients in a
    thread-dependent order (tensor indexing's backward on CPU does; embedding lookups do not).
    The second batch holds a sample longer than the time table (its interpolated positions)."""
    samples = random_samples(9, seed=3) + [torch.randn(8 * 100, 256, generator=torch.Generator().manual_seed(3))]
    batches = [
        make_batch([[0, 1, 2, 3], [4, 5], [6, 7, 8]], samples, 320),
        make_batch([[9, 2], [5, 0, 7]], samples, 8 * 110),
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        weights = []
        for _ in range(2):
            model = small_model(beyond_table="interpolate").train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
            for batch in batches * 3:
                loss(model(batch), batch.labels).backward()
                optimizer.step()
                optimizer.zero_grad()
            weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(weights[0], weights[1])


def test_time_positions_beyond_the_table_are_refused_or_interpolated_per_sample():
    samples = random_samples(3, seed=6) + [torch.randn(8 * 100, 256)]  # 100 time patches; the table has 64
    with pytest.raises(ValueError, match="crop inputs to max_frames"):
        small_model()(make_batch([[3]], samples, 8 * 100))
    strict, stretched = small_model(), small_model(beyond_table="interpolate")
    packed = logits_by_key(stretched, make_batch([[0, 3], [1, 2]], samples, 8 * 110), "split")
    assert torch.allclose(
        packed["3"], logits_by_key(stretched, make_batch([[3]], samples, 8 * 100), "split")["3"], atol=1e-5
    )
    within = logits_by_key(strict, make_batch([[0], [1, 2]], samples, 128), "split")
    for key, value in within.items():  # a sample inside the table reads it unchanged, whatever it is packed with
        assert torch.allclose(packed[key], value, atol=1e-5), key
    first, last = stretched.time_embedding(make_batch([[3]], samples, 8 * 100))[0, [0, -1]]
    assert torch.equal(first, stretched.time_embed[0]) and torch.allclose(last, stretched.time_embed[-1])
    with pytest.raises(ValueError, match="beyond_table"):
        preset("tiny", 10, beyond_table="wrap")


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
    stream = PackedStream(out / "train", rows_per_batch=2, max_tokens=512, scales=(1.0, 2.0), backend="local")
    model = ElasticAST(preset("tiny", num_classes=len(stream.labels), depth=2)).train().double()
    batch = next(iter(stream.epoch(0)))
    batch = PackedBatch(**{**batch.__dict__, "patches": batch.patches.double()})
    logits = model(batch)
    assert logits.shape == (batch.num_samples, len(stream.labels))
    loss(logits, batch.labels).backward()
    weight, eps = model.patch_embed.weight, 1e-6
    slope = float((weight.grad * weight.grad).sum())  # d loss / d t along weight + t * grad
    with torch.no_grad():
        shifted = []
        for sign in (1, -1):
            weight += sign * eps * weight.grad
            shifted.append(float(loss(model(batch), batch.labels)))
            weight -= sign * eps * weight.grad
    assert (shifted[0] - shifted[1]) / (2 * eps) == pytest.approx(slope, rel=1e-4)  # the gradient is the loss's


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
        model = ASTBaseline(
            preset("tiny", num_classes=5, dim=64, depth=2, heads=4), target_frames=64, pooling=pooling
        ).eval()
        with torch.no_grad():
            packed = model(batch)
            alone = torch.cat([model(make_batch([[int(k)]], samples, 128)) for k in batch.keys])
        assert packed.shape == (4, 5) and torch.allclose(packed, alone, atol=1e-5)
