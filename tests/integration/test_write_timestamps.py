"""Returning users and operator deletes against the real Cassandra: the next write is stored.

Cassandra keeps an expired or deleted cell's write timestamp and silently
hides a later write with a smaller ``USING TIMESTAMP``. These tests run the
worker's batch processor in-process on the real store (a fresh processor is a
restarted worker: no cached windows) and read the result back with a plain
driver session.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from streamrec.config import Settings
from streamrec.stream.processor import BatchProcessor, SourceRecord
from streamrec.stream.state.cassandra import CassandraStore, connect
from tests.integration.helpers import read_windows, wait_until

pytestmark = pytest.mark.integration

SHORT_AGE_S = 4.0


class DiscardingSink:
    """Kafka output is not what these tests are about; deliveries complete at once."""

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def records(user: str, first: int, count: int) -> list[SourceRecord]:
    now_ms = int(time.time() * 1000)
    out = []
    for n in range(first, first + count):
        event = {"event_id": f"{user}-e{n}", "user_id": user, "item_id": f"i{n}", "event_type": "view", "ts": now_ms + n}
        out.append(SourceRecord("events", 0, n, user.encode(), orjson.dumps(event)))
    return out


async def process_once(settings: Settings, batch: list[SourceRecord]) -> None:
    """One batch through a fresh processor (a restarted worker) on the real store."""
    store = CassandraStore.open(settings)
    try:
        await BatchProcessor(settings, store, DiscardingSink()).process(batch)
    finally:
        await store.close()


@pytest.fixture
def settings(isolated: Settings, tmp_path: Path) -> Settings:
    # A four-second window age: the TTL of a stored window is the same four seconds.
    return isolated.with_overrides(window_size=100, window_max_age_days=SHORT_AGE_S / 86_400, model_dir=tmp_path / "none")


def test_a_returning_user_after_expiry_gets_a_stored_window(settings: Settings) -> None:
    asyncio.run(process_once(settings, records("u1", 0, 25)))
    assert len(read_windows(settings, ["u1"])["u1"]) == 25
    wait_until(lambda: read_windows(settings, ["u1"])["u1"] == [], SHORT_AGE_S + 30, "the window expired")
    # The return is written with a day's TTL, so the read below cannot race the new window's
    # own expiry (seen once: closing the store and reconnecting took longer than a short TTL);
    # what is tested is the write timestamp against the expired copy's, not the TTL.
    asyncio.run(process_once(settings.with_overrides(window_max_age_days=1.0), records("u1", 100, 3)))
    window = read_windows(settings, ["u1"])["u1"]
    assert [e.event_id for e in window] == ["u1-e100", "u1-e101", "u1-e102"], "the returning user's window was not stored"


def test_events_after_an_operator_delete_are_stored(settings: Settings) -> None:
    settings = settings.with_overrides(window_max_age_days=1.0)
    asyncio.run(process_once(settings, records("u2", 0, 5)))
    cluster, session = connect(settings)
    try:
        session.execute(f"DELETE FROM {settings.cassandra_keyspace}.windows WHERE user_id = 'u2'")
        session.execute(f"DELETE FROM {settings.cassandra_keyspace}.user_state WHERE user_id = 'u2'")
    finally:
        cluster.shutdown()
    asyncio.run(process_once(settings, records("u2", 10, 2)))
    assert [e.event_id for e in read_windows(settings, ["u2"])["u2"]] == ["u2-e10", "u2-e11"]
