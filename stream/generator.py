"""Deterministic synthetic event stream with a planted, learnable sequential signal.

The world: ``num_items`` items split into interest clusters; within a cluster
the items form one cycle (a "chain"), so every item has a successor. Item
popularity is Zipf-like. Each user holds a few interest clusters, which drift
(one is swapped at a session start with probability ``drift_prob``). Within
a session the next item is, in order of the thresholds:

* the same item again, one step further in the event-type funnel
  (``p_repeat``: view, then add_to_cart, then purchase);
* the chain successor of the previous item (``p_follow``);
* a popular item of the previous item's cluster (``p_same_cluster``);
* otherwise a popular item from one of the user's interest clusters.

A first-order next-item model therefore beats popularity by a wide margin,
and a longer context (the cluster, the user's interests) helps further.
Users are simulated concurrently and the stream is emitted in global time
order, so events of different users interleave as they would in production.
Everything derives from ``seed``; the same config yields the same stream.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

logger = logging.getLogger(__name__)

DEFAULT_EVENT_TYPE_MIX: tuple[tuple[str, float], ...] = (
    ("view", 0.70),
    ("click", 0.20),
    ("add_to_cart", 0.07),
    ("purchase", 0.03),
)


@dataclass(frozen=True, slots=True)
class SyntheticConfig:
    """Shape of the synthetic stream; every field has a sensible default but the sizes."""

    num_users: int = 1_000
    num_items: int = 5_000
    num_events: int = 100_000
    seed: int = 0
    cluster_size: int = 50
    zipf_alpha: float = 0.9
    p_repeat: float = 0.05
    p_follow: float = 0.55
    p_same_cluster: float = 0.25
    interests_per_user: int = 3
    drift_prob: float = 0.15
    mean_session_events: float = 8.0
    mean_event_gap_s: float = 40.0
    mean_session_gap_s: float = 30 * 3600.0
    start_ts_ms: int = 1_704_067_200_000  # 2024-01-01T00:00:00Z; fixed so runs are reproducible
    # Ordered as a funnel: a repeated item moves one step along it.
    event_type_mix: tuple[tuple[str, float], ...] = DEFAULT_EVENT_TYPE_MIX
    with_sessions: bool = True

    def __post_init__(self) -> None:
        if self.num_users < 1 or self.num_items < 2 or self.num_events < 0:
            raise ValueError("need num_users >= 1, num_items >= 2, num_events >= 0")
        if min(self.p_repeat, self.p_follow, self.p_same_cluster) < 0 or (
            self.p_repeat + self.p_follow + self.p_same_cluster > 1
        ):
            raise ValueError("p_repeat, p_follow and p_same_cluster must be >= 0 and sum to <= 1")
        if not self.event_type_mix or any(w < 0 for _, w in self.event_type_mix):
            raise ValueError("event_type_mix needs at least one type and non-negative weights")
        if self.cluster_size < 2 or self.interests_per_user < 1 or self.mean_session_events < 1:
            raise ValueError("need cluster_size >= 2, interests_per_user >= 1, mean_session_events >= 1")


@dataclass(frozen=True, slots=True)
class SyntheticWorld:
    """The planted structure (item indices): clusters, chain successors, popularity."""

    cluster_of: tuple[int, ...]
    successor: tuple[int, ...]
    clusters: tuple[tuple[int, ...], ...]
    popularity: tuple[float, ...]
    _cluster_cum: tuple[tuple[float, ...], ...] = field(repr=False)
    _clusters_by_mass_cum: tuple[float, ...] = field(repr=False)

    def successor_id(self, item_id: str) -> str:
        """The chain successor of an item given by its id (``"i17"``)."""
        return item_key(self.successor[item_index(item_id)])


def user_key(index: int) -> str:
    """Wire id of the user with this index."""
    return f"u{index}"


def item_key(index: int) -> str:
    """Wire id of the item with this index."""
    return f"i{index}"


def item_index(item_id: str) -> int:
    """Index of an item from its wire id."""
    return int(item_id[1:])


def build_world(config: SyntheticConfig) -> SyntheticWorld:
    """The item structure for ``config`` (same seed, same world)."""
    rnd = random.Random(f"world-{config.seed}")
    n = config.num_items
    ranks = list(range(n))
    rnd.shuffle(ranks)  # popularity rank independent of the item index
    popularity = tuple(1.0 / (rank + 1) ** config.zipf_alpha for rank in ranks)

    order = list(range(n))
    rnd.shuffle(order)
    num_clusters = max(1, n // config.cluster_size)
    members: list[list[int]] = [order[c::num_clusters] for c in range(num_clusters)]
    cluster_of = [0] * n
    successor = [0] * n
    for c, items in enumerate(members):
        for pos, item in enumerate(items):
            cluster_of[item] = c
            successor[item] = items[(pos + 1) % len(items)]
    cluster_cum = tuple(tuple(itertools.accumulate(popularity[i] for i in items)) for items in members)
    mass_cum = tuple(itertools.accumulate(cum[-1] for cum in cluster_cum))
    return SyntheticWorld(
        cluster_of=tuple(cluster_of),
        successor=tuple(successor),
        clusters=tuple(tuple(items) for items in members),
        popularity=popularity,
        _cluster_cum=cluster_cum,
        _clusters_by_mass_cum=mass_cum,
    )


def _pick(rnd: random.Random, cum: Sequence[float]) -> int:
    return bisect.bisect_right(cum, rnd.random() * cum[-1], hi=len(cum) - 1)


@dataclass(slots=True)
class _UserState:
    interests: list[int]
    prev_item: int = -1
    prev_type: int = 0
    left_in_session: int = 0
    session_no: int = 0


def generate_events(config: SyntheticConfig) -> Iterator[dict[str, Any]]:
    """Yield ``config.num_events`` events (wire-form dicts) in global time order, lazily.

    Event ids are ``syn-<seed>-<n>``, users ``u<index>``, items ``i<index>``;
    each user's timestamps strictly increase.
    """
    world = build_world(config)
    rnd = random.Random(config.seed)
    type_names = [name for name, _ in config.event_type_mix]
    type_cum = list(itertools.accumulate(w for _, w in config.event_type_mix))
    last_type = len(type_names) - 1
    follow_at = config.p_repeat + config.p_follow
    cluster_at = follow_at + config.p_same_cluster
    session_end_p = 1.0 / config.mean_session_events
    event_gap_ms = config.mean_event_gap_s * 1000.0
    session_gap_ms = config.mean_session_gap_s * 1000.0

    def pick_in_cluster(cluster: int) -> int:
        return world.clusters[cluster][_pick(rnd, world._cluster_cum[cluster])]

    def new_interest() -> int:
        return _pick(rnd, world._clusters_by_mass_cum)

    users = [_UserState([new_interest() for _ in range(config.interests_per_user)]) for _ in range(config.num_users)]
    heap = [(config.start_ts_ms + int(rnd.random() * session_gap_ms), u) for u in range(config.num_users)]
    heapq.heapify(heap)

    for n in range(config.num_events):
        ts_ms, u = heap[0]
        state = users[u]
        if state.left_in_session <= 0:
            state.session_no += 1
            # Geometric session length with the configured mean, at least one event.
            state.left_in_session = 1
            while rnd.random() > session_end_p:
                state.left_in_session += 1
            if rnd.random() < config.drift_prob:
                state.interests[rnd.randrange(len(state.interests))] = new_interest()
            item = pick_in_cluster(rnd.choice(state.interests))
            type_idx = _pick(rnd, type_cum)
        else:
            draw = rnd.random()
            prev = state.prev_item
            if draw < config.p_repeat:
                item, type_idx = prev, min(state.prev_type + 1, last_type)
            else:
                if draw < follow_at:
                    item = world.successor[prev]
                elif draw < cluster_at:
                    item = pick_in_cluster(world.cluster_of[prev])
                else:
                    item = pick_in_cluster(rnd.choice(state.interests))
                type_idx = _pick(rnd, type_cum)
        state.prev_item, state.prev_type = item, type_idx
        state.left_in_session -= 1

        event: dict[str, Any] = {
            "v": 1,
            "event_id": f"syn-{config.seed}-{n}",
            "user_id": user_key(u),
            "item_id": item_key(item),
            "event_type": type_names[type_idx],
            "ts": ts_ms,
        }
        if config.with_sessions:
            event["session_id"] = f"{user_key(u)}-s{state.session_no}"
        yield event

        # Exponential gaps, at least 1 s (events) so per-user time strictly increases.
        if state.left_in_session > 0:
            gap = 1000 + int(rnd.expovariate(1.0) * event_gap_ms)
        else:
            gap = 60_000 + int(rnd.expovariate(1.0) * session_gap_ms)
        heapq.heapreplace(heap, (ts_ms + gap, u))


def write_jsonl(path: str | Path, config: SyntheticConfig) -> int:
    """Write the stream as JSON lines to ``path``; returns the number of events written."""
    count = 0
    with open(path, "wb") as out:
        for event in generate_events(config):
            out.write(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))
            count += 1
    logger.info("wrote %d synthetic events to %s", count, path)
    return count


@dataclass(frozen=True, slots=True)
class ContextWorldConfig:
    """A stream whose next item depends on the event's context (the context view's test and benchmark world).

    Events come in pairs. A *neutral* item ``n<i>`` is viewed on a device
    drawn afresh for the pair (``context.device``); the next item belongs to
    that device's group: ``<device>-<(i + offset) mod group_size>`` with
    probability ``p_aligned``, any item of the group otherwise. The neutral
    item after a group item follows from that item alone, so the item history
    predicts it and only the group targets need the context. A share of
    events (``p_missing``) carries no context at all.
    """

    num_users: int = 400
    pairs_per_user: int = 8
    devices: tuple[str, ...] = ("tv", "phone")
    neutral_items: int = 20
    group_size: int = 10
    p_aligned: float = 0.0
    p_missing: float = 0.0
    seed: int = 0
    start_ms: int = 1_700_000_000_000


def context_item(device: str, index: int) -> str:
    """Item ``index`` of ``device``'s group in the context world."""
    return f"{device}-{index}"


