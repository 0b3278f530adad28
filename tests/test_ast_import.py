"""AST-family weights: the AST baseline equals transformers' AST after an `ast-hf` import (at
stride 16 and 10), and files in the original AST and SSAST layouts (written here, random values,
their key names, position grids holding known numbers) land where the mapping says, their grids
converted for ElasticAST as hand-computed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_foreign_layouts import timm_blocks

from elasticast.checkpoint import load_checkpoint, model_from_checkpoint
from elasticast.foreign import detect_format
from elasticast.model import loss
from elasticast.training.config import TrainConfig
from elasticast.training.init import read_start, start_model
from elasticast.training.loop import build_model
from jobs import import_weights
from loaders.batch import from_features
from loaders.features import patchify

DIM, DEPTH = 32, 2
FLAGS = ["--mean", "0", "--std", "0.5", "--heads", "2"]


@pytest.mark.parametrize("stride", [16, 10])
def test_the_ast_baseline_gives_transformers_logits_after_an_ast_hf_import(stride, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # built from a config with random weights: nothing to fetch
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    settings = dict(hidden_size=DIM, num_hidden_layers=DEPTH, num_attention_heads=2, intermediate_size=4 * DIM)
    settings |= dict(max_length=128, num_mel_bins=128, frequency_stride=stride, time_stride=stride, num_labels=5)
    theirs = transformers.ASTForAudioClassification(transformers.ASTConfig(**settings)).eval()
    with torch.no_grad():
        for parameter in theirs.parameters():
            parameter.normal_(0, 0.2)  # far from the init, so a misplaced tensor shows
    torch.save(theirs.state_dict(), tmp_path / "hf.pth")
    assert import_weights.main([str(tmp_path / "hf.pth"), str(tmp_path / "ast.pt"), "--max-frames", "128", *FLAGS]) == 0
    assert load_checkpoint(tmp_path / "ast.pt").model["pooling"] == "cls_dist"
    ours = model_from_checkpoint(tmp_path / "ast.pt")
    steps = (128 - 16) // stride + 1
    assert (ours.config.freq_stride, ours.config.time_stride, ours.tokens) == (stride, stride, steps * steps)
    spectrograms = torch.randn(3, 128, 128)  # [clips, frames, mel bins], as transformers takes them
    features = [patchify(spec) for spec in spectrograms]
    batch = from_features(
        features,
        torch.tensor([0, 0, 1]).numpy(),
        torch.tensor([0, 64, 0]).numpy(),
        torch.ones(3).numpy(),
        ["a", "b", "c"],
    )
    with torch.no_grad():
        expected = theirs(spectrograms).logits
        assert (ours.forward_fixed(torch.stack([f[0] for f in features])) - expected).abs().max() < 1e-4
        assert (ours(batch) - expected).abs().max() < 1e-4  # through packed rows, as Classifier feeds it


def grid_state(prefix: str, rows: int, steps: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """timm-named encoder (`prefix` + names): cls, dist, a position grid of 1000 f + t, blocks, norm."""
    cells = (1000 * torch.arange(rows)[:, None] + torch.arange(steps)[None, :]).float().reshape(-1, 1).expand(-1, DIM)
    state = {
        f"{prefix}cls_token": torch.randn(1, 1, DIM, generator=generator),
        f"{prefix}dist_token": torch.randn(1, 1, DIM, generator=generator),
        f"{prefix}pos_embed": torch.cat([torch.full((2, DIM), -7.0), cells]).unsqueeze(0),
        f"{prefix}patch_embed.proj.weight": torch.randn(DIM, 1, 16, 16, generator=generator),
        f"{prefix}patch_embed.proj.bias": torch.randn(DIM, generator=generator),
        f"{prefix}norm.weight": torch.randn(DIM, generator=generator),
        f"{prefix}norm.bias": torch.randn(DIM, generator=generator),
        f"{prefix}head.weight": torch.randn(1000, DIM, generator=generator),  # timm's DeiT heads, unused
        f"{prefix}head.bias": torch.randn(1000, generator=generator),
        f"{prefix}head_dist.weight": torch.randn(1000, DIM, generator=generator),
        f"{prefix}head_dist.bias": torch.randn(1000, generator=generator),
    }
    state |= timm_blocks(prefix, DIM, DEPTH, generator)
    return state


@pytest.fixture
def ast_file(tmp_path):
    """The original AST's AudioSet layout: stride 10, a 12 x 101 grid for 1024 frames, 527 classes."""
    generator = torch.Generator().manual_seed(2)
    state = grid_state("module.v.", 12, 101, generator)
    state |= {
        "module.mlp_head.0.weight": torch.randn(DIM, generator=generator),
        "module.mlp_head.0.bias": torch.randn(DIM, generator=generator),
        "module.mlp_head.1.weight": torch.randn(527, DIM, generator=generator),
        "module.mlp_head.1.bias": torch.randn(527, generator=generator),
    }
    torch.save(state, tmp_path / "audioset_10_10.pth")
    return tmp_path / "audioset_10_10.pth", state


