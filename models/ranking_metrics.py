"""Full-ranking metrics for next-item prediction with one target per case.

With one relevant item, Recall@K equals HR@K and NDCG@K is
``1 / log2(rank + 1)`` when the target ranks within K, else 0.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

DEFAULT_KS = (10, 20)


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each row's target among all columns (ties in its favour).

    A target whose score is ``-inf`` (excluded, unknown to the model) or a
    negative target index gets rank ``inf``: a miss at every cutoff.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    ranks = np.full(targets.shape[0], np.inf)
    valid = targets >= 0
    rows = np.nonzero(valid)[0]
    if rows.size:
        target_scores = scores[rows, targets[rows]]
        better = (scores[rows] > target_scores[:, None]).sum(axis=1)
        ranks[rows] = np.where(np.isfinite(target_scores), better + 1, np.inf)
    return ranks


def metrics_from_ranks(ranks: Sequence[float] | np.ndarray, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Recall@K, NDCG@K for each K, and MRR (over the full ranking), averaged over cases."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.size == 0:
        raise ValueError("no cases to score")
    out: dict[str, float] = {}
    for k in ks:
        hit = r <= k
        out[f"recall@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(np.where(hit, r, 1.0) + 1.0), 0.0).mean())
    out["mrr"] = float(np.where(np.isfinite(r), 1.0 / r, 0.0).mean())
    out["n_cases"] = float(r.size)
    return out


def mean_std(runs: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Per-metric mean and sample standard deviation over runs (e.g. seeds)."""
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        values = [float(r[key]) for r in runs]
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        out[key] = {"mean": mean, "std": math.sqrt(var)}
    return out
