"""Foreign weight layouts, written here with random values under their exact key names (and
shapes scaled down consistently), read by `--init` and the import: every tensor lands where the
mapping says, position tables are converted as hand-computed, heads are kept or re-initialised."""

from __future__ import annotations

import json

import pytest
import torch
from test_paper_model import REFERENCE

from elasticast import Classifier, load_checkpoint, model_from_checkpoint, save_checkpoint
from elasticast.attention import Attention, build_layout
from elasticast.foreign import detect_format
from elasticast.training.config import TrainConfig
from elasticast.training.init import feature_settings, initial_model, read_start, start_model
from jobs import import_weights
from loaders.feature_spec import FeatureSpec

DIM = 64  # for 768 (head dim 64: one head)
VIT_DIM = 192  # the tiny preset's


def scaled(shape: list[int]) -> tuple[int, ...]:
    """A released model's shape at DIM: 768 -> 64, 1536 -> 128, 3072 -> 256; other sizes kept."""
    return tuple({768: DIM, 1536: 2 * DIM, 3072: 4 * DIM}.get(n, n) for n in shape)


def released_layout(dataset: str, folder) -> tuple:
    """A released model's every key (`paper_base_layouts.json`), random values, shapes scaled to DIM."""
    layouts = REFERENCE / "paper_base_layouts.json"
    if not layouts.is_file():
        pytest.skip(f"the paper's layouts are not at {layouts} (set ELASTICAST_PAPER_MODEL)")
    generator = torch.Generator().manual_seed(0)
    keys = json.loads(layouts.read_text())[dataset]
    state = {key: torch.randn(scaled(shape), generator=generator) for key, shape in keys.items()}
    torch.save(state, folder / f"{dataset}.pth")
    return folder / f"{dataset}.pth", state


@pytest.fixture(scope="module")
def paper_file(tmp_path_factory):
    """The released VoxCeleb model's layout (1,251 classes, 192 time rows)."""
    return released_layout("voxceleb", tmp_path_factory.mktemp("paper"))


def test_the_audioset_model_imports_with_its_64_row_table_multi_label_and_fixed_length(tmp_path, capsys):
    """Every one of its 185 tensors placed; a clip longer than the 64-row table (1024 frames) is
    cropped to it, in the fixed-length mode at C: int(1024 / C) frames."""
    path, _ = released_layout("audioset", tmp_path)
    assert import_weights.main([str(path), str(tmp_path / "as.pt"), "--dataset", "audioset"]) == 0
    out = capsys.readouterr().out
    assert "left out nothing" in out and "newly initialised nothing" in out
    checkpoint = load_checkpoint(tmp_path / "as.pt")
    features = checkpoint.features
    assert (features.multi_label, features.fixed_frames, features.max_frames, features.mean) == (
        True,
        1024,
        1024,
        -4.414,
    )
    assert checkpoint.state_dict["time_embed"].shape == (64, DIM)
    classifier = Classifier(model_from_checkpoint(checkpoint), checkpoint.labels, features)
    wave = torch.randn(16000 * 33).numpy()  # 33 s: 3,298 frames at C = 1
    (whole,), (half,) = classifier.predict([wave], sample_rate=16000), classifier.predict([wave], 16000, scale=2.0)
    assert whole.windows == half.windows == 1 and len(whole.probabilities) == 527
    assert 0 < whole.probabilities.min() and whole.probabilities.sum() > 1  # sigmoid per class, not a softmax
    assert features.counts(len(wave), 2.0).tokens == 512 // 16 * 8


