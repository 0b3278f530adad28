"""`bench/gpu.py --smoke`: the GPU benchmark's code runs on CPU, so it cannot rot before a GPU is lent."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO, load_script


@pytest.fixture(scope="module")
def gpu_bench():
    bench = load_script("bench/gpu.py")
    yield bench
    sys.path.remove(str(REPO / "bench"))


def test_flop_count_of_a_vit_b_token_is_the_hand_computed_one(gpu_bench):
    from elasticast import preset

    from gpu_parts.common import training_flops

    base = preset("base", 10)
    # per layer 2 x 12 x 768^2 = 14,155,776 (qkv, proj, two MLP matrices), x 12 layers, + 2 x 256 x 768 patch projection, x 3
    assert training_flops(base, tokens=1, pairs=0) == 3 * (12 * 14_155_776 + 393_216) == 510_787_584
    assert training_flops(base, tokens=0, pairs=1) == 3 * 12 * 4 * 768  # QK^T and AV for one (query, key) pair
    # the upstream note's "~29 GFLOP per second of audio": 50 tokens a second, spans of ~530 tokens
    assert 28e9 < training_flops(base, tokens=50, pairs=50 * 530) < 30e9


@pytest.mark.slow
def test_smoke_run_measures_every_section_on_cpu(gpu_bench, tmp_path, ray_local):
    out = tmp_path / "gpu.json"
    assert gpu_bench.main(["--smoke", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["smoke"] and results["device"] == "CPU"
    checks = [r for case in results["correctness"].values() if isinstance(case, dict) for r in case.values()]
    assert len(checks) == 4 and all(r["ok"] for r in checks)
    speed = results["speed"]
    for run in [*speed["block"].values(), *speed["model"].values(), *speed["model_random_c"].values()]:
        assert 0 < run["useful_tokens_per_s"] <= run["tokens_per_s"] and run["mfu"] is None  # no peak known on CPU
    assert speed["model"]["ast"]["tokens_per_s"] * speed["model"]["ast"]["step_ms"] / 1e3 == pytest.approx(
        8 * 65
    )  # 8 x (64 + [cls])
    assert results["recompile"]["bounded"] and results["recompile"]["graphs_after_eval_too"] == 0
    for name in ("C = 1", "random C"):
        feed = results["feeding"][name]
        assert feed["loader_cores_per_gpu"] == pytest.approx(
            feed["trainer_tokens_per_s"] / feed["loader_per_core"]["tokens_per_s"]
        )
    assert (
        results["feeding"]["C = 1"]["loader_per_core"]["tokens_per_audio_s"] <= 50
    )  # 100 frames/s / 16 x 8 bins at C = 1
    speed = results["speed"]  # the device featurizer: measured, a share of the step, equal to the CPU path
    for name, step in (("C = 1", speed["model"]), ("random C", speed["model_random_c"])):
        featurized = results["featurize"][name]
        assert featurized["ok"] and featurized["max_abs_vs_cpu"] <= 1e-4 and featurized["audio_s_per_s"] > 0
        assert featurized["share_of_step"] == pytest.approx(featurized["featurize_ms"] / step["split"]["step_ms"])
    (epoch,) = results["e2e"]["epochs"]
    assert epoch["samples_per_s"] * epoch["epoch_s"] == pytest.approx(11)  # 12 smoke clips, the 10th in test
    assert 0 <= epoch["data_wait"] < 1
