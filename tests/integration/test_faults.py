"""Fault tolerance with real processes: two workers and a SIGKILL, a broker restart, SIGTERM."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest

from streamrec.config import Settings
from streamrec.deploy import infra as local
from streamrec.stream.recommendation import Recommendation
from streamrec.testing.process import ServiceProcess
from tests.integration.helpers import (
    audit_commits,
    committed_lag,
    committed_offsets,
    events_as_records,
    expected_windows,
    produce,
    fault_report,
    paced_producer,
    read_topic,
    synthetic,
    wait_for_assignment,
    wait_for_metric,
    wait_for_windows,
    wait_until,
)

pytestmark = pytest.mark.integration

WHOLE = 1000


@pytest.fixture
def settings(isolated: Settings, tmp_path: Path) -> Settings:
    # Windows that hold every event of every user: each event produced is checked in state.
    return isolated.with_overrides(window_size=WHOLE, model_dir=tmp_path / "no-models", topic_partitions=4)



def assert_every_user_served(settings: Settings, events: list[dict]) -> list[Recommendation]:
    """Each user got a recommendation computed from their whole window (labelled with their newest event)."""
    newest: dict[str, tuple[int, str]] = {}
    for e in events:
        newest[e["user_id"]] = max(newest.get(e["user_id"], (0, "")), (int(e["ts"]), e["event_id"]))
    last = {user: event_id for user, (_, event_id) in newest.items()}
    recs = [Recommendation.from_json(v) for _, v in
            read_topic(settings, settings.recommendations_topic, min_messages=len(last), timeout=120)]
    triggered = defaultdict(set)
    for rec in recs:
        triggered[rec.user_id].add(rec.event_id)
    missing = [u for u, eid in last.items() if eid not in triggered[u]]
    assert not missing, f"{len(missing)} users never got a recommendation for their last event"
    return recs


def test_sigkill_of_one_of_two_workers_mid_replay(settings: Settings, tmp_path: Path) -> None:
    events = synthetic(8000, 400, seed=31)
    first = ServiceProcess.worker(settings, tmp_path / "w1.log", worker_id="w1").start()
    second = ServiceProcess.worker(settings, tmp_path / "w2.log", worker_id="w2").start()
    try:
        wait_for_assignment([first, second], settings.topic_partitions)  # both in the group
        produce(settings, events_as_records(events[:4000]))
        # Mid-replay, once the first worker has committed on one of its partitions: a commit
        # follows the delivery of the batch's recommendations, so some of them are its own.
        owned = first.health().get("partitions") or []
        wait_until(lambda: any(committed_offsets(settings).get(p, 0) > 0 for p in owned), 60,
                   f"a commit by the first worker on its partitions {owned}")
        first.kill()
        killed_at = time.monotonic()
        produce(settings, events_as_records(events[4000:]))
        expected = expected_windows(events, WHOLE)
        actual = wait_for_windows(settings, expected, timeout=180)
        fault_report("sigkill-1-of-2", settings, len(events), expected, actual, time.monotonic() - killed_at)
        assert actual == expected, "the surviving worker did not take over every partition"
        assert second.alive()
        recs = assert_every_user_served(settings, events)
        assert {r.worker_id for r in recs} == {"w1", "w2"}
        wait_until(lambda: committed_lag(settings) == 0, 30, "the survivor commits every partition")
    finally:
        first.kill()
        second.kill()


def test_broker_restart_mid_stream(settings: Settings, tmp_path: Path) -> None:
    if local.running_pid(settings, "kafka") is None:
        pytest.fail("this test restarts Kafka, so it must have been started by `streamrec infra up`")
    events = synthetic(4000, 200, seed=37)
    worker = ServiceProcess.worker(settings, tmp_path / "worker.log").start()
    try:
        produce(settings, events_as_records(events[:2000]))
        wait_for_metric([worker], "streamrec_events_total", 1)  # mid-stream
        local.stop(settings, "kafka")
        time.sleep(5.0)  # the outage itself: its length is the test, not a wait for anything
        local.start(settings, "kafka")
        restarted_at = time.monotonic()
        produce(settings, events_as_records(events[2000:]))
        expected = expected_windows(events, WHOLE)
        actual = wait_for_windows(settings, expected, timeout=180)
        fault_report("broker-restart", settings, len(events), expected, actual, time.monotonic() - restarted_at)
        assert actual == expected
        assert worker.alive(), "the worker must reconnect, not die"
        assert_every_user_served(settings, events)
        wait_until(lambda: committed_lag(settings) == 0, 30, "offsets committed after the broker came back")
    finally:
        worker.kill()
        if not local.is_healthy(settings, "kafka"):
            local.start(settings, "kafka")


def test_sigterm_finishes_the_batch_commits_and_exits(settings: Settings, tmp_path: Path) -> None:
    events = synthetic(3000, 150, seed=41)
    worker = ServiceProcess.worker(settings, tmp_path / "worker.log").start()
    producing = paced_producer(settings, events, per_second=1000)
    # Mid-stream: the worker has committed once and events are still arriving.
    wait_until(lambda: sum(committed_offsets(settings).values()) > 0, 60, "a first commit by the worker")
    started = time.monotonic()
    code = worker.terminate(timeout=60)
    took = time.monotonic() - started
    assert code == 0, worker.log_tail()
    assert took < 45, f"shutdown took {took:.0f}s"
    # Before any other worker runs: what it committed is stored, and what it stored it committed.
    audit = audit_commits(settings, {e["user_id"] for e in events})
    print(f"SIGTERM after {took:.1f}s: committed {audit.committed}, stored {audit.stored}")
    assert not audit.committed_not_stored, f"{len(audit.committed_not_stored)} events committed but not stored"
    assert not audit.stored_not_committed, f"{len(audit.stored_not_committed)} stored events left uncommitted by the shutdown"
    assert audit.committed > 0
    producing.join()
    # The rest is consumed by the next worker.
    restarted = ServiceProcess.worker(settings, tmp_path / "worker2.log", worker_id="w2").start()
    try:
        expected = expected_windows(events, WHOLE)
        assert wait_for_windows(settings, expected) == expected
        wait_until(lambda: committed_lag(settings) == 0, 30, "every offset committed")
        assert committed_lag(settings) == 0
    finally:
        restarted.kill()


def test_a_failing_agent_commits_nothing_it_did_not_make_durable(settings: Settings, tmp_path: Path) -> None:
    """A bug raised outside the batch's try once let Faust restart the agent and ack records it never processed."""
    settings = settings.with_overrides(batch_max_events=25)
    events = synthetic(3000, 60, seed=51)
    failing = ServiceProcess.worker(settings, tmp_path / "failing.log", worker_id="failing",
                            module="tests.integration.failing_worker", extra_env={"FAIL_AFTER_BATCHES": "60"}).start()
    # A paced stream: the worker commits several times before the failure, and work is in flight when it hits.
    for start in range(0, len(events), 100):
        produce(settings, events_as_records(events[start:start + 100]))
        time.sleep(0.2)
    deadline = time.monotonic() + 30
    while failing.alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    still_running = failing.alive()
    failing.kill()  # waits for the process: nothing it did can change after this

    audit = audit_commits(settings, {e["user_id"] for e in events})
    print(f"FAULT agent-failure: committed {audit.committed} of {len(events)}, in state {audit.stored},"
          f" committed but not durable {len(audit.committed_not_stored)}")
    assert not audit.committed_not_stored, f"{len(audit.committed_not_stored)} events committed but never stored"
    assert 0 < audit.committed < len(events), "the failure must hit after commits, with uncommitted work left"
    assert not still_running and failing.proc.returncode == 70, "the worker must stop, not carry on acking"
    assert "injected failure" in failing.log_path.read_text()

    worker = ServiceProcess.worker(settings, tmp_path / "worker.log", worker_id="w2").start()
    try:
        expected = expected_windows(events, WHOLE)
        assert wait_for_windows(settings, expected, timeout=120) == expected
        wait_until(lambda: committed_lag(settings) == 0, 30, "every offset committed")
        assert committed_lag(settings) == 0
    finally:
        worker.kill()


