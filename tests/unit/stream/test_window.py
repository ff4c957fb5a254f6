"""The rolling window: cap, time order, age, idempotence, storage encoding."""

from __future__ import annotations

import random

import pytest

from streamrec.stream.window import (
    MergeStats,
    WindowDecodeError,
    WindowEntry,
    decode_window,
    encode_window,
    merge_window,
    trim_by_age,
)

DAY_MS = 86_400_000


def entry(n: int, ts: int | None = None, item: str | None = None) -> WindowEntry:
    return WindowEntry(f"e{n}", item or f"i{n}", "view", n * 1000 if ts is None else ts)


def merge(current, new, *, max_events=5, max_age_ms=DAY_MS):
    return merge_window(current, new, max_events=max_events, max_age_ms=max_age_ms)


def ids(window) -> list[str]:
    return [e.event_id for e in window]


def test_appends_in_order() -> None:
    window, stats = merge([], [entry(1), entry(2)])
    window, stats = merge(window, [entry(3)])
    assert ids(window) == ["e1", "e2", "e3"]
    assert stats == MergeStats(added=1)
    assert stats.changed


def test_cap_keeps_the_last_n() -> None:
    window: list[WindowEntry] = []
    for n in range(1, 13):
        window, _ = merge(window, [entry(n)])
    assert ids(window) == ["e8", "e9", "e10", "e11", "e12"]
    window, stats = merge(window, [entry(13), entry(14)])
    assert ids(window) == ["e10", "e11", "e12", "e13", "e14"]
    assert stats == MergeStats(added=2, evicted=2)


def test_out_of_order_arrival_lands_in_time_order() -> None:
    window, _ = merge([], [entry(1), entry(5)])
    window, stats = merge(window, [entry(3), entry(2)])
    assert ids(window) == ["e1", "e2", "e3", "e5"]
    assert stats.added == 2
    # An arrival older than everything, with the window full, never gets in.
    full, _ = merge([], [entry(n) for n in range(10, 15)])
    window, stats = merge(full, [entry(4)])
    assert window == full
    assert stats == MergeStats(dropped=1)
    assert not stats.changed


def test_equal_timestamps_break_ties_by_event_id() -> None:
    a, b, c = (WindowEntry(x, "i", "view", 100) for x in ("b", "a", "c"))
    window, _ = merge([], [a, b, c])
    assert ids(window) == ["a", "b", "c"]


def test_replayed_event_never_enters_twice() -> None:
    window, _ = merge([], [entry(1), entry(2)])
    again, stats = merge(window, [entry(2), entry(1)])
    assert again == window
    assert stats == MergeStats(duplicates=2)
    assert not stats.changed
    # Duplicates inside one batch: the first wins.
    window, stats = merge([], [entry(7, item="first"), entry(7, item="second")])
    assert [e.item_id for e in window] == ["first"]
    assert stats == MergeStats(added=1, duplicates=1)
    # The entry already in the window wins over a replay with other content.
    window2, _ = merge(window, [entry(7, item="third")])
    assert window2 == window