def test_an_original_ast_file_becomes_the_ast_baseline_tensor_by_tensor(ast_file, tmp_path, capsys):
    path, source = ast_file
    assert detect_format(source) == "ast"
    assert import_weights.main([str(path), str(tmp_path / "ast.pt"), *FLAGS]) == 0
    assert "left out module.v.head_dist.weight" in capsys.readouterr().out
    state = load_checkpoint(tmp_path / "ast.pt").state_dict
    model = model_from_checkpoint(tmp_path / "ast.pt")
    assert (model.config.freq_stride, model.target_frames, model.tokens) == (10, 1024, 12 * 101)
    positions = state["pos_embed"][0]
    for t, f in [(0, 0), (0, 11), (57, 3), (100, 11)]:  # ours: time-major behind cls and dist
        assert torch.equal(positions[2 + t * 12 + f], source["module.v.pos_embed"][0, 2 + f * 101 + t])
    assert torch.equal(state["dist_token"], source["module.v.dist_token"])
    assert torch.equal(state["head.weight"], source["module.mlp_head.1.weight"])
    assert torch.equal(state["head_norm.bias"], source["module.mlp_head.0.bias"])
    assert torch.equal(state["patch_embed.weight"], source["module.v.patch_embed.proj.weight"].flatten(1))
    assert torch.equal(state["blocks.1.attn.qkv.weight"], source["module.v.blocks.1.attn.qkv.weight"])


def test_an_ast_grid_is_resampled_at_our_patch_positions_for_elasticast(ast_file):
    """Our patch k starts at 16 k, theirs j at 10 j: ours reads j = 1.6 k, held at their last row
    (11) and step (100) beyond them. Grid 1000 f + t, so frequency row k = min(1600 k, 11000)
    (+ the time mean) and time step k = min(1.6 k, 100) (+ the frequency mean)."""
    path, source = ast_file
    config = TrainConfig(init=str(path), max_frames=1024)
    model, lines = start_model(config, [str(i) for i in range(527)], read_start(str(path)))
    steps = (1.6 * torch.arange(64)).clamp(max=100)
    rows = (1600 * torch.arange(8).float()).clamp(max=11000)
    state = model.state_dict()
    assert torch.allclose(state["freq_embed"][:, 0], rows + steps.mean(), atol=1e-3)
    assert torch.allclose(state["time_embed"][:, 0], rows.mean() + steps, atol=1e-3)
    assert torch.equal(state["head.weight"], source["module.mlp_head.1.weight"]) and "head kept" in lines[-1]
    assert any(line.startswith("newly initialised pool.") for line in lines)


def test_an_ssast_file_is_cropped_and_stretched_as_the_paper_does(tmp_path):
    """8 x 64 grid of 1000 f + t stretched to 32 time patches (half-pixel centres: step 2 j + 0.5)."""
    generator = torch.Generator().manual_seed(3)
    state = grid_state("module.v.", 8, 64, generator)
    state |= {
        "module.cpredlayer.0.weight": torch.randn(DIM, DIM, generator=generator),
        "module.cpredlayer.2.weight": torch.randn(256, DIM, generator=generator),
        "module.gpredlayer.0.weight": torch.randn(DIM, DIM, generator=generator),
        "module.mask_embed": torch.randn(1, 1, DIM, generator=generator),
    }
    torch.save(state, tmp_path / "ssast.pth")
    assert detect_format(state) == "ssast"
    model, lines = start_model(
        TrainConfig(init="x", max_frames=512), ["a", "b"], read_start(str(tmp_path / "ssast.pth"))
    )
    ours = model.state_dict()
    steps, rows = 2 * torch.arange(32).float() + 0.5, 1000 * torch.arange(8).float()
    assert torch.allclose(ours["freq_embed"][:, 0], rows + steps.mean(), atol=1e-3)
    assert torch.allclose(ours["time_embed"][:, 0], rows.mean() + steps, atol=1e-3)
    assert torch.equal(ours["blocks.0.mlp.fc2.weight"], state["module.v.blocks.0.mlp.fc2.weight"])
    assert "left out module.cpredlayer.0.weight" in lines and "head re-initialised" in lines[-1]


