"""Helpers for integration tests: real worker processes, an independent Kafka client, state reads.

Tests wait for what they need, never for a fixed time: :func:`wait_until` polls
an observable state (:func:`wait_for_assignment` the worker group's partitions,
:func:`wait_for_group` any consumer group's membership, :func:`wait_for_metric`
a counter on ``/metrics``, :func:`committed_lag` the committed offsets,
:func:`wait_for_windows` rows in Cassandra). A fixed sleep is left only where
the time itself is the test (an outage's length, a window in which nothing
may happen), and says so. Workers, ports and isolated settings come from the
harness in :mod:`streamrec.testing`, which the benchmarks use too.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import orjson
from confluent_kafka import Consumer, ConsumerGroupState, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamrec.config import Settings
from streamrec.testing.process import ServiceProcess
from streamrec.stream.window import WindowEntry, decode_window


WINDOW = 20  # a small window, so test streams exercise the cap


def synthetic(n_events: int, n_users: int, seed: int = 7) -> list[dict]:
    """A deterministic synthetic stream (500 items)."""
    from streamrec.stream.generator import SyntheticConfig, generate_events

    return list(generate_events(SyntheticConfig(num_users=n_users, num_items=500, num_events=n_events, seed=seed)))


def wait_for_assignment(workers: Sequence[ServiceProcess], partitions: int, timeout: float = 90.0) -> None:
    """Until every worker reports ready and owns partitions, and together they own all of them (a stable group)."""
    deadline = time.monotonic() + timeout
    owned: list[list[int]] = []
    while time.monotonic() < deadline:
        reports = [w.health() for w in workers]
        owned = [r.get("partitions") or [] for r in reports]
        ready = all(r.get("ready") for r in reports)
        if ready and all(owned) and sorted(p for ps in owned for p in ps) == list(range(partitions)):
            return
        time.sleep(0.5)
    raise AssertionError(f"the group never settled: partitions owned per worker {owned}")


def metric_total(workers: Sequence[ServiceProcess], name: str) -> float:
    """Sum of an unlabelled counter over workers (as exposed on /metrics)."""
    from streamrec.stream.metrics import metric_values

    return sum(metric_values(worker.metrics()).get(name, 0.0) for worker in workers)


def wait_for_metric(workers: Sequence[ServiceProcess], name: str, at_least: float, timeout: float = 60.0) -> float:
    """Until the workers' summed counter ``name`` reaches ``at_least``; returns the value seen."""
    seen = [0.0]

    def reached() -> bool:
        seen[0] = metric_total(workers, name)
        return seen[0] >= at_least

    wait_until(reached, timeout, lambda: f"{name} >= {at_least:g} on /metrics (last seen {seen[0]:g})")
    return seen[0]