def context_events(config: ContextWorldConfig) -> list[dict[str, Any]]:
    """The context world's events (see :class:`ContextWorldConfig`), per user in time order, users interleaved by time."""
    rnd = random.Random(config.seed)
    events: list[dict[str, Any]] = []
    for u in range(config.num_users):
        ts = config.start_ms + rnd.randrange(60_000)
        neutral = rnd.randrange(config.neutral_items)
        for _ in range(config.pairs_per_user):
            device = config.devices[rnd.randrange(len(config.devices))]
            if rnd.random() < config.p_aligned:
                target = (neutral + config.devices.index(device)) % config.group_size
            else:
                target = rnd.randrange(config.group_size)
            for item in (f"n{neutral}", context_item(device, target)):
                event: dict[str, Any] = {"event_id": f"ctx-{u}-{len(events)}", "user_id": f"cu{u}", "item_id": item,
                                         "event_type": "view", "ts": ts}
                if rnd.random() >= config.p_missing:
                    event["context"] = {"device": device}
                events.append(event)
                ts += 1000 + rnd.randrange(5000)
            # The next neutral item follows from the group item alone (no context needed).
            neutral = (target * 7 + config.devices.index(device) * 3) % config.neutral_items
    events.sort(key=lambda e: (e["ts"], e["event_id"]))
    return events