def _set_topic_config(settings: Settings, topic: str, name: str, value: str | None) -> None:
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    op = AlterConfigOpType.SET if value is not None else AlterConfigOpType.DELETE
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic,
                              incremental_configs=[ConfigEntry(name, value or "", incremental_operation=op)])
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)


def test_undeliverable_outputs_hold_the_batch_and_health_says_so(settings: Settings, tmp_path: Path) -> None:
    """The broker refuses every recommendation (max.message.bytes too small): nothing is acked, /health is 503."""
    worker = ServiceProcess.worker(settings, tmp_path / "worker.log").start()
    try:
        _set_topic_config(settings, settings.recommendations_topic, "max.message.bytes", "64")
        events = synthetic(400, 40, seed=61)
        produce(settings, events_as_records(events))
        wait_until(lambda: worker.health().get("delivery") is False, 60, "/health reporting the failing deliveries")
        time.sleep(3.0)  # a window of several commit intervals in which no offset may move
        assert sum(committed_offsets(settings).values()) == 0, "offsets committed while outputs were undelivered"
        assert worker.alive()

        _set_topic_config(settings, settings.recommendations_topic, "max.message.bytes", None)
        expected = expected_windows(events, WHOLE)
        assert wait_for_windows(settings, expected, timeout=120) == expected
        assert_every_user_served(settings, events)
        wait_until(lambda: committed_lag(settings) == 0, 30, "every offset committed")
        assert committed_lag(settings) == 0 and worker.health().get("delivery") is True
    finally:
        worker.kill()