def wait_for_group(bootstrap: str, group: str, members: int, timeout: float = 90.0) -> None:
    """Until consumer group ``group`` is stable with ``members`` members (a rebalance finished)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    state: list[str] = ["unknown"]

    def stable() -> bool:
        try:
            description = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
        except KafkaException as exc:
            state[0] = str(exc)
            return False
        state[0] = f"{description.state}, {len(description.members)} member(s)"
        return description.state == ConsumerGroupState.STABLE and len(description.members) == members

    wait_until(stable, timeout, lambda: f"group {group} stable with {members} members (last seen: {state[0]})")


def produce(settings: Settings, records: Iterable[tuple[bytes | None, bytes | None]], topic: str | None = None,
            *, partitioner: str = "murmur2_random") -> int:
    """Produce (key, value) pairs with confluent-kafka (librdkafka): a client independent of ours.

    ``murmur2_random`` is what the README tells librdkafka users to set (the
    Java client's partitioning); ``consistent_random`` is librdkafka's CRC32 default.
    """
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all", "linger.ms": 5,
                         "enable.idempotence": True, "partitioner": partitioner})
    count = 0
    for key, value in records:
        while True:
            try:
                producer.produce(topic or settings.events_topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.1)
        count += 1
        if count % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0, "not every record was delivered"
    return count


def paced_producer(settings: Settings, events: Sequence[dict], per_second: float) -> threading.Thread:
    """Produce ``events`` in the background at about ``per_second`` (chunks of a tenth of a second); join to wait."""
    chunk = max(1, int(per_second / 10))

    def run() -> None:
        started = time.monotonic()
        for n, start in enumerate(range(0, len(events), chunk)):
            produce(settings, events_as_records(events[start:start + chunk]))
            time.sleep(max(0.0, started + (n + 1) * 0.1 - time.monotonic()))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_until(condition: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` (a text, or a function giving it) otherwise."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for: {described}")
        time.sleep(0.5)


def events_as_records(events: Sequence[dict]) -> list[tuple[bytes, bytes]]:
    return [(str(e["user_id"]).encode(), orjson.dumps(e)) for e in events]


def read_topic(settings: Settings, topic: str, *, min_messages: int = 0, timeout: float = 60.0,
               idle: float = 3.0) -> list[tuple[bytes | None, bytes | None]]:
    """Everything on ``topic`` (from the start) once ``min_messages`` arrived and the topic went idle."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"reader-{time.time_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got: list[tuple[bytes | None, bytes | None]] = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                if len(got) >= min_messages and time.monotonic() - last > idle:
                    break
                continue
            if msg.error():
                if msg.error().code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    continue  # not created yet: the producer or the worker is about to
                raise AssertionError(f"consumer error reading {topic}: {msg.error()}")
            got.append((msg.key(), msg.value()))
            last = time.monotonic()
    finally:
        consumer.close()
    return got


def read_windows(settings: Settings, user_ids: Iterable[str]) -> dict[str, list[WindowEntry]]:
    """Windows straight from Cassandra (a plain driver session, not the worker's store)."""
    from cassandra.cluster import Cluster
    from cassandra.policies import RoundRobinPolicy

    cluster = Cluster(settings.cassandra_contact_points, port=settings.cassandra_port, protocol_version=5,
                      load_balancing_policy=RoundRobinPolicy(),
                      # A plain read needs no schema: loading every test keyspace's tables made
                      # connecting outlast the timeout on a busy box.
                      schema_metadata_enabled=False, token_metadata_enabled=False, connect_timeout=15)
    try:
        session = cluster.connect()
        stmt = session.prepare(f"SELECT events FROM {settings.cassandra_keyspace}.windows WHERE user_id = ?")
        out = {}
        for user in user_ids:
            row = session.execute(stmt, (user,)).one()
            out[user] = decode_window(row.events) if row else []
        return out
    finally:
        cluster.shutdown()


def expected_windows(events: Sequence[dict], size: int) -> dict[str, list[str]]:
    """Reference: each user's last ``size`` distinct events by (ts, event_id), as event ids."""
    per_user: dict[str, dict[str, int]] = {}
    for e in events:
        per_user.setdefault(str(e["user_id"]), {}).setdefault(e["event_id"], int(e["ts"]))
    return {
        user: [eid for eid, _ in sorted(evs.items(), key=lambda kv: (kv[1], kv[0]))][-size:]
        for user, evs in per_user.items()
    }


def wait_for_windows(settings: Settings, expected: dict[str, list[str]], timeout: float = 120.0) -> dict[str, list[str]]:
    """Poll Cassandra until every user's window equals ``expected`` (or time out); returns the last read."""
    deadline = time.monotonic() + timeout
    actual: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        actual = {u: [e.event_id for e in w] for u, w in read_windows(settings, expected).items()}
        if actual == expected:
            return actual
        time.sleep(2.0)
    return actual


def fault_report(name: str, settings: Settings, produced: int, expected: dict[str, list[str]],
                 actual: dict[str, list[str]], recovery_s: float) -> str:
    """One line for the issue notes: produced, in state, recommendations emitted, recovery time."""
    recs = len(read_topic(settings, settings.recommendations_topic, timeout=30, idle=2.0))
    in_state = sum(len(v) for v in actual.values())
    line = (f"FAULT {name}: events produced {produced}, window entries expected {sum(len(v) for v in expected.values())}"
            f" / in state {in_state} (users {len(actual)}), recommendations emitted {recs}, recovered in {recovery_s:.1f}s")
    print(line)
    return line


def committed_offsets(settings: Settings) -> dict[int, int]:
    """The worker group's committed offset per partition of the events topic (0 where nothing is committed)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.consumer_group,
                         "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(settings.events_topic, timeout=10)
        tps = [TopicPartition(settings.events_topic, p) for p in meta.topics[settings.events_topic].partitions]
        return {tp.partition: max(tp.offset, 0) for tp in consumer.committed(tps, timeout=10)}
    finally:
        consumer.close()


def read_events_at(settings: Settings, timeout: float = 60.0) -> dict[tuple[int, int], dict]:
    """Every event on the events topic by (partition, offset), read from the start."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"reader-{time.time_ns()}",
                         "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(settings.events_topic, timeout=10)
        tps = [TopicPartition(settings.events_topic, p) for p in meta.topics[settings.events_topic].partitions]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
        consumer.assign([TopicPartition(settings.events_topic, p, 0) for p in ends])
        out: dict[tuple[int, int], dict] = {}
        deadline = time.monotonic() + timeout
        while sum(1 for _ in out) < sum(ends.values()) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                raise AssertionError(f"consumer error: {msg.error()}")
            out[(msg.partition(), msg.offset())] = orjson.loads(msg.value())
        assert len(out) == sum(ends.values()), f"read {len(out)} of {sum(ends.values())} events"
        return out
    finally:
        consumer.close()


@dataclass(frozen=True)
class CommitAudit:
    """The group's committed offsets against the windows in Cassandra, event by event."""

    committed: int  # events below the committed offsets
    stored: int  # events of the topic found in some window
    committed_not_stored: list[tuple[int, int]]  # (partition, offset): a committed event that was lost
    stored_not_committed: list[tuple[int, int]]  # stored but uncommitted: consumed again after a restart


def audit_commits(settings: Settings, users: Iterable[str]) -> CommitAudit:
    """Compare every event on the events topic with the committed offsets and the users' windows."""
    committed = committed_offsets(settings)
    at = read_events_at(settings)
    stored = {e.event_id for w in read_windows(settings, users).values() for e in w}
    return CommitAudit(
        committed=sum(committed.values()),
        stored=sum(1 for e in at.values() if e["event_id"] in stored),
        committed_not_stored=sorted(k for k, e in at.items() if k[1] < committed[k[0]] and e["event_id"] not in stored),
        stored_not_committed=sorted(k for k, e in at.items() if k[1] >= committed[k[0]] and e["event_id"] in stored),
    )


def committed_lag(settings: Settings) -> int:
    """Events on the events topic not yet committed by the worker group."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.consumer_group,
                         "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(settings.events_topic, timeout=10)
        tps = [TopicPartition(settings.events_topic, p) for p in meta.topics[settings.events_topic].partitions]
        committed = consumer.committed(tps, timeout=10)
        lag = 0
        for tp in committed:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            lag += high - (tp.offset if tp.offset >= 0 else low)
        return lag
    finally:
        consumer.close()


