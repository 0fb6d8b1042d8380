"""The score histogram a model card carries and the drift monitor compares against.

Training stores the validation scores' histogram as ``card.metrics["val_score_histogram"]``;
:mod:`dicomnode.ops.drift` bins the scores it sees in the field the same way and compares the two
(PSI). One definition of the bins keeps both sides comparable.
"""

from __future__ import annotations

import numpy as np

#: Bin edges of the score histogram: ten bins of width 0.1 over [0, 1].
SCORE_BIN_EDGES: tuple[float, ...] = tuple(round(i / 10, 1) for i in range(11))


def score_histogram(scores: np.ndarray) -> dict[str, list[float] | list[int]]:
    """Scores in the ten :data:`SCORE_BIN_EDGES` bins: ``{"edges", "counts", "fractions"}``.

    >>> score_histogram(np.array([0.05, 0.95, 0.97]))["counts"]
    [1, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("no scores to histogram")
    counts, _ = np.histogram(np.clip(s, 0.0, 1.0), bins=np.asarray(SCORE_BIN_EDGES))
    return {
        "edges": list(SCORE_BIN_EDGES),
        "counts": [int(c) for c in counts],
        "fractions": [float(c) / s.size for c in counts],
    }


__all__ = ["SCORE_BIN_EDGES", "score_histogram"]
