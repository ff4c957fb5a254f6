"""The synthetic stream: deterministic, lazy, valid, and with a real sequential signal."""

from __future__ import annotations

import itertools
import types
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest

from streamrec.stream.events import Event, ValidationRules, parse_event
from streamrec.stream.generator import (
    SyntheticConfig,
    build_world,
    generate_events,
    item_index,
    write_jsonl,
)

SMALL = SyntheticConfig(num_users=50, num_items=300, num_events=3000, seed=3)


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    first = list(generate_events(SMALL))
    assert first == list(generate_events(SMALL))
    other = list(generate_events(SyntheticConfig(num_users=50, num_items=300, num_events=3000, seed=4)))
    assert [e["item_id"] for e in first] != [e["item_id"] for e in other]
    assert not {e["event_id"] for e in first} & {e["event_id"] for e in other}


def test_exact_size_and_laziness() -> None:
    assert sum(1 for _ in generate_events(SMALL)) == 3000
    assert list(generate_events(SyntheticConfig(num_events=0, num_users=3, num_items=10))) == []
    huge = generate_events(SyntheticConfig(num_users=100, num_items=1000, num_events=10**12))
    assert isinstance(huge, types.GeneratorType)
    assert len(list(itertools.islice(huge, 100))) == 100


def test_events_are_valid_unique_and_time_ordered() -> None:
    rules = ValidationRules(now_ms=lambda: 2_000_000_000_000)
    events = list(generate_events(SMALL))
    assert len({e["event_id"] for e in events}) == len(events)
    last_ts: dict[str, int] = {}
    for raw in events:
        event = parse_event(orjson.dumps(raw), rules=rules)
        assert isinstance(event, Event), event
        assert event.ts_ms > last_ts.get(event.user_id, -1)
        last_ts[event.user_id] = event.ts_ms
    # Globally time ordered, users interleaved.
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    assert len({e["user_id"] for e in events[:200]}) > 10
    assert len(last_ts) == 50


def test_event_type_mix_and_popularity_skew() -> None:
    events = list(generate_events(SyntheticConfig(num_users=100, num_items=1000, num_events=20_000, seed=5)))
    types_ = Counter(e["event_type"] for e in events)
    assert types_["view"] > types_["click"] > types_["add_to_cart"] > types_["purchase"] > 0
    counts = sorted(Counter(e["item_id"] for e in events).values(), reverse=True)
    top_share = sum(counts[:50]) / len(events)  # 5% of the items
    assert top_share > 0.15


def test_custom_event_types_and_no_sessions() -> None:
    config = SyntheticConfig(
        num_users=5, num_items=50, num_events=200, event_type_mix=(("play", 1.0), ("skip", 1.0)), with_sessions=False
    )
    events = list(generate_events(config))
    assert {e["event_type"] for e in events} <= {"play", "skip"}
    assert all("session_id" not in e for e in events)


def test_invalid_config() -> None:
    with pytest.raises(ValueError):
        SyntheticConfig(p_follow=0.9, p_same_cluster=0.3)
    with pytest.raises(ValueError):
        SyntheticConfig(num_items=1)


def _hit_rates(events: list[dict], train_share: float = 0.8, k: int = 10) -> tuple[float, float]:
    """HR@k on the held-out tail of a first-order Markov model vs. global popularity."""
    cut = int(len(events) * train_share)
    transitions: dict[str, Counter] = defaultdict(Counter)
    popularity: Counter = Counter()
    last: dict[str, str] = {}
    for e in events[:cut]:
        prev = last.get(e["user_id"])
        if prev is not None:
            transitions[prev][e["item_id"]] += 1
        popularity[e["item_id"]] += 1
        last[e["user_id"]] = e["item_id"]
    top = [item for item, _ in popularity.most_common(k)]
    markov_hits = pop_hits = total = 0
    for e in events[cut:]:
        prev = last.get(e["user_id"])
        if prev is not None:
            ranked = [item for item, _ in transitions[prev].most_common(k)]
            ranked += [item for item in top if item not in ranked][: k - len(ranked)]
            markov_hits += e["item_id"] in ranked
            pop_hits += e["item_id"] in top
            total += 1
        last[e["user_id"]] = e["item_id"]
    return markov_hits / total, pop_hits / total


def test_sequential_signal_beats_popularity_by_a_wide_margin() -> None:
    events = list(generate_events(SyntheticConfig(num_users=200, num_items=1000, num_events=40_000, seed=11)))
    markov, popularity = _hit_rates(events)
    assert markov > 0.5
    assert markov > 3 * popularity
    assert markov - popularity > 0.3


def test_successor_is_the_planted_structure() -> None:
    config = SyntheticConfig(num_users=100, num_items=500, num_events=10_000, seed=2)
    world = build_world(config)
    events = list(generate_events(config))
    last: dict[str, str] = {}
    follows = steps = 0
    for e in events:
        prev = last.get(e["user_id"])
        if prev is not None:
            steps += 1
            follows += e["item_id"] == world.successor_id(prev)
        last[e["user_id"]] = e["item_id"]
    # p_follow within sessions, diluted by session starts.
    assert follows / steps > 0.35
    assert all(world.cluster_of[world.successor[i]] == world.cluster_of[i] for i in range(500))


def test_interests_drift() -> None:
    """With drift, a user's clusters late in the stream differ more from the early ones."""

    def overlap(drift: float) -> float:
        config = SyntheticConfig(num_users=60, num_items=1000, num_events=30_000, seed=8, drift_prob=drift)
        world = build_world(config)
        events = list(generate_events(config))
        half = len(events) // 2
        early: dict[str, set[int]] = defaultdict(set)
        late: dict[str, set[int]] = defaultdict(set)
        for n, e in enumerate(events):
            (early if n < half else late)[e["user_id"]].add(world.cluster_of[item_index(e["item_id"])])
        users = early.keys() & late.keys()
        return sum(len(early[u] & late[u]) / len(late[u]) for u in users) / len(users)

    assert overlap(0.5) < overlap(0.0) - 0.1


def test_write_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    assert write_jsonl(path, SMALL) == 3000
    lines = path.read_bytes().splitlines()
    assert len(lines) == 3000
    assert [orjson.loads(line) for line in lines[:5]] == list(itertools.islice(generate_events(SMALL), 5))
