"""The evaluation points and what each model sees at one.

Length sweep (the paper's Figure 4), at a cap of L frames:
- ElasticAST crops only clips longer than L; shorter ones are processed as they are, unpadded.
- AST's input size becomes L: every clip is cropped or zero-padded to L frames and its time
  positions are resampled to that grid (its trained size is one point of the sweep).
- The `native` point: ElasticAST on whole clips (up to its `max_frames`), each AST at the
  size it was trained at (the paper's scattered dots).

Resolution sweep (Figure 5), at scale C (frame shift 10*C ms, or `avgpool` of C frames):
every model gets whole clips at C; AST crops or pads them to its trained size.
"""

from __future__ import annotations

from dataclasses import dataclass

from loaders.tokens import COMPRESSIONS, PATCH

SWEEPS = ("length", "scale")


@dataclass(frozen=True)
class Point:
    """One evaluation condition. `max_frames=None` means native: no cap below the models' own."""

    sweep: str
    max_frames: int | None = None
    scale: float = 1.0
    compression: str = "shift"

    @property
    def name(self) -> str:
        if self.sweep == "length":
            return "native" if self.max_frames is None else f"{self.max_frames} frames"
        return f"C={self.scale:g} {self.compression}"

    def cap(self, native_frames: int) -> int:
        """The frames a clip may keep: the point's cap, else the models' own table size."""
        return native_frames if self.max_frames is None else self.max_frames

    def ast_frames(self, target_frames: int) -> int:
        """AST's input size here: the length-sweep cap, else the size it was trained at."""
        return target_frames if self.max_frames is None else self.max_frames


def sweep_points(
    sweeps: tuple[str, ...], lengths: tuple[int, ...], scales: tuple[float, ...], compressions: tuple[str, ...]
) -> list[Point]:
    """The length points (native first, then each cap) and the resolution points (each C per
    compression; avgpool takes whole C only, the others are skipped)."""
    for name, values, allowed in (("sweep", sweeps, SWEEPS), ("compression", compressions, COMPRESSIONS)):
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ValueError(f"unknown {name} {unknown}; choose from {list(allowed)}")
    bad = [length for length in lengths if length < PATCH or length % PATCH]
    if bad:
        raise ValueError(f"lengths {bad} must be positive multiples of {PATCH} frames")
    points = []
    if "length" in sweeps:
        points += [Point("length")] + [Point("length", max_frames=length) for length in sorted(set(lengths))]
    if "scale" in sweeps:
        for compression in compressions:
            kept = [c for c in scales if compression == "shift" or float(c).is_integer()]
            points += [Point("scale", scale=round(float(c), 1), compression=compression) for c in kept]
    return points
