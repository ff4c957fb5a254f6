"""One owner per user, whatever client produced the events and however many partitions the topic has."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AdminClient, NewPartitions

from streamrec.config import Settings
from streamrec.testing.process import ServiceProcess
from tests.integration.helpers import (
    expected_windows,
    metric_total,
    produce,
    synthetic,
    wait_for_assignment,
    wait_for_windows,
)

pytestmark = pytest.mark.integration

# Big enough to hold every event of every user: each one produced is checked in state.
WHOLE = 1000


@pytest.fixture
def settings(isolated: Settings, tmp_path: Path) -> Settings:
    return isolated.with_overrides(window_size=WHOLE, model_dir=tmp_path / "no-models", topic_partitions=4)


def by_user(events: list[dict]) -> list[tuple[bytes, bytes]]:
    return [(str(e["user_id"]).encode(), orjson.dumps(e)) for e in events]


def test_librdkafka_and_java_partitioners_side_by_side_lose_nothing(settings: Settings, tmp_path: Path) -> None:
    """kcat/confluent-kafka hash keys with CRC32, aiokafka/Java with murmur2: a user's events land on two partitions."""
    workers = [ServiceProcess.worker(settings, tmp_path / f"w{i}.log", worker_id=f"w{i}").start() for i in (1, 2)]
    try:
        wait_for_assignment(workers, settings.topic_partitions)
        events = synthetic(1200, 40, seed=41)
        halves = {"murmur2_random": events[0::2], "consistent_random": events[1::2]}
        producers = [threading.Thread(target=produce, args=(settings, by_user(part)), kwargs={"partitioner": name})
                     for name, part in halves.items()]
        for thread in producers:
            thread.start()
        for thread in producers:
            thread.join()

        expected = expected_windows(events, WHOLE)
        actual = wait_for_windows(settings, expected, timeout=120)
        lost = {u: len(set(expected[u]) - set(actual.get(u, []))) for u in expected}
        assert actual == expected, f"events missing from windows, per user: { {u: n for u, n in lost.items() if n} }"
        assert metric_total(workers, "streamrec_events_rerouted_total") > 0
        assert all(w.alive() for w in workers)
    finally:
        for worker in workers:
            worker.kill()


def test_partitions_added_to_a_live_topic_are_consumed_and_users_keep_one_owner(settings: Settings, tmp_path: Path) -> None:
    workers = [ServiceProcess.worker(settings, tmp_path / f"w{i}.log", worker_id=f"w{i}").start() for i in (1, 2)]
    try:
        wait_for_assignment(workers, settings.topic_partitions)
        events = synthetic(1600, 40, seed=43)
        produce(settings, by_user(events[:800]))
        assert wait_for_windows(settings, expected_windows(events[:800], WHOLE), timeout=120) == expected_windows(
            events[:800], WHOLE
        )

        admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
        admin.create_partitions([NewPartitions(settings.events_topic, 8)])[settings.events_topic].result(30)
        added_at = time.monotonic()
        # A fresh producer sees 8 partitions at once and moves most users to new partitions.
        produce(settings, by_user(events[800:]))
        expected = expected_windows(events, WHOLE)
        # aiokafka's default metadata refresh (5 minutes) left these events unconsumed for minutes.
        actual = wait_for_windows(settings, expected, timeout=90)
        assert actual == expected, f"{sum(len(v) for v in expected.values()) - sum(len(v) for v in actual.values())} events not in state"
        print(f"partitions 4 -> 8: every event in state {time.monotonic() - added_at:.1f}s after the change")
        wait_for_assignment(workers, 8)
    finally:
        for worker in workers:
            worker.kill()
