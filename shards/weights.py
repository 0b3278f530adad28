"""Class-balance weights of a split's samples, the rule of AST's and the paper's balanced sampler.

    weight(clip) = sum over the clip's labels of 1000 / (count(label) + 0.01)

where count(label) is the number of the split's clips carrying the label. A clip of rare labels
is drawn more often (`--sampling balanced`, `loaders.balance`); a multi-label clip adds up its
labels' weights. A manifest's `weight` column overrides the rule sample by sample.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

BALANCE_NUMERATOR, BALANCE_EPSILON = 1000.0, 0.01


def class_balance_weights(labels: Sequence[Sequence[str]]) -> list[float]:
    """The weight of each clip, given every clip's labels (all of the split's clips)."""
    counts = Counter(label for clip in labels for label in clip)
    return [sum(BALANCE_NUMERATOR / (counts[label] + BALANCE_EPSILON) for label in clip) for clip in labels]