def test_age_is_measured_from_the_newest_event() -> None:
    window, _ = merge([], [entry(1, ts=0), entry(2, ts=DAY_MS // 2)], max_events=10)
    window, stats = merge(window, [entry(3, ts=DAY_MS + 1)], max_events=10)
    assert ids(window) == ["e2", "e3"]
    assert stats == MergeStats(added=1, evicted=1)
    # Exactly max_age old is kept.
    window, _ = merge([], [entry(1, ts=0), entry(2, ts=DAY_MS)], max_events=10)
    assert ids(window) == ["e1", "e2"]
    # A late arrival older than the age limit is dropped on arrival.
    window, stats = merge(window, [entry(0, ts=-1)], max_events=10)
    assert ids(window) == ["e1", "e2"] and stats == MergeStats(dropped=1)


def test_zero_age_keeps_only_the_newest_instant() -> None:
    window, _ = merge([], [entry(1, ts=5), entry(2, ts=5), entry(3, ts=4)], max_age_ms=0)
    assert ids(window) == ["e1", "e2"]


def test_bad_bounds() -> None:
    with pytest.raises(ValueError):
        merge([], [], max_events=0)
    with pytest.raises(ValueError):
        merge([], [], max_age_ms=-1)


def _random_batch(rnd: random.Random, pool: list[WindowEntry]) -> list[WindowEntry]:
    # Drawn from a fixed pool: an event_id always carries the same content, as
    # in production, where a replay re-delivers the very same event.
    return [rnd.choice(pool) for _ in range(rnd.randrange(0, 12))]


def _pool(rnd: random.Random, size: int) -> list[WindowEntry]:
    return [WindowEntry(f"e{n}", f"i{rnd.randrange(20)}", "click", rnd.randrange(0, 50) * 1000) for n in range(size)]


def _reference(all_entries: list[WindowEntry], max_events: int, max_age_ms: int) -> list[WindowEntry]:
    """Spec, written the slow obvious way: first occurrence per id, sort, cap, age."""
    first: dict[str, WindowEntry] = {}
    for e in all_entries:
        first.setdefault(e.event_id, e)
    ordered = sorted(first.values(), key=lambda e: (e.ts_ms, e.event_id))[-max_events:]
    if not ordered:
        return []
    cutoff = ordered[-1].ts_ms - max_age_ms
    return [e for e in ordered if e.ts_ms >= cutoff]


def test_properties_over_random_inputs() -> None:
    rnd = random.Random(7)
    for _ in range(400):
        max_events = rnd.randrange(1, 10)
        max_age_ms = rnd.choice([0, 5_000, 20_000, 10**9])
        pool = _pool(rnd, 30)
        window: list[WindowEntry] = []
        history: list[WindowEntry] = []
        for _ in range(rnd.randrange(1, 8)):
            batch = _random_batch(rnd, pool)
            before = window
            window, stats = merge(window, batch, max_events=max_events, max_age_ms=max_age_ms)
            history.extend(batch)

            # Invariants: bounded, ordered, unique, within age.
            assert len(window) <= max_events
            keys = [(e.ts_ms, e.event_id) for e in window]
            assert keys == sorted(keys) and len(set(ids(window))) == len(window)
            if window:
                assert window[0].ts_ms >= window[-1].ts_ms - max_age_ms
            assert stats.added - stats.evicted == len(window) - len(before)

            # Idempotence: merging the same batch again changes nothing.
            again, stats2 = merge(window, batch, max_events=max_events, max_age_ms=max_age_ms)
            assert again == window
            assert not stats2.changed

        # Batching does not matter: the result equals the spec applied to everything seen.
        assert window == _reference(history, max_events, max_age_ms)


def test_arrival_order_does_not_matter() -> None:
    rnd = random.Random(11)
    entries = [entry(n, ts=rnd.randrange(0, 100_000)) for n in range(60)]
    expected = _reference(entries, 8, 30_000)
    for _ in range(50):
        shuffled = entries[:]
        rnd.shuffle(shuffled)
        window: list[WindowEntry] = []
        while shuffled:
            cut = rnd.randrange(1, 6)
            window, _ = merge(window, shuffled[:cut], max_events=8, max_age_ms=30_000)
            shuffled = shuffled[cut:]
        assert window == expected


def test_trim_by_age_uses_the_given_clock() -> None:
    window, _ = merge([], [entry(1, ts=1000), entry(2, ts=5000)])
    assert ids(trim_by_age(window, now_ms=6000, max_age_ms=2000)) == ["e2"]
    assert trim_by_age(window, now_ms=10_000, max_age_ms=1000) == []


def test_encode_decode_round_trip() -> None:
    window = [WindowEntry("e-1", "i-é", "add_to_cart", 1_704_067_200_000), WindowEntry("e\"2", "7", "view", 0)]
    data = encode_window(window)
    assert isinstance(data, bytes)
    assert decode_window(data) == window
    assert decode_window(encode_window([])) == []
    assert decode_window(None) == [] and decode_window(b"") == []


def test_encoding_is_compact() -> None:
    window = [WindowEntry(f"syn-0-{n}", f"i{n}", "view", 1_704_067_200_000 + n) for n in range(50)]
    assert len(encode_window(window)) < 50 * 50


@pytest.mark.parametrize(
    "data", [b"{", b"{}", b"[]", b"[2]", b'[1, ["a", "b"]]', b'[1, ["a","b","c","d"]]', b'[1, "abcd"]']
)
def test_decode_rejects_unknown_formats(data: bytes) -> None:
    with pytest.raises(WindowDecodeError):
        decode_window(data)
