"""Online evaluation: each user's previous recommendation scored against their next event, beside a popularity baseline.

:class:`PopularityModel` is both the no-model fallback and the baseline every
recommendation is compared with; :class:`OnlineScores` sums a batch's hits and
NDCG@10 so the metrics are published once per batch; :class:`LastShown` keeps
what each user was last shown, and scores it when their next event arrives.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Sequence

from streamrec.stream.metrics import WorkerMetrics
from streamrec.stream.recommendation import OnlineEval

ONLINE_K = 10


def _by_count_then_id(entry: tuple[str, int]) -> tuple[int, str]:
    # Ties broken by item id: the same top on every worker and after every restart.
    return entry[1], entry[0]


class PopularityModel:
    """Running item counts: the no-model fallback and the online-evaluation baseline.

    ``top`` costs O(n + items seen since the last call), not O(catalogue):
    counts only grow, so only the previous top and the items observed since
    can be in the new top. Memory is bounded: past ``max_items`` distinct
    items the rarer half is forgotten.
    """

    def __init__(self, max_items: int = 500_000) -> None:
        self.counts: Counter[str] = Counter()
        self._max_items = max_items
        self._top: list[tuple[str, int]] = []
        self._depth = 0  # how many entries _top holds
        self._touched: set[str] = set()

    def top(self, n: int) -> list[tuple[str, int]]:
        if n > self._depth:
            self._depth = n
            self._top = heapq.nlargest(n, self.counts.items(), key=_by_count_then_id)
        elif self._touched:
            candidates = {item for item, _ in self._top} | self._touched
            self._top = heapq.nlargest(self._depth, ((i, self.counts[i]) for i in candidates), key=_by_count_then_id)
        self._touched.clear()
        return self._top[:n]

    def observe(self, item_id: str) -> None:
        self.counts[item_id] += 1
        self._touched.add(item_id)
        if len(self.counts) > self._max_items:
            self.counts = Counter(dict(self.counts.most_common(self._max_items // 2)))
            self._depth = 0  # recompute in full next time


@dataclass
class OnlineScores:
    """A batch's online-evaluation sums, published to the metrics once per batch (not six calls per user)."""

    evaluated: int = 0
    hits: int = 0
    ndcg: float = 0.0
    baseline_hits: int = 0
    baseline_ndcg: float = 0.0

    def add(self, hit: bool, ndcg: float, baseline_hit: bool, baseline_ndcg: float) -> None:
        self.evaluated += 1
        self.hits += int(hit)
        self.ndcg += ndcg
        self.baseline_hits += int(baseline_hit)
        self.baseline_ndcg += baseline_ndcg

    def publish(self, metrics: WorkerMetrics) -> None:
        if not self.evaluated:
            return
        for model, hits, ndcg in (("encoder", self.hits, self.ndcg), ("popularity", self.baseline_hits, self.baseline_ndcg)):
            metrics.online_evaluated.labels(model).inc(self.evaluated)
            metrics.online_hits.labels(model).inc(hits)
            metrics.online_ndcg.labels(model).inc(ndcg)


def score_previous(previous: Sequence[str], next_item: str, k: int = ONLINE_K) -> tuple[bool, int | None, float]:
    """Hit, 1-based rank and NDCG@k of ``next_item`` in a previous top-k list."""
    try:
        rank = list(previous[:k]).index(next_item) + 1
    except ValueError:
        return False, None, 0.0
    return True, rank, 1.0 / math.log2(rank + 1)


@dataclass(frozen=True, slots=True)
class Shown:
    """What a user was last shown: the served top-K, the popularity baseline's, and the event they answered."""

    items: list[str]
    baseline: list[str]
    event_id: str


class LastShown:
    """Each user's last recommendation, bounded (least recently served out first), to score against their next event.

    Worker-local: it is cleared on a rebalance (the user may have moved to
    another worker) and when the user is forgotten.
    """

    def __init__(self, capacity: int) -> None:
        self._by_user: OrderedDict[str, Shown] = OrderedDict()
        self._capacity = capacity

    def get(self, user_id: str) -> Shown | None:
        return self._by_user.get(user_id)

    def remember(self, user_id: str, shown: Shown) -> None:
        self._by_user[user_id] = shown
        self._by_user.move_to_end(user_id)
        while len(self._by_user) > self._capacity:
            self._by_user.popitem(last=False)

    def forget(self, user_id: str) -> None:
        self._by_user.pop(user_id, None)

    def clear(self) -> None:
        self._by_user.clear()

    def __len__(self) -> int:
        return len(self._by_user)

    def score_next(self, user_id: str, next_item: str, scores: OnlineScores) -> OnlineEval | None:
        """Score what ``user_id`` was last shown (and the baseline) against ``next_item``; None for a first event."""
        shown = self._by_user.get(user_id)
        if shown is None:
            return None
        hit, rank, ndcg = score_previous(shown.items, next_item)
        base_hit, _, base_ndcg = score_previous(shown.baseline, next_item)
        scores.add(hit, ndcg, base_hit, base_ndcg)
        return OnlineEval(k=ONLINE_K, hit=hit, rank=rank, ndcg=ndcg, previous_event_id=shown.event_id)
