"""Ingestion and windows against the real Kafka and Cassandra, with real worker processes."""

from __future__ import annotations

import random
import time
from pathlib import Path

import orjson
import pytest

from streamrec.config import Settings
from streamrec.deploy import infra as local
from streamrec.stream.events import DeadLetter
from streamrec.testing.process import ServiceProcess
from tests.corpus import BAD_RECORDS
from tests.integration.helpers import (
    WINDOW,
    audit_commits,
    committed_lag,
    committed_offsets,
    events_as_records,
    expected_windows,
    fault_report,
    metric_total,
    paced_producer,
    produce,
    read_topic,
    synthetic,
    wait_for_metric,
    wait_for_windows,
    wait_until,
)

pytestmark = pytest.mark.integration

WHOLE = 1000
SAVES = "streamrec_cassandra_seconds_count{op=save}"  # batches' saves finished (the histogram's count)  # a window larger than any user's events in these tests: every event is checked


@pytest.fixture
def settings(isolated: Settings, tmp_path: Path) -> Settings:
    return isolated.with_overrides(window_size=WINDOW, model_dir=tmp_path / "no-models", topic_partitions=4)



def late_arrivals(events: list[dict], fraction: float, seed: int = 1) -> list[dict]:
    """Move a fraction of events to the end of the stream: they arrive out of time order."""
    rnd = random.Random(seed)
    late = set(rnd.sample(range(len(events)), int(len(events) * fraction)))
    return [e for i, e in enumerate(events) if i not in late] + [events[i] for i in sorted(late)]


def test_windows_hold_last_n_in_time_order_and_replay_changes_nothing(settings: Settings, tmp_path: Path) -> None:
    events = synthetic(3000, 200)
    worker = ServiceProcess.worker(settings, tmp_path / "worker.log").start()
    try:
        produce(settings, events_as_records(late_arrivals(events, 0.1)))
        expected = expected_windows(events, WINDOW)
        assert any(len(v) == WINDOW for v in expected.values()), "the stream must exercise the cap"
        actual = wait_for_windows(settings, expected)
        assert actual == expected, f"windows differ for {sum(actual.get(u) != w for u, w in expected.items())} users"

        # Replaying the same events (as after a crash) changes no window.
        produce(settings, events_as_records(events))
        wait_until(lambda: committed_lag(settings) == 0, 60, "the replay consumed and committed")
        assert wait_for_windows(settings, expected, timeout=10) == expected
        assert "streamrec_events_total 6000.0" in worker.metrics()
        assert worker.alive()
    finally:
        worker.kill()


def test_bad_records_are_dead_lettered_and_valid_ones_stored(settings: Settings, tmp_path: Path) -> None:
    valid = synthetic(600, 50, seed=3)
    records: list[tuple[bytes | None, bytes | None]] = []
    bad_iter = iter(BAD_RECORDS)
    for i, record in enumerate(events_as_records(valid)):
        records.append(record)
        if i % 10 == 0:
            bad = next(bad_iter, None)
            if bad is not None:
                records.append((b"some-key", bad[0]))
    records.extend((b"some-key", raw) for raw, _ in bad_iter)
    worker = ServiceProcess.worker(settings, tmp_path / "worker.log").start()
    try:
        produce(settings, records)
        expected = expected_windows(valid, WINDOW)
        assert wait_for_windows(settings, expected) == expected
        letters = [DeadLetter.from_json(v) for _, v in read_topic(settings, settings.dlq_topic, min_messages=len(BAD_RECORDS))]
        assert sorted((dl.payload, dl.reason) for dl in letters) == sorted((dl_payload_cap(raw), reason) for raw, reason in BAD_RECORDS)
        assert all(dl.source_topic == settings.events_topic and dl.source_offset is not None for dl in letters)
        assert worker.alive() and worker.health().get("kafka")
        metrics = worker.metrics()
        assert f"streamrec_events_total {float(len(valid))}" in metrics
    finally:
        worker.kill()


def dl_payload_cap(raw: bytes) -> bytes:
    """The dead letter keeps the original bytes up to its size cap (256 KiB)."""
    return raw[: 256 * 1024]


