"""The retrainer's training data: recent events read from the events topic.

Training data comes from the events topic itself, read by a group-less
consumer from ``now − horizon`` (``offsets_for_times``) to the end offsets
seen when the round starts. The topic is the durable, replayable record of
what users did (the serving windows are capped and would bias training to
heavy users' last N events); Kafka retention must cover the horizon. Events
are streamed, validated with the worker's own rules, and kept per user in a
bounded deque, so memory is bounded by users × ``retrain_user_cap`` whatever
the number of events.

Users who asked to be forgotten are left out: their events stamped at or
before the request (under ``STREAMREC_FORGET_POLICY=refuse``, all of them),
although the topic still holds them. The suppression list is read from
Cassandra every round; a round that cannot read it does not train.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from tqdm import tqdm

from streamrec.config import Settings
from streamrec.errors import StateStoreError, StreamrecError
from streamrec.models.data import EventLog
from streamrec.models.features import pick_context
from streamrec.stream.events import Event, ValidationRules, parse_event
from streamrec.stream.forgotten import ForgottenUsers, forgotten_action
from streamrec.stream.state.cassandra import CassandraStore

log = logging.getLogger(__name__)


class RetrainError(StreamrecError):
    """A retraining round could not run (no data, Kafka unreachable)."""


T = TypeVar("T")


def newest_share(first: dict[T, int], ends: dict[T, int], max_events: int) -> dict[T, int]:
    """Start offsets that keep at most ``max_events`` records over all partitions: the newest of each.

    Each partition gives up the oldest part of its range, in proportion to its
    size, so a capped round trains on the most recent behaviour, not the oldest.
    """
    total = sum(max(0, ends[tp] - first[tp]) for tp in first)
    if total <= max_events:
        return dict(first)
    return {tp: ends[tp] - (max(0, ends[tp] - first[tp]) * max_events) // total for tp in first}


async def _read_recent(settings: Settings, since_ms: int, user_cap: int, max_events: int) -> tuple[dict[str, deque], int]:
    rules = ValidationRules.from_settings(settings)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                enable_auto_commit=False, **settings.kafka_client_kwargs())
    await consumer.start()
    per_user: dict[str, deque] = {}
    read = 0
    try:
        partitions = consumer.partitions_for_topic(settings.events_topic)
        if not partitions:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - first contact with the topic
            partitions = consumer.partitions_for_topic(settings.events_topic) or set()
        tps = [TopicPartition(settings.events_topic, p) for p in sorted(partitions)]
        if not tps:
            raise RetrainError(f"topic {settings.events_topic} does not exist")
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.offsets_for_times({tp: since_ms for tp in tps})
        begin = await consumer.beginning_offsets(tps)
        first = {tp: max(starts[tp].offset if starts.get(tp) is not None else ends[tp], begin[tp]) for tp in tps}
        first = newest_share(first, ends, max_events)
        todo = 0
        remaining = set()
        for tp in tps:
            start = first[tp]
            consumer.seek(tp, start)
            todo += max(0, ends[tp] - start)
            if start < ends[tp]:
                remaining.add(tp)
        with tqdm(total=min(todo, max_events), unit="ev", desc="read events", disable=todo < 10_000) as bar:
            while remaining and read < max_events:
                batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=5000)
                for tp, records in batch.items():
                    for record in records:
                        if record.offset >= ends[tp]:
                            break
                        parsed = parse_event(record.value, rules=rules)
                        if isinstance(parsed, Event):
                            window = per_user.get(parsed.user_id)
                            if window is None:
                                window = per_user[parsed.user_id] = deque(maxlen=user_cap)
                            # The context too, normalised as the worker keeps it, for a live model with context keys.
                            window.append((parsed.ts_ms, parsed.event_id, parsed.item_id, parsed.event_type,
                                           pick_context(parsed.context)))
                        read += 1
                    bar.update(len(records))
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
    finally:
        await consumer.stop()
    return per_user, read


def end_offsets_total(settings: Settings) -> int:
    """Events ever appended to the events topic (sum of end offsets): the retrainer's "new events" clock."""
    async def total() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                    **settings.kafka_client_kwargs())
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(settings.events_topic) or set()
            tps = [TopicPartition(settings.events_topic, p) for p in partitions]
            return sum((await consumer.end_offsets(tps)).values()) if tps else 0
        finally:
            await consumer.stop()

    try:
        return asyncio.run(total())
    except Exception as exc:
        raise RetrainError(f"cannot read {settings.events_topic}: {exc}") from exc


FORGOTTEN_READ_WAIT_S = 60.0


def forgotten_users(settings: Settings, *, wait_s: float = FORGOTTEN_READ_WAIT_S) -> ForgottenUsers:
    """The suppression list as stored, retried for up to ``wait_s`` (a busy or restarting Cassandra
    answers late); raises RetrainError when it still cannot be read."""
    async def load() -> ForgottenUsers:
        store = CassandraStore.open(settings)
        try:
            return ForgottenUsers(await store.load_forgotten())
        finally:
            await store.close()

    deadline = time.monotonic() + wait_s
    delay = 1.0
    while True:
        try:
            return asyncio.run(load())
        except StateStoreError as exc:
            if time.monotonic() + delay > deadline:
                raise RetrainError(f"cannot read the forgotten users, so cannot keep them out of training: {exc}") from exc
            log.warning("cannot read the forgotten users yet (%s); retrying in %.0f s", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def recent_event_log(settings: Settings) -> tuple[EventLog, int]:
    """The recent events as an EventLog (deduplicated by event_id per user, forgotten users left out) and the number read."""
    forgotten = forgotten_users(settings)
    since = int(time.time() * 1000 - settings.retrain_horizon_hours * 3_600_000)
    per_user, read = asyncio.run(_read_recent(settings, since, settings.retrain_user_cap, settings.retrain_max_events))
    log_ = EventLog()
    left_out = 0
    for user, rows in per_user.items():
        seen: set[str] = set()
        mark = forgotten.get(user)
        for ts, event_id, item, event_type, context in sorted(rows, key=lambda row: row[:4]):
            if forgotten_action(mark, ts, settings.forget_policy) is not None:
                left_out += 1
                continue
            if event_id not in seen:
                seen.add(event_id)
                log_.append(user, item, event_type, ts, context)
    if left_out:
        log.info("left out %d events of forgotten users", left_out)
    return log_, read
