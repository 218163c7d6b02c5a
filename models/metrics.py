"""Multi-label video classification metrics, as the original AttentionLSTM reported them (YouTube-8M style).

All take `probs` [N, C] (any scores; higher is more confident) and `truth` [N, C] (0/1). Pure numpy.
Invariants: ties are broken by position (a stable sort), so results are deterministic; a class with no
positive video has no AP (None) and is left out of the mean, as it is in the original's calculator.
"""

from __future__ import annotations

import numpy as np

GAP_TOP_K = 20  # the original's GAP keeps each video's 20 highest predictions


def average_precision(scores: np.ndarray, positives: np.ndarray, total_positives: int | None = None) -> float | None:
    """Mean over the positives of the precision at their rank (scores descending). `total_positives` counts
    positives that `scores` does not hold (GAP's top-k cut); None when there is no positive at all."""
    total = int(positives.sum()) if total_positives is None else total_positives
    if total == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    hits = positives[order].astype(bool)
    precision_at_hits = np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)
    return float(precision_at_hits.sum() / total)


def hit_at_one(probs: np.ndarray, truth: np.ndarray) -> float:
    """Share of videos whose most probable class is one of theirs."""
    top = np.argmax(probs, axis=1)
    return float(truth[np.arange(len(truth)), top].mean())


def global_average_precision(probs: np.ndarray, truth: np.ndarray, top_k: int = GAP_TOP_K) -> float:
    """AP over every video's top_k predictions pooled together, against all positives of all videos."""
    k = min(top_k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(probs, top, axis=1).ravel()
    hits = np.take_along_axis(truth, top, axis=1).ravel()
    ap = average_precision(scores, hits, int(truth.sum()))
    return 0.0 if ap is None else ap  # no positive anywhere: nothing was found


def per_class_ap(probs: np.ndarray, truth: np.ndarray) -> list[float | None]:
    return [average_precision(probs[:, c], truth[:, c]) for c in range(probs.shape[1])]


def evaluate(probs: np.ndarray, truth: np.ndarray, labels: list[str]) -> dict[str, object]:
    """GAP, Hit@1, mAP and each class's AP (None for a class without a positive video)."""
    aps = per_class_ap(probs, truth)
    present = [ap for ap in aps if ap is not None]
    return {
        "videos": len(probs),
        "gap": global_average_precision(probs, truth),
        "hit_at_1": hit_at_one(probs, truth),
        "map": float(np.mean(present)) if present else None,
        "per_class_ap": dict(zip(labels, aps, strict=True)),
    }
