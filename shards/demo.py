"""The built-in demo corpus: synthetic sound events of very different lengths, made on the spot.

Eight classes a spectrogram model can tell apart only by looking at time-frequency structure
(steady, rising, falling, pulsed, amplitude- or frequency-modulated, noisy, impulsive), each
clip 0.5-30 s (log-uniform) with background noise at 5-20 dB SNR. Deterministic by seed.
Written as real WAV files plus a manifest, so the demo goes through the same decoding path
as user data. Every fifth clip of each class is in the test split (20 %, balanced).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

DEMO_CLASSES = ("tone", "chirp_up", "chirp_down", "beeps", "noise_bursts", "tremolo", "vibrato", "crackle")
DEMO_RATE = 16000


def write_demo_corpus(folder: str | Path, clips: int = 320, seed: int = 0,
                      min_s: float = 0.5, max_s: float = 30.0) -> Path:
    """Write `clips` WAV files (classes in turn) and `manifest.csv`; returns the manifest path."""
    if clips < len(DEMO_CLASSES):
        raise ValueError(f"demo corpus needs at least {len(DEMO_CLASSES)} clips, got {clips}")
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    rows = []
    for number in range(clips):
        label = DEMO_CLASSES[number % len(DEMO_CLASSES)]
        seconds = float(np.exp(rng.uniform(np.log(min_s), np.log(max_s))))
        relative = f"{label}/{number:05d}.wav"
        (folder / label).mkdir(parents=True, exist_ok=True)
        sf.write(folder / relative, synthesize(label, seconds, rng), DEMO_RATE, subtype="PCM_16")
        split = "test" if (number // len(DEMO_CLASSES)) % 5 == 0 else "train"
        rows.append({"path": relative, "label": label, "split": split})
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def synthesize(label: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """One clip of class `label`, peak 0.5, with white background noise at 5-20 dB SNR."""
    t = np.arange(int(seconds * DEMO_RATE)) / DEMO_RATE
    f0 = rng.uniform(250, 900)
    period = rng.uniform(0.25, 0.8)
    cycle = (t % period) / period
    if label == "tone":
        signal = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3))
    elif label in ("chirp_up", "chirp_down"):
        ramp = cycle if label == "chirp_up" else 1 - cycle
        signal = np.sin(2 * np.pi * np.cumsum(f0 * 2 ** (2 * ramp)) / DEMO_RATE)
    elif label == "beeps":
        signal = np.sin(2 * np.pi * (f0 + 1000) * t) * (cycle < 0.3)
    elif label == "noise_bursts":
        signal = _band_noise(len(t), f0 * 2, f0 * 4, rng) * (cycle < 0.5)
    elif label == "tremolo":
        signal = np.sin(2 * np.pi * f0 * t) * (0.55 + 0.45 * np.sin(2 * np.pi * rng.uniform(4, 12) * t))
    elif label == "vibrato":
        depth, rate = rng.uniform(0.05, 0.15), rng.uniform(3, 8)
        signal = np.sin(2 * np.pi * np.cumsum(f0 * (1 + depth * np.sin(2 * np.pi * rate * t))) / DEMO_RATE)
    elif label == "crackle":
        impulses = (rng.random(len(t)) < rng.uniform(20, 60) / DEMO_RATE).astype(float)
        ring = np.exp(-np.arange(160) / 30) * np.sin(2 * np.pi * 3000 * np.arange(160) / DEMO_RATE)
        signal = np.convolve(impulses, ring)[: len(t)]
    else:
        raise ValueError(f"unknown demo class {label!r}; classes: {DEMO_CLASSES}")
    signal = np.asarray(signal, dtype=np.float64)
    power = np.mean(signal**2) or 1e-12
    noise = rng.standard_normal(len(t)) * np.sqrt(power / 10 ** (rng.uniform(5, 20) / 10))
    mix = signal + noise
    return (0.5 * mix / max(np.abs(mix).max(), 1e-9)).astype(np.float32)


def _band_noise(n: int, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    frequencies = np.fft.rfftfreq(n, 1 / DEMO_RATE)
    spectrum[(frequencies < low) | (frequencies > high)] = 0
    return np.fft.irfft(spectrum, n)
