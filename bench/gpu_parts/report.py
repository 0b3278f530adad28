"""The text block `bench/gpu.py` prints (ready to paste into bench/RESULTS.md) and the pass/fail summary."""

from __future__ import annotations

RANDOM_C = "random C"


def header(results: dict) -> str:
    sizes = results["sizes"]
    peak = f"{results['peak_tflops']:g} TFLOP/s bf16 peak" if results["peak_tflops"] else "no peak known: MFU not given"
    return (
        f"# GPU path benchmark: {results['device']}, torch {results['torch']}, {peak}"
        f"{' (SMOKE: CPU, tiny shapes)' if results['smoke'] else ''}\n"
        f"model {sizes['preset']}, {sizes['rows']} rows x {sizes['length']} tokens a step, AST at {sizes['ast_frames']} frames"
    )


def _number(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def section(name: str, results: dict) -> str:
    data = results[name]
    lines = [f"\n## {name} ({data['section_s']:.0f} s)"]
    if "skipped" in data or "failed" in data:
        return "\n".join(
            lines + [f"{'skipped' if 'skipped' in data else 'FAILED'}: {data.get('skipped') or data.get('failed')}"]
        )
    lines += globals()[f"_{name}"](data)
    return "\n".join(lines)


def _correctness(data: dict) -> list[str]:
    lines = []
    for case, checks in data.items():
        if case == "section_s":
            continue
        for check, r in checks.items():
            if check == "vs dense":
                detail = f"logits max abs {r['logits_max_abs']:.1e}, grads max rel {r['grad_max_rel']:.1e} (tolerance {r['tolerance'][0]:g} / {r['tolerance'][1]:g})"
            elif check == "packing invariance":
                detail = f"logits max abs {r['logits_max_abs']:.1e} (tolerance {r['tolerance']:g})"
            elif check == "cross-sample gradient":
                detail = f"leaked max abs {r['leaked_max_abs']:g} (must be 0)"
            else:
                detail = f"filler losses {r['filler_losses']}, every gradient present and zero: {r['all_grads_present_and_zero']}"
            lines.append(f"{case:14} {check:22} {'ok  ' if r['ok'] else 'FAIL'} {detail}")
    return lines


def _speed(data: dict) -> list[str]:
    lines = [
        f"{'what':12} {'backend':8} {'step ms':>8} {'tokens/s':>10} {'useful/s':>10} {'vs AST':>7} {'peak GiB':>9} {'TFLOP/s':>8} {'MFU':>6}"
    ]
    ast = data["model"].get("ast", {}).get("useful_tokens_per_s")
    for what in ("block", "model", "model_random_c"):
        for backend, r in data[what].items():
            versus = f"{r['useful_tokens_per_s'] / ast:6.2f}x" if ast and what != "block" else "      -"
            lines.append(
                f"{what:12} {backend:8} {r['step_ms']:8.1f} {r['tokens_per_s']:10.0f} {r['useful_tokens_per_s']:10.0f} {versus} "
                f"{_number(r['peak_gib'], '9.2f'):>9} {r['tflops']:8.1f} {_number(r['mfu'] and 100 * r['mfu'], '5.1f'):>5}%"
            )
    first = {b: r["first_step_s"] for b, r in data["model"].items() if "first_step_s" in r}
    lines.append(
        "first whole-model step (compilation included): " + ", ".join(f"{b} {s:.1f} s" for b, s in first.items())
    )
    t = data["transfer"]
    lines.append(
        f"copy of one batch to the device: skipped ({t['skipped']})"
        if "skipped" in t
        else f"copy of one batch ({t['batch_mb']:.1f} MB) to the device: pageable {t['pageable_ms']:.2f} ms, pinned "
        f"{t['pinned_ms']:.2f} ms ({t['pinned_gb_per_s']:.1f} GB/s) + pinning {t['pin_ms']:.2f} ms"
    )
    return lines


def _recompile(data: dict) -> list[str]:
    lines = [
        f"{data['backend']}: {data['layouts']} batches ({data['distinct_layouts']} distinct layouts): compiled graphs "
        f"{data['graphs_after_first_train_step']} after the first training step, {data['graphs_after_all_train_steps']} after all, "
        f"{data['graphs_after_eval_too']} with eval too: {'bounded' if data['bounded'] else 'NOT BOUNDED'}"
    ]
    return lines + ([data["note"]] if "note" in data else [])


def _feeding(data: dict) -> list[str]:
    lines = [
        f"{'':9} {'loader/core tokens/s':>20} {'audio s/s':>9} {'trainer tokens/s':>16} {'audio s/s':>9} {'cores/GPU':>9} {'8-GPU node':>10}"
    ]
    for name in ("C = 1", RANDOM_C):
        r = data[name]
        made = r["loader_per_core"]
        lines.append(
            f"{name:9} {made['tokens_per_s']:20.0f} {made['audio_s_per_s']:9.0f} {r['trainer_tokens_per_s']:16.0f} "
            f"{r['trainer_audio_s_per_s']:9.0f} {r['loader_cores_per_gpu']:9.1f} {r['loader_cores_per_8_gpu_node']:10.0f}"
        )
    lines.append(f"this machine has {data['this_machine_cores']} cores")
    return lines


def _featurize(data: dict) -> list[str]:
    lines = [
        f"{'':9} {'featurize ms':>12} {'audio s/batch':>13} {'audio s/s':>10} {'share of step':>13} {'max abs vs CPU':>14}"
    ]
    for name in ("C = 1", RANDOM_C):
        r = data[name]
        share = _number(r["share_of_step"] and 100 * r["share_of_step"], "12.1f")
        lines.append(
            f"{name:9} {r['featurize_ms']:12.2f} {r['audio_s_per_batch']:13.1f} {r['audio_s_per_s']:10.0f} {share:>12}% "
            f"{r['max_abs_vs_cpu']:14.1e} {'ok' if r['ok'] else 'FAIL'}"
        )
    return lines


def _e2e(data: dict) -> list[str]:
    loader = f"{data['loader_workers']} Ray Data loader tasks" if data["loader_workers"] else "the in-process loader"
    lines = [f"jobs/train.py: {data['wall_s']:.0f} s wall (Ray start included), {loader}"]
    for m in data["epochs"]:
        lines.append(
            f"epoch {m['epoch']}: {m['tokens_per_s']:.0f} tokens/s, {m['samples_per_s']:.1f} samples/s, data wait "
            f"{100 * m['data_wait']:.1f} %, {m['epoch_s']:.1f} s, pad {100 * m['pad_ratio']:.1f} %, val {m['val_metric']:.3f}"
        )
    return lines


def consumption(results: dict) -> dict[str, float]:
    """The trainer's useful tokens/s per GPU, from the whole-model runs of the default backend."""
    return {name: run["useful_tokens_per_s"] for name, run in _model_runs(results).items()}


def step_ms(results: dict) -> dict[str, float] | None:
    """The whole-model step in ms at C = 1 and random C (default backend), if the speed section ran."""
    return {name: run["step_ms"] for name, run in _model_runs(results).items()} if "speed" in results else None


def _model_runs(results: dict) -> dict[str, dict]:
    speed = results["speed"]
    backend = next(iter(speed["model_random_c"]))
    return {"C = 1": speed["model"][backend], RANDOM_C: speed["model_random_c"][backend]}


def failures(results: dict) -> list[str]:
    failed = [
        f"{case}: {check}"
        for case, checks in results.get("correctness", {}).items()
        if case != "section_s"
        for check, r in checks.items()
        if not r["ok"]
    ]
    if results.get("recompile", {}).get("bounded") is False:
        failed.append("recompile: not bounded")
    failed += [name for name in ("feeding", "e2e") if "failed" in results.get(name, {})]
    failed += [
        f"featurize: {name}" for name, r in results.get("featurize", {}).items() if isinstance(r, dict) and not r["ok"]
    ]
    return failed
