"""Ranking metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamrec.models.ranking_metrics import mean_std, metrics_from_ranks, target_ranks


def test_target_ranks_counts_strictly_better_items():
    scores = np.array([
        [0.1, 0.9, 0.5, 0.3],   # target col 2 -> one better (0.9) -> rank 2
        [0.4, 0.4, 0.4, 0.1],   # ties count in the target's favour -> rank 1
        [0.0, -np.inf, 1.0, 2.0],  # target excluded (-inf) -> miss
    ])
    ranks = target_ranks(scores, np.array([2, 0, 1]))
    assert ranks[0] == 2 and ranks[1] == 1 and math.isinf(ranks[2])


def test_unknown_target_is_a_miss():
    ranks = target_ranks(np.zeros((1, 3)), np.array([-1]))
    assert math.isinf(ranks[0])


def test_metrics_hand_computed():
    ranks = [1, 3, 15, 25, np.inf]
    m = metrics_from_ranks(ranks, ks=(10, 20))
    assert m["recall@10"] == pytest.approx(2 / 5)
    assert m["recall@20"] == pytest.approx(3 / 5)
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(2) + 1 / math.log2(4)) / 5)
    assert m["ndcg@20"] == pytest.approx((1 + 0.5 + 1 / math.log2(16)) / 5)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 15 + 1 / 25) / 5)
    assert m["n_cases"] == 5


def test_metrics_need_cases():
    with pytest.raises(ValueError):
        metrics_from_ranks([])


def test_mean_std_over_seeds():
    out = mean_std([{"ndcg@10": 0.1}, {"ndcg@10": 0.2}, {"ndcg@10": 0.3}])
    assert out["ndcg@10"]["mean"] == pytest.approx(0.2)
    assert out["ndcg@10"]["std"] == pytest.approx(0.1)
