"""The input of a benchmark: synthetic events, a fast pre-producer (librdkafka) and a paced producer that records send times.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import orjson

from streamrec.bench.stats import due_count, send_deadline
from streamrec.stream.generator import SyntheticConfig, generate_events


def synthetic_events(events: int, users: int, items: int, seed: int = 0) -> Iterator[dict[str, Any]]:

    return generate_events(SyntheticConfig(num_users=users, num_items=items, num_events=events, seed=seed))


def encode_event(event: dict[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) as the producer helper writes them: key = user id, value = the JSON event."""
    return str(event["user_id"]).encode(), orjson.dumps(event)


def _producer(bootstrap: str, *, latency: bool, partitioner: str = "murmur2_random") -> Any:
    from confluent_kafka import Producer

    # murmur2 as the Java client: records land on their key's owner partition (librdkafka's
    # CRC32 default would make the worker re-route most of them, a second trip through Kafka).
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                            "compression.type": "none", "partitioner": partitioner}
    if latency:
        conf.update({"linger.ms": 0, "batch.size": 64 * 1024})
    else:
        conf.update({"linger.ms": 50, "batch.size": 1024 * 1024, "queue.buffering.max.messages": 500_000,
                     "queue.buffering.max.kbytes": 512 * 1024})
    return Producer(conf)


def _produce(producer: Any, topic: str, key: bytes, value: bytes, *, wait_s: float) -> None:
    """Produce one record, serving delivery reports while librdkafka's queue is full."""
    while True:
        try:
            producer.produce(topic, value=value, key=key)
            return
        except BufferError:
            producer.poll(wait_s)


def preproduce(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]],
               partitioner: str = "murmur2_random") -> tuple[int, float]:
    """Produce (key, value) records as fast as possible (librdkafka, big batches); returns (count, seconds)."""
    producer = _producer(bootstrap, latency=False, partitioner=partitioner)
    started = time.perf_counter()
    count = 0
    for key, value in records:
        _produce(producer, topic, key, value, wait_s=0.05)
        count += 1
        if count % 10_000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left:
        raise RuntimeError(f"{left} records not delivered to {topic}")
    return count, time.perf_counter() - started


@dataclass
class PacedResult:
    sent_at: dict[str, float]
    started: float
    finished: float
    behind_max_s: float
    users: dict[str, str] = field(default_factory=dict)


def answered_times(sent_at: dict[str, float], users: dict[str, str], arrivals: dict[str, float]) -> dict[str, float]:
    """When each sent event was answered: by its own recommendation or by a later one of the same user.

    A worker emits one recommendation per user per micro-batch, carrying the
    user's last event of the batch; that message also answers the user's
    earlier events (sent before it). Walks each user's events from the last
    sent, keeping the earliest arrival seen so far.
    """
    by_user: dict[str, list[str]] = {}
    for event_id in sorted(sent_at, key=sent_at.__getitem__):
        by_user.setdefault(users.get(event_id, event_id), []).append(event_id)
    answered: dict[str, float] = {}
    for ids in by_user.values():
        best: float | None = None
        for event_id in reversed(ids):
            own = arrivals.get(event_id)
            if own is not None and (best is None or own < best):
                best = own
            if best is not None:
                answered[event_id] = best
    return answered


def produce_paced(bootstrap: str, topic: str, events: Iterable[dict[str, Any]], rate: float, seconds: float,
                  clock: Callable[[], float] = time.time) -> PacedResult:
    """Send events at ``rate``/s for ``seconds``; records each event's send time (wall clock) by event_id."""
    producer = _producer(bootstrap, latency=True)
    total = int(rate * seconds)
    sent_at: dict[str, float] = {}
    users: dict[str, str] = {}
    it = iter(events)
    started = clock() + 0.05
    sent = 0
    behind = 0.0
    while sent < total:
        now = clock()
        due = due_count(rate, started, now, total)
        if due <= sent:
            time.sleep(max(0.0, min(0.005, send_deadline(sent, rate, started) - now)))
            continue
        behind = max(behind, now - send_deadline(sent, rate, started))
        while sent < due:
            event = next(it, None)
            if event is None:
                total = sent
                break
            key, value = encode_event(event)
            sent_at[event["event_id"]] = clock()
            users[event["event_id"]] = str(event["user_id"])
            _produce(producer, topic, key, value, wait_s=0.01)
            sent += 1
        producer.poll(0)
    producer.flush(60)
    return PacedResult(sent_at, started, clock(), round(behind, 4), users)