def test_the_ast_baseline_trains_at_stride_10_from_the_flag():
    model = build_model(TrainConfig(model="ast", ast_stride=10, preset="tiny", depth=1, target_frames=128), 3)
    assert (model.config.freq_stride, model.tokens) == (10, 12 * 12)  # (128 - 16) // 10 + 1 both ways
    features = [patchify(torch.randn(frames, 128)) for frames in (64, 160)]
    batch = from_features(features, np.array([0, 0]), np.array([0, 32]), np.ones(2), ["short", "long"])
    loss(model(batch), torch.tensor([0, 2])).backward()
    assert model.patch_embed.weight.grad.abs().sum() > 0


def test_a_huggingface_file_of_transformers_4_names_lands_tensor_by_tensor(tmp_path, capsys):
    """The layout of the Hub's AST checkpoints (model.safetensors, transformers 4 names), stride 10."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(4)
    cells = 12 * 101
    root = "audio_spectrogram_transformer."
    shapes = {
        "embeddings.cls_token": [1, 1, DIM],
        "embeddings.distillation_token": [1, 1, DIM],
        "embeddings.position_embeddings": [1, 2 + cells, DIM],
        "embeddings.patch_embeddings.projection.weight": [DIM, 1, 16, 16],
        "embeddings.patch_embeddings.projection.bias": [DIM],
        "layernorm.weight": [DIM],
        "layernorm.bias": [DIM],
    }
    layer = {"attention.attention.query": [DIM, DIM], "attention.attention.key": [DIM, DIM]}
    layer |= {"attention.attention.value": [DIM, DIM], "attention.output.dense": [DIM, DIM]}
    layer |= {"intermediate.dense": [4 * DIM, DIM], "output.dense": [DIM, 4 * DIM]}
    layer |= {"layernorm_before": [DIM], "layernorm_after": [DIM]}
    for n in range(DEPTH):
        for name, shape in layer.items():
            shapes[f"encoder.layer.{n}.{name}.weight"] = shape
            shapes[f"encoder.layer.{n}.{name}.bias"] = shape[:1]
    state = {root + key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}
    state |= {f"classifier.layernorm.{leaf}": torch.randn(DIM, generator=generator) for leaf in ("weight", "bias")}
    state |= {
        "classifier.dense.weight": torch.randn(527, DIM, generator=generator),
        "classifier.dense.bias": torch.randn(527),
    }
    save_file(state, str(tmp_path / "model.safetensors"))
    assert import_weights.main([str(tmp_path / "model.safetensors"), str(tmp_path / "hf.pt"), *FLAGS]) == 0
    out = capsys.readouterr().out
    assert "ast-hf weights" in out and "left out nothing" in out and "newly initialised nothing" in out
    ours = load_checkpoint(tmp_path / "hf.pt").state_dict
    layer1 = root + "encoder.layer.1."
    qkv = torch.cat([state[f"{layer1}attention.attention.{p}.weight"] for p in ("query", "key", "value")])
    assert torch.equal(ours["blocks.1.attn.qkv.weight"], qkv)
    for mine, theirs in [
        ("blocks.1.attn.proj.bias", f"{layer1}attention.output.dense.bias"),
        ("blocks.1.mlp.fc1.weight", f"{layer1}intermediate.dense.weight"),
        ("blocks.1.mlp.fc2.weight", f"{layer1}output.dense.weight"),
        ("blocks.1.norm1.weight", f"{layer1}layernorm_before.weight"),
        ("blocks.1.norm2.bias", f"{layer1}layernorm_after.bias"),
        ("norm.weight", root + "layernorm.weight"),
        ("head_norm.weight", "classifier.layernorm.weight"),
        ("head.weight", "classifier.dense.weight"),
        ("dist_token", root + "embeddings.distillation_token"),
    ]:
        assert torch.equal(ours[mine], state[theirs]), mine
    grid = state[root + "embeddings.position_embeddings"][0]
    assert torch.equal(ours["pos_embed"][0, 2 + 37 * 12 + 5], grid[2 + 5 * 101 + 37])  # time 37, frequency row 5
