"""Forgetting a user, end to end on the real Kafka and Cassandra: `streamrec forget user ID` and the control topic."""

from __future__ import annotations

import base64
import hashlib
import zlib
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from streamrec.config import Settings
from streamrec.stream.topics import owner_partition
from streamrec.testing.process import ServiceProcess
from tests.integration.helpers import (
    WINDOW, committed_lag, events_as_records, produce, read_topic, read_windows, synthetic, wait_for_assignment,
    wait_until,
)

pytestmark = pytest.mark.integration

USER = "forget-me"
PARTITIONS = 2


@pytest.fixture
def settings(isolated: Settings, tmp_path: Path) -> Settings:
    # No model: the popularity fallback serves, which is all these tests need from the encoder.
    return isolated.with_overrides(window_size=WINDOW, topic_partitions=PARTITIONS, model_dir=tmp_path / "models",
                                   state_dir=tmp_path / "state")


def user_events(user: str, first: int, count: int, ts_ms: int) -> list[dict]:
    return [{"event_id": f"{user}-e{n}", "user_id": user, "item_id": f"i{n % 7}", "event_type": "view", "ts": ts_ms + n}
            for n in range(first, first + count)]


def cql(settings: Settings, statement: str, *params: object) -> list:
    from cassandra.cluster import Cluster
    from cassandra.policies import RoundRobinPolicy

    cluster = Cluster(settings.cassandra_contact_points, port=settings.cassandra_port, protocol_version=5,
                      load_balancing_policy=RoundRobinPolicy(),
                      # A plain read needs no schema: loading every test keyspace's tables made
                      # connecting outlast the timeout on a busy box.
                      schema_metadata_enabled=False, token_metadata_enabled=False, connect_timeout=15)
    try:
        return list(cluster.connect(settings.cassandra_keyspace).execute(statement, params))
    finally:
        cluster.shutdown()


def forget_cli(settings: Settings, user: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **settings.to_env()}
    return subprocess.run([sys.executable, "-m", "streamrec", "forget", "user", user, "--by", "test@ci", *extra],
                          env=env, capture_output=True, text=True, timeout=120)


def window_ids(settings: Settings, user: str) -> list[str]:
    return [e.event_id for e in read_windows(settings, [user])[user]]


def test_forget_removes_the_user_everywhere_and_a_returning_user_starts_fresh(settings: Settings, tmp_path: Path) -> None:
    from streamrec.retrain.recent import recent_event_log

    others = synthetic(300, 20)
    past = user_events(USER, 0, 5, int(time.time() * 1000) - 60_000)
    worker = ServiceProcess.worker(settings, tmp_path / "w1.log").start()
    try:
        wait_for_assignment([worker], PARTITIONS)
        produce(settings, events_as_records(others + past))
        wait_until(lambda: len(window_ids(settings, USER)) == 5, 60, "the user's window stored")
        other = str(others[0]["user_id"])
        other_window = window_ids(settings, other)
        assert other_window

        done = forget_cli(settings, USER, "--json")
        assert done.returncode == 0, done.stderr
        audit = orjson.loads(done.stdout)
        assert audit["removed"] == {"window_events": 5, "user_state": True}
        assert audit["user_hash"] == hashlib.sha256(USER.encode()).hexdigest() and USER not in done.stdout
        assert audit["requested_by"] == "test@ci" and audit["worker_id"] == "w1" and not audit["repeated"]

        # No trace in Cassandra: window, serving state (the latest recommendation) gone; the
        # suppression list holds the hash, never the id.
        assert cql(settings, "SELECT * FROM windows WHERE user_id = %s", USER) == []
        assert cql(settings, "SELECT * FROM user_state WHERE user_id = %s", USER) == []
        marks = cql(settings, "SELECT * FROM forgotten_users")
        assert [m.user_hash for m in marks] == [audit["user_hash"]]
        assert all(USER not in str(value) for m in marks for value in m)
        assert window_ids(settings, other) == other_window  # nobody else touched

        # The recommendations topic: the user's last record is a tombstone (compaction drops them).
        recs = [(k, v) for k, v in read_topic(settings, settings.recommendations_topic, min_messages=1) if k == USER.encode()]
        assert recs and recs[-1][1] is None and any(v is not None for _, v in recs)
        audits = [orjson.loads(v) for _, v in read_topic(settings, settings.forget_audit_topic, min_messages=1)]
        assert [a["request_id"] for a in audits] == [audit["request_id"]]

        # Retraining reads the events topic, which still holds the past events: none reach training.
        log_, read = recent_event_log(settings)
        assert read >= len(others) + len(past)
        assert USER not in set(log_.user_ids) and other in set(log_.user_ids)

        # The user returns: a fresh window, stored, with only what came after the request; a late
        # record from before the request (still on its way) is dropped.
        now = int(time.time() * 1000)
        produce(settings, events_as_records(user_events(USER, 100, 2, now)))
        produce(settings, events_as_records(user_events(USER, 200, 1, audit["forgotten_at_ms"] - 10_000)))
        produce(settings, events_as_records(user_events(USER, 102, 1, now + 5)))
        wait_until(lambda: window_ids(settings, USER) == [f"{USER}-e100", f"{USER}-e101", f"{USER}-e102"], 60,
                   "a fresh window of the returning user's new events")
        wait_until(lambda: committed_lag(settings) == 0, 60, "every event handled and committed")
        assert window_ids(settings, USER) == [f"{USER}-e100", f"{USER}-e101", f"{USER}-e102"]
    finally:
        worker.terminate()

    # A new consumer group replays both topics from the start (the worst case of a lost commit):
    # the past stays forgotten, the request is recognised as done and not carried out again
    # (which would delete the new window), and the returning user's window is the same.
    replay = settings.with_overrides(consumer_group=settings.consumer_group + "-replay")
    second = ServiceProcess.worker(replay, tmp_path / "w2.log", worker_id="w2").start()
    try:
        wait_for_assignment([second], PARTITIONS)
        wait_until(lambda: len(read_topic(settings, settings.forget_audit_topic, min_messages=2, timeout=5)) >= 2, 90,
                   "the replayed request's audit record")
        repeated = [orjson.loads(v) for _, v in read_topic(settings, settings.forget_audit_topic)][-1]
        assert repeated["repeated"] and repeated["request_id"] == audit["request_id"]
        wait_until(lambda: committed_lag(replay) == 0, 90, "the replay handled and committed")
        assert window_ids(settings, USER) == [f"{USER}-e100", f"{USER}-e101", f"{USER}-e102"]
        assert "streamrec_forgotten_events_total{action=\"dropped\"}" in second.metrics()
    finally:
        second.terminate()