def test_events_keyed_otherwise_are_repartitioned_by_user(settings: Settings, tmp_path: Path) -> None:
    events = synthetic(400, 30, seed=5)
    # No key, or a key that is not the user: a producer that did not follow the contract.
    records = [(None if i % 2 else b"wrong-key", orjson.dumps(e)) for i, e in enumerate(events)]
    worker = ServiceProcess.worker(settings, tmp_path / "worker.log").start()
    try:
        produce(settings, records)
        expected = expected_windows(events, WINDOW)
        assert wait_for_windows(settings, expected) == expected
        assert "streamrec_events_repartitioned_total 400.0" in worker.metrics()
    finally:
        worker.kill()


def test_worker_sigkill_mid_stream_loses_and_duplicates_nothing(settings: Settings, tmp_path: Path) -> None:
    settings = settings.with_overrides(window_size=WHOLE)  # every event of every user is checked in state
    events = synthetic(6000, 300, seed=11)
    # The killed worker commits rarely, so the kill surely lands on stored but uncommitted work;
    # that work must be consumed again (replayed) and merged without doubling.
    rarely = settings.with_overrides(kafka_commit_interval_s=60.0)
    worker = ServiceProcess.worker(rarely, tmp_path / "worker1.log", worker_id="w1").start()
    producing = paced_producer(settings, events, per_second=1000)
    # Mid-stream: batches stored (none committed: the interval is a minute) and more arriving.
    wait_for_metric([worker], SAVES, 3)
    worker.kill()
    audit = audit_commits(settings, {e["user_id"] for e in events})
    assert not audit.committed_not_stored, f"{len(audit.committed_not_stored)} events committed before they were stored"
    committed_at_kill = audit.committed
    stored_not_committed = audit.stored_not_committed
    assert stored_not_committed, "the kill must land on work that was stored but not committed"
    producing.join()
    restarted = ServiceProcess.worker(settings, tmp_path / "worker2.log", worker_id="w2").start()
    try:
        restarted_at = time.monotonic()
        expected = expected_windows(events, WHOLE)
        actual = wait_for_windows(settings, expected)
        fault_report("sigkill-restart", settings, len(events), expected, actual, time.monotonic() - restarted_at)
        assert actual == expected
        for window in actual.values():
            assert len(window) == len(set(window)), "an event entered a window twice"
        replayed = metric_total([restarted], "streamrec_window_duplicates_total")
        print(f"at the kill: committed {committed_at_kill} of {len(events)}, stored but not committed"
              f" {len(stored_not_committed)}; replayed into windows after the restart: {replayed:.0f}")
        assert committed_at_kill < len(events)
        assert replayed >= len(stored_not_committed), "work stored but not committed at the kill must be replayed"
        wait_until(lambda: committed_lag(settings) == 0, 30, "offsets committed after recovery")
    finally:
        restarted.kill()


def test_cassandra_outage_of_30s_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    if local.running_pid(settings, "cassandra") is None:
        pytest.fail("this test stops and restarts Cassandra, so it must have been started by `streamrec infra up`")
    settings = settings.with_overrides(window_size=WHOLE)
    events = synthetic(4000, 200, seed=13)
    worker = ServiceProcess.worker(settings, tmp_path / "worker.log").start()
    try:
        produce(settings, events_as_records(events[:2000]))
        wait_for_metric([worker], SAVES, 1)  # some batches stored before the outage
        local.stop(settings, "cassandra")
        stopped_at = time.monotonic()
        produce(settings, events_as_records(events[2000:]))
        wait_until(lambda: worker.health().get("cassandra") is False, 30, "/health reporting the outage")
        # A window of commit intervals: the commit of batches stored before the stop has run.
        time.sleep(3.0)
        committed_early = committed_offsets(settings)
        time.sleep(max(0.0, 30.0 - (time.monotonic() - stopped_at)))  # the outage's length is the test
        assert worker.alive(), "the worker must ride out the outage"
        assert worker.health().get("cassandra") is False, "/health must report the outage"
        assert worker.health_status() == 503
        assert committed_offsets(settings) == committed_early, "offsets must not move while Cassandra is down"
        assert sum(committed_early.values()) < len(events)
        local.start(settings, "cassandra")
        restarted_at = time.monotonic()
        expected = expected_windows(events, WHOLE)
        actual = wait_for_windows(settings, expected, timeout=180)
        fault_report("cassandra-30s-outage", settings, len(events), expected, actual, time.monotonic() - restarted_at)
        assert actual == expected
        assert worker.alive()
        wait_until(lambda: committed_lag(settings) == 0, 30, "offsets committed after recovery")
    finally:
        worker.kill()
        if not local.is_healthy(settings, "cassandra"):
            local.start(settings, "cassandra")