def vit_state(depth: int = 2, side: int = 14) -> dict[str, torch.Tensor]:
    """timm's ViT-B/16 layout at the tiny preset's width; the position grid holds 100 x row + column in every channel."""
    generator = torch.Generator().manual_seed(1)
    state = {
        "cls_token": torch.randn(1, 1, VIT_DIM, generator=generator),
        "patch_embed.proj.weight": torch.randn(VIT_DIM, 3, 16, 16, generator=generator),
        "patch_embed.proj.bias": torch.randn(VIT_DIM, generator=generator),
        "norm.weight": torch.randn(VIT_DIM, generator=generator),
        "norm.bias": torch.randn(VIT_DIM, generator=generator),
        "head.weight": torch.randn(1000, VIT_DIM, generator=generator),
        "head.bias": torch.randn(1000, generator=generator),
    }
    grid = (100 * torch.arange(side)[:, None] + torch.arange(side)[None, :]).float().reshape(-1, 1).expand(-1, VIT_DIM)
    state["pos_embed"] = torch.cat([torch.full((1, VIT_DIM), -1.0), grid]).unsqueeze(0)
    state |= timm_blocks("", VIT_DIM, depth, generator)
    return state


def timm_blocks(prefix: str, dim: int, depth: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """timm's ViT blocks (`prefix` + `blocks.N.*`), random values."""
    shapes = {"norm1": [dim], "attn.qkv": [3 * dim, dim], "attn.proj": [dim, dim], "norm2": [dim]}
    shapes |= {"mlp.fc1": [4 * dim, dim], "mlp.fc2": [dim, 4 * dim]}
    state = {}
    for n in range(depth):
        for name, shape in shapes.items():
            state[f"{prefix}blocks.{n}.{name}.weight"] = torch.randn(shape, generator=generator)
            state[f"{prefix}blocks.{n}.{name}.bias"] = torch.randn(shape[0], generator=generator)
    return state


def test_a_paper_file_lands_tensor_by_tensor_and_its_head_follows_the_class_count(paper_file):
    path, source = paper_file
    assert detect_format(source) == "paper"
    labels = [str(i) for i in range(1251)]
    start = read_start(str(path))
    model, lines = start_model(TrainConfig(init=str(path)), labels, start)
    ours = model.state_dict()
    assert model.config.scaled_attention is False and model.config.max_frames == 192 * 16
    assert model.config.heads == 1
    for theirs, mine in [
        ("pos_embed_freq", "freq_embed"),
        ("pos_embed_time", "time_embed"),
        ("mlp_norm.weight", "head_norm.weight"),
    ]:
        assert torch.equal(ours[mine], source[f"module.{theirs}"])
    for n in range(12):
        block = f"module.blocks.modules_list.{n}"
        for leaf in ("weight", "bias"):
            qkv = torch.cat([source[f"{block}.attn.to_q.{leaf}"], source[f"{block}.attn.to_kv.{leaf}"]])
            assert torch.equal(ours[f"blocks.{n}.attn.qkv.{leaf}"], qkv)
            for name in ("norm1", "norm2", "attn.proj", "mlp.fc1", "mlp.fc2"):
                assert torch.equal(ours[f"blocks.{n}.{name}.{leaf}"], source[f"{block}.{name}.{leaf}"])
    query = source["module.attn_pool.to_q.weight"].double() @ source["module.attn_pool_queries"].double()
    assert torch.allclose(
        ours["pool.query"], (query + source["module.attn_pool.to_q.bias"].double()).float(), atol=1e-5
    )
    assert torch.equal(ours["pool.kv.weight"], source["module.attn_pool.to_kv.weight"])
    assert torch.equal(ours["head.weight"], source["module.head.weight"]) and "head kept" in lines[-1]
    assert feature_settings(TrainConfig(), start)["recipe"] == "paper"
    other, lines = initial_model(TrainConfig(init=str(path)), labels[:5])  # the Python form of --init
    assert other.head.out_features == 5 and "head re-initialised" in lines[-1]
    assert torch.equal(other.state_dict()["time_embed"], source["module.pos_embed_time"])


def test_a_vit_lands_by_name_and_its_position_grid_is_cropped_interpolated_and_factorised(tmp_path):
    """14 x 14 grid of 100 r + c; 8 frequency rows kept (r = 3..10); 7 time steps from 14 columns
    (linear, half-pixel centres: column 2j + 0.5); then averaged over each axis."""
    state = vit_state()
    path = tmp_path / "vit.pth"
    torch.save({"model": state}, path)
    config = TrainConfig(init=str(path), preset="tiny", depth=2, max_frames=7 * 16)
    model, lines = start_model(config, ["a", "b"], read_start(str(path)))
    ours = model.state_dict()
    rows, steps = torch.arange(3, 11).float(), 2 * torch.arange(7).float() + 0.5
    assert torch.allclose(ours["freq_embed"], (100 * rows + steps.mean())[:, None].expand(-1, VIT_DIM), atol=1e-4)
    assert torch.allclose(ours["time_embed"], (100 * rows.mean() + steps)[:, None].expand(-1, VIT_DIM), atol=1e-4)
    assert torch.equal(ours["patch_embed.weight"], state["patch_embed.proj.weight"].sum(dim=1).flatten(1))
    assert torch.equal(ours["blocks.1.attn.qkv.weight"], state["blocks.1.attn.qkv.weight"])
    assert any("left out head.weight" in line for line in lines) and "head re-initialised" in lines[-1]


def test_an_elasticast_checkpoint_keeps_its_head_for_the_same_labels_only(tmp_path):
    config = TrainConfig(preset="tiny", depth=1, max_frames=256)
    trained, _ = start_model(config, ["a", "b", "c"], None)
    save_checkpoint(tmp_path / "run.pt", trained, ["a", "b", "c"], FeatureSpec(16000, -5.0, 4.0, max_frames=256))
    start = read_start(str(tmp_path / "run.pt"))
    same, lines = start_model(TrainConfig(init="x", max_frames=256), ["a", "b", "c"], start)
    assert (
        all(torch.equal(v, same.state_dict()[k]) for k, v in trained.state_dict().items()) and "head kept" in lines[-1]
    )
    other, lines = start_model(TrainConfig(init="x", max_frames=256), ["a", "b"], start)
    assert other.head.out_features == 2 and "head re-initialised" in lines[-1]
    assert torch.equal(other.state_dict()["time_embed"], trained.state_dict()["time_embed"])
    with pytest.raises(ValueError, match="exceeds the starting model's time table"):
        start_model(TrainConfig(init="x", max_frames=512), ["a"], start)
    assert load_checkpoint(tmp_path / "run.pt").features.recipe == "elasticast"


def test_a_version_2_checkpoint_loads_with_what_version_3_added_at_its_former_behaviour(tmp_path):
    model, _ = start_model(TrainConfig(preset="tiny", depth=1, max_frames=256), ["a", "b"], None)
    save_checkpoint(tmp_path / "v3.pt", model, ["a", "b"], FeatureSpec(16000, -5.0, 4.0, max_frames=256))
    raw = torch.load(tmp_path / "v3.pt", weights_only=True)
    raw["format_version"] = 2
    for key in ("recipe", "fixed_frames"):
        del raw["features"][key]
    for key in ("scaled_attention", "freq_stride", "time_stride"):
        del raw["model"]["config"][key]
    torch.save(raw, tmp_path / "v2.pt")
    loaded = load_checkpoint(tmp_path / "v2.pt")
    assert (loaded.features.recipe, loaded.features.fixed_frames) == ("elasticast", None)
    assert model_from_checkpoint(loaded).config == model.config


@pytest.mark.parametrize("backend", ["split", "dense"])
def test_unscaled_attention_is_the_softmax_of_raw_logits_within_each_sample(backend):
    """The paper's attention, written out: softmax(q k^T) v per head, per sample, no 1/sqrt(d)."""
    torch.manual_seed(0)
    attention = Attention(16, 2, scaled=False)
    x, segments = torch.randn(1, 7, 16), torch.tensor([[1, 1, 1, 2, 2, 2, 2]])
    q, k, v = attention.qkv(x)[0].reshape(7, 3, 2, 8).unbind(dim=1)  # [tokens, heads, 8] each
    expected = torch.zeros(7, 2, 8)
    for span in (slice(0, 3), slice(3, 7)):
        weights = torch.einsum("qhd,khd->hqk", q[span], k[span]).softmax(dim=-1)
        expected[span] = torch.einsum("hqk,khd->qhd", weights, v[span])
    with torch.no_grad():
        out = attention(x, build_layout(segments, backend))
        assert torch.allclose(out[0], attention.proj(expected.reshape(7, 16)), atol=1e-5)
