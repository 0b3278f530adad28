"""The built-in demo corpus: synthetic sound events of different lengths, made on the spot.

Eight classes, each with its own pitch range and time-frequency pattern (steady, rising, falling,
pulsed, amplitude- or frequency-modulated, noisy, impulsive) that repeats every 0.15-0.4 s, so
that a tiny model trained from scratch on a CPU learns them in a few minutes. Clips are 0.5-2.5 s
(log-uniform) with white background noise at 15-30 dB SNR: short enough for many epochs, spread
enough that a model trained at one fixed length meets other lengths. Deterministic by seed.
Written as real WAV files plus a manifest, so the demo goes through the same decoding path as
user data. Every fifth clip of each class is in the test split (20 %, balanced).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

DEMO_CLASSES = ("tone", "chirp_up", "chirp_down", "beeps", "noise_bursts", "tremolo", "vibrato", "crackle")
DEMO_RATE = 16000
DEMO_SECONDS = (0.5, 2.5)  # shortest and longest clip
DEMO_SNR_DB = (15.0, 30.0)
DEMO_PERIOD_S = (0.15, 0.4)  # repetition period of the pulsed and swept classes
PITCH_HZ = {  # each class's range of base frequency f0: apart on the mel scale, swept and modulated ranges included
    "tone": (150, 250),
    "noise_bursts": (700, 750),
    "chirp_up": (1200, 1400),
    "chirp_down": (1200, 1400),
    "vibrato": (3300, 3600),
    "tremolo": (4500, 5000),
    "beeps": (5800, 6300),
    "crackle": (7000, 7600),
}


def write_demo_corpus(
    folder: str | Path, clips: int = 320, seed: int = 0, min_s: float = DEMO_SECONDS[0], max_s: float = DEMO_SECONDS[1]
) -> Path:
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
    """One clip of class `label`, peak 0.5, with white background noise at `DEMO_SNR_DB`."""
    if label not in DEMO_CLASSES:
        raise ValueError(f"unknown demo class {label!r}; classes: {DEMO_CLASSES}")
    t = np.arange(int(seconds * DEMO_RATE)) / DEMO_RATE
    f0 = rng.uniform(*PITCH_HZ[label])
    period = rng.uniform(*DEMO_PERIOD_S)
    cycle = (t % period) / period
    if label == "tone":
        signal = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2))
    elif label in ("chirp_up", "chirp_down"):
        ramp = cycle if label == "chirp_up" else 1 - cycle
        signal = np.sin(2 * np.pi * np.cumsum(f0 * 2**ramp) / DEMO_RATE)
    elif label == "beeps":
        signal = np.sin(2 * np.pi * f0 * t) * (cycle < 0.3)
    elif label == "noise_bursts":
        signal = _band_noise(len(t), f0, f0 * 1.5, rng) * (cycle < 0.5)
    elif label == "tremolo":
        signal = np.sin(2 * np.pi * f0 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(6, 12) * t))
    elif label == "vibrato":
        depth, rate = rng.uniform(0.08, 0.15), rng.uniform(4, 8)
        signal = np.sin(2 * np.pi * np.cumsum(f0 * (1 + depth * np.sin(2 * np.pi * rate * t))) / DEMO_RATE)
    elif label == "crackle":
        impulses = (rng.random(len(t)) < rng.uniform(20, 60) / DEMO_RATE).astype(float)
        ring = np.exp(-np.arange(160) / 30) * np.sin(2 * np.pi * f0 * np.arange(160) / DEMO_RATE)
        signal = np.convolve(impulses, ring)[: len(t)]
    signal = np.asarray(signal, dtype=np.float64)
    power = np.mean(signal**2) or 1e-12
    noise = rng.standard_normal(len(t)) * np.sqrt(power / 10 ** (rng.uniform(*DEMO_SNR_DB) / 10))
    mix = signal + noise
    return (0.5 * mix / max(np.abs(mix).max(), 1e-9)).astype(np.float32)


def _band_noise(n: int, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    frequencies = np.fft.rfftfreq(n, 1 / DEMO_RATE)
    spectrum[(frequencies < low) | (frequencies > high)] = 0
    return np.fft.irfft(spectrum, n)
