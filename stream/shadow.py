"""The shadow model: scored beside the live one on the same batches, never served.

``streamrec model shadow VERSION`` writes the registry's ``SHADOW`` pointer;
each worker loads that version into a second :class:`ModelHolder` (the same
safe path as the live model: verified, warmed in the background, a refusal
logged and counted, never a crash) and, for a deterministic sample of users
(a hash of the user id under the fraction, so the same users stay in the
sample across batches, workers and restarts), encodes them with the shadow
too. The shadow's top-K is kept per user, like the live one's, and scored
against the user's next event together with the live model's and the
popularity baseline's previous lists — the same events for all three. Its
recommendations go nowhere else: they are never emitted nor stored.

The shadow's encode cost is paid for sampled users only; any failure of the
shadow (a broken graph, a bug here) is logged and counted, and the batch is
served exactly as without a shadow.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from streamrec.onnx.registry import ShadowPointer
from streamrec.stream.events import Event
from streamrec.stream.metrics import WorkerMetrics
from streamrec.stream.model_holder import ModelHolder, Recommender
from streamrec.stream.online_figures import OnlineTally, Role
from streamrec.stream.online import LastShown, OnlineScores, score_previous
from streamrec.stream.window import user_sequence
from streamrec.stream.state.base import StoredWindow

log = logging.getLogger(__name__)

_HASH_SPACE = 2**64


def in_sample(user_id: str, fraction: float) -> bool:
    """Whether ``user_id`` is among the shadowed users: stable for a user, ``fraction`` of users overall."""
    if fraction >= 1.0:
        return True
    digest = hashlib.blake2b(user_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * _HASH_SPACE


@dataclass(frozen=True)
class ActiveShadow:
    """The shadow model to score this batch with, and its user fraction."""

    model: Recommender
    fraction: float


class ShadowSlot:
    """The worker's second model slot: follows the registry's SHADOW pointer."""

    def __init__(self, holder: ModelHolder) -> None:
        self.holder = holder
        self.pointer: ShadowPointer | None = None

    def follow(self, pointer: ShadowPointer | None, path: Path | None) -> None:
        """Load the pointed-at version (in the background), or drop the shadow when there is none."""
        if pointer is None or path is None:
            if self.pointer is not None or self.holder.current is not None:
                log.info("no shadow model any more (was version %s)", self.pointer.version if self.pointer else "?")
                self.holder.clear()
            self.pointer = None
            return
        if self.pointer != pointer:
            log.info("shadow model: version %d on %g of users", pointer.version, pointer.fraction)
        self.pointer = pointer
        if self.holder.wants(path):
            self.holder.request(path)

    def active(self) -> ActiveShadow | None:
        """The shadow to score with, once the pointed-at version is loaded (never a stale one)."""
        pointer, model = self.pointer, self.holder.current
        if pointer is None or model is None or int(getattr(model, "version", 0)) != pointer.version:
            return None
        return ActiveShadow(model, pointer.fraction)


class ShadowScorer:
    """The processor's shadow hook: scores and encodes the sampled users of each batch."""

    def __init__(
        self, slot: ShadowSlot, tally: OnlineTally, metrics: WorkerMetrics, *, top_k: int, exclude_seen: bool,
        capacity: int,
    ) -> None:
        self.slot = slot
        self.tally = tally
        self.metrics = metrics
        self._top_k = top_k
        self._exclude_seen = exclude_seen
        self._capacity = capacity
        self._version = 0
        self.previous: OrderedDict[str, list[str]] = OrderedDict()  # the shadow's last top-K per sampled user
        self.error: str | None = None

    def clear(self) -> None:
        """Rebalance: the users' partitions may have moved (the processor drops its live lists too)."""
        self.previous.clear()

    def context_keys(self) -> tuple[str, ...]:
        """The event context keys the shadow model reads (windows keep them for it too)."""
        active = self.slot.active()
        return active.model.context_keys if active is not None else ()

    def forget_user(self, user_id: str) -> None:
        """The user asked to be forgotten: drop the shadow's last list for them."""
        self.previous.pop(user_id, None)

    def record_live(self, version: int, scores: OnlineScores) -> None:
        """The serving version's online figures of a batch (all users), for `model list`."""
        self.tally.add(version, Role.LIVE, scores.evaluated, scores.hits, scores.ndcg)
        self.tally.add(version, Role.POPULARITY, scores.evaluated, scores.baseline_hits, scores.baseline_ndcg)

    def score_batch(
        self, users: Sequence[str], by_user: dict[str, list[Event]], windows: dict[str, StoredWindow],
        live_shown: LastShown,
    ) -> None:
        """Score the sampled users' previous shadow lists, then encode them with the shadow. Never raises."""
        try:
            self._score_batch(users, by_user, windows, live_shown)
        except Exception as exc:  # noqa: BLE001 - the shadow must never hurt serving
            self._failed(len(users), exc)

    def _score_batch(
        self, users: Sequence[str], by_user: dict[str, list[Event]], windows: dict[str, StoredWindow],
        live_shown: LastShown,
    ) -> None:
        active = self.slot.active()
        if active is None:
            if self._version:
                self.previous.clear()
                self._version = 0
                self.metrics.shadow_version.set(0)
            return
        version = int(active.model.version)
        if version != self._version:
            # Lists of another shadow version must not be scored as this one's.
            self.previous.clear()
            self._version = version
            self.metrics.shadow_version.set(version)
        sample = [u for u in users if in_sample(u, active.fraction)]
        if not sample:
            return
        self._score_previous(version, sample, by_user, live_shown)
        self._encode(active.model, sample, windows)

    def _score_previous(
        self, version: int, sample: list[str], by_user: dict[str, list[Event]],
        live_shown: LastShown,
    ) -> None:
        totals = {role: OnlineScores() for role in (Role.SHADOW, Role.SHADOW_LIVE, Role.SHADOW_POPULARITY)}
        for user_id in sample:
            mine, theirs = self.previous.get(user_id), live_shown.get(user_id)
            if mine is None or theirs is None:
                continue  # only events all three were asked about count
            next_item = by_user[user_id][0].item_id
            for role, items in ((Role.SHADOW, mine), (Role.SHADOW_LIVE, theirs.items), (Role.SHADOW_POPULARITY, theirs.baseline)):
                hit, _, ndcg = score_previous(items, next_item)
                totals[role].add(hit, ndcg, False, 0.0)
        for role, scores in totals.items():
            if not scores.evaluated:
                continue
            label = {Role.SHADOW: "shadow", Role.SHADOW_LIVE: "live", Role.SHADOW_POPULARITY: "popularity"}[role]
            self.metrics.shadow_evaluated.labels(label).inc(scores.evaluated)
            self.metrics.shadow_hits.labels(label).inc(scores.hits)
            self.metrics.shadow_ndcg.labels(label).inc(scores.ndcg)
            self.tally.add(version, role, scores.evaluated, scores.hits, scores.ndcg)

    def _encode(self, model: Recommender, sample: list[str], windows: dict[str, StoredWindow]) -> None:
        sequences = [user_sequence(windows[u].entries) for u in sample]
        t0 = time.perf_counter()
        try:
            results = model.recommend(sequences, k=self._top_k, exclude_seen=self._exclude_seen)
        except Exception as exc:  # noqa: BLE001 - a failing shadow is reported, serving goes on
            for user_id in sample:  # their lists would be a batch old: not the same events as live's
                self.previous.pop(user_id, None)
            self._failed(len(sample), exc)
            return
        self.metrics.shadow_encoder_latency.observe(time.perf_counter() - t0)
        self.metrics.shadow_users.inc(len(sample))
        self.error = None
        for user_id, result in zip(sample, results):
            self.previous[user_id] = list(result.item_ids)
            self.previous.move_to_end(user_id)
        while len(self.previous) > self._capacity:
            self.previous.popitem(last=False)

    def _failed(self, users: int, exc: BaseException) -> None:
        self.metrics.shadow_failures.inc()
        self.error = f"{type(exc).__name__}: {exc}"
        log.error("shadow model version %s failed on a batch of %d users (%s); serving is unaffected",
                  self._version, users, self.error)