def test_refuse_policy_dead_letters_the_users_new_events(settings: Settings, tmp_path: Path) -> None:
    refusing = settings.with_overrides(forget_policy="refuse")
    worker = ServiceProcess.worker(refusing, tmp_path / "w.log").start()
    try:
        wait_for_assignment([worker], PARTITIONS)
        produce(refusing, events_as_records(user_events(USER, 0, 3, int(time.time() * 1000) - 60_000)))
        wait_until(lambda: len(window_ids(refusing, USER)) == 3, 60, "the user's window stored")
        assert forget_cli(refusing, USER).returncode == 0
        produce(refusing, events_as_records(user_events(USER, 10, 2, int(time.time() * 1000))))
        letters = [orjson.loads(v) for _, v in read_topic(refusing, refusing.dlq_topic, min_messages=2)]
        assert sorted(orjson.loads(base64.b64decode(letter["payload_b64"]))["event_id"] for letter in letters) == [
            f"{USER}-e10", f"{USER}-e11"]
        assert {letter["reason"] for letter in letters} == {"forgotten_user"}
        assert window_ids(refusing, USER) == []
    finally:
        worker.terminate()


def test_a_request_from_any_client_reaches_the_users_owner_and_bad_requests_are_dead_lettered(
    settings: Settings, tmp_path: Path,
) -> None:
    """Two workers; an application produces requests with librdkafka's default partitioner (CRC32), some malformed."""
    workers = [ServiceProcess.worker(settings, tmp_path / f"w{n}.log", worker_id=f"w{n}").start() for n in (1, 2)]
    try:
        wait_for_assignment(workers, PARTITIONS)
        owner_of = {p: w.worker_id for w in workers for p in w.health()["partitions"]}
        users = [f"app-user-{n}" for n in range(6)]
        past = int(time.time() * 1000) - 60_000
        produce(settings, events_as_records([e for u in users for e in user_events(u, 0, 2, past)]))
        wait_until(lambda: all(len(w) == 2 for w in read_windows(settings, users).values()), 60, "windows stored")
        # At least one of these lands on a partition that is not its owner's (CRC32 vs murmur2).
        assert any(owner_partition(u.encode(), PARTITIONS) != zlib.crc32(u.encode()) % PARTITIONS
                   for u in users)
        requests = [(u.encode(), orjson.dumps({"user_id": u, "requested_by": "app"})) for u in users]
        bad = [(b"x", b"not json"), (b"y", orjson.dumps({"user_id": ""})), (None, None)]
        produce(settings, requests + bad, topic=settings.forget_topic, partitioner="consistent_random")
        audits = [orjson.loads(v) for _, v in read_topic(settings, settings.forget_audit_topic, min_messages=len(users),
                                                         timeout=90)]
        assert len(audits) == len(users)
        assert all(w == [] for w in read_windows(settings, users).values())
        # Each request was carried out by the worker that owns the user's events (and cached window).
        by_hash = {hashlib.sha256(u.encode()).hexdigest(): u for u in users}
        assert {by_hash[a["user_hash"]]: a["worker_id"] for a in audits} == {
            u: owner_of[owner_partition(u.encode(), PARTITIONS)] for u in users}
        letters = [orjson.loads(v) for _, v in read_topic(settings, settings.dlq_topic, min_messages=3)]
        assert [letter["reason"] for letter in letters] == ["invalid_forget_request"] * 3
        assert all(w.alive() for w in workers)
    finally:
        for w in workers:
            w.terminate()
