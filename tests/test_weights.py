"""Importing timm's own ViT-B/16 (random init, saved locally): every piece lands where it should."""

from __future__ import annotations

import pytest
import torch

from elasticast import ElasticAST, preset
from elasticast.ast_baseline import ASTBaseline
from elasticast.weights import load_vit_weights, position_grid

timm = pytest.importorskip("timm", reason="timm (test extra) is needed to make a reference ViT")


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    torch.manual_seed(0)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)
    path = tmp_path_factory.mktemp("vit") / "vit_b16.pth"
    torch.save(vit.state_dict(), path)
    return vit, path


def test_elasticast_imports_every_encoder_weight(vit_file):
    vit, path = vit_file
    model = ElasticAST(preset("base", num_classes=7, max_frames=1024))
    left = load_vit_weights(model, path)
    assert all(k.startswith(("pool.", "head", "head_norm.")) for k in left), left
    reference = vit.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith(("blocks.", "norm.")):
            assert torch.equal(value, reference[key]), key
    patch = torch.randn(16, 16)  # (mel bins, frames)
    conv = vit.patch_embed.proj(patch.expand(1, 3, 16, 16)).flatten()
    assert torch.allclose(model.patch_embed(patch.reshape(256)), conv, atol=1e-4)
    grid = position_grid(vit.pos_embed.detach(), 8, 64)
    assert torch.allclose(model.freq_embed, grid.mean(dim=1)) and torch.allclose(model.time_embed, grid.mean(dim=0))
    assert torch.allclose(grid[:, 0], vit.pos_embed[0, 1:].reshape(14, 14, -1)[3:11, 0], atol=1e-6)  # edge column kept


def test_position_grid_crops_frequency_and_stretches_time(vit_file):
    vit, _ = vit_file
    raw = vit.pos_embed.detach()[0, 1:].reshape(14, 14, -1)
    assert torch.allclose(position_grid(vit.pos_embed.detach(), 8, 14), raw[3:11], atol=1e-6)
    assert position_grid(vit.pos_embed.detach(), 8, 192).shape == (8, 192, 768)


def test_ast_baseline_imports_the_2d_grid_and_cls(vit_file):
    vit, path = vit_file
    model = ASTBaseline(preset("base", num_classes=7, max_frames=1024), target_frames=224)
    left = load_vit_weights(model, path)
    assert all(k.startswith(("head", "head_norm.")) for k in left), left
    assert torch.equal(model.cls_token, vit.cls_token)
    grid = position_grid(vit.pos_embed.detach(), 8, 64)[:, :14]
    assert torch.allclose(model.pos_embed[0, 1:9], grid[:, 0])  # time step 0: its 8 frequency positions


def test_mismatched_models_and_files_are_refused(vit_file, tmp_path):
    _, path = vit_file
    with pytest.raises(ValueError, match="shape"):
        load_vit_weights(ElasticAST(preset("tiny", num_classes=3, depth=12)), path)
    with pytest.raises(KeyError, match="depth differs"):
        load_vit_weights(ElasticAST(preset("base", num_classes=3, depth=6)), path)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        load_vit_weights(ElasticAST(preset("tiny", num_classes=3)), tmp_path / "absent.pth")
