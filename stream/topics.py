"""Create the streamrec topics (idempotent) with the configured partition count."""

from __future__ import annotations

import asyncio
import functools
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

from streamrec.config import Settings
from streamrec.errors import StreamrecError

log = logging.getLogger(__name__)


class TopicError(StreamrecError):
    """Topics could not be created or inspected."""


@functools.lru_cache(maxsize=65_536)
def owner_partition(key: bytes, partitions: int) -> int:
    """The partition that owns ``key``: murmur2, as the Java client, aiokafka and Kafka Streams hash keys.

    librdkafka clients (kcat, confluent-kafka, Go, .NET) hash with CRC32
    unless told ``partitioner=murmur2_random``; the worker re-routes their
    records here so that one worker owns each user, whatever client produced.
    """
    # Cached: called for every record, and aiokafka's murmur2 is pure Python (~4 µs a key).
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def _durable(settings: Settings) -> dict[str, str]:
    # With acks=all, a write is durable on min.insync.replicas brokers. A re-routed
    # event becomes the only copy once its original offset is committed, so with
    # three or more replicas require two (one broker may still be down).
    return {"min.insync.replicas": "2"} if settings.topic_replication >= 3 else {}


def topic_specs(settings: Settings) -> list[NewTopic]:
    """events / recommendations / DLQ / items share the partition count; model-updates, items and item-vectors are compacted."""
    p, r = settings.topic_partitions, settings.topic_replication
    durable = _durable(settings)
    return [
        NewTopic(settings.events_topic, p, r, topic_configs=dict(durable)),
        NewTopic(settings.recommendations_topic, p, r, topic_configs=dict(durable)),
        NewTopic(settings.dlq_topic, p, r, topic_configs={"retention.ms": str(30 * 86_400_000), **durable}),
        NewTopic(settings.model_updates_topic, 1, r, topic_configs={"cleanup.policy": "compact", **durable}),
        # The item catalogue: compacted, so replaying it from the start yields each item's latest record.
        NewTopic(settings.items_topic, p, r, topic_configs={"cleanup.policy": "compact", **durable}),
        # Their text vectors, computed once by the item embedder; every worker replays them.
        NewTopic(settings.item_vectors_topic, p, r, topic_configs={"cleanup.policy": "compact", **durable}),
        # Kept forever: the record that each request was carried out holds a hash, not the id.
        NewTopic(settings.forget_audit_topic, 1, r, topic_configs={"retention.ms": "-1", **durable}),
    ]


def forget_topic_spec(settings: Settings, events_partitions: int) -> NewTopic:
    """The forget-request topic: the events topic's partition count, so that partition i of both goes to the
    same worker (Faust assigns topics of equal partition counts together), and a week's retention (requests
    carry the user id)."""
    return NewTopic(settings.forget_topic, events_partitions, settings.topic_replication,
                    topic_configs={"retention.ms": str(7 * 86_400_000), **_durable(settings)})


async def ensure_topics(settings: Settings) -> dict[str, int]:
    """Create missing topics; return every topic's partition count. Warns when events has fewer partitions than configured."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, **settings.kafka_client_kwargs())
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        raise TopicError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in topic_specs(settings) if spec.name not in existing]
        for spec in missing:
            try:
                await admin.create_topics([spec])
                log.info("created topic %s (%d partitions)", spec.name, spec.num_partitions)
            except TopicAlreadyExistsError:
                pass  # another worker created it first
        counts = await _partition_counts(admin, [s.name for s in topic_specs(settings)])
        events_partitions = counts.get(settings.events_topic) or settings.topic_partitions
        if settings.forget_topic not in existing:
            try:
                await admin.create_topics([forget_topic_spec(settings, events_partitions)])
            except TopicAlreadyExistsError:
                pass
        counts.update(await _partition_counts(admin, [settings.forget_topic]))
    finally:
        await admin.close()
    if counts.get(settings.events_topic, 0) < settings.topic_partitions:
        log.warning(
            "%s has %s partitions, fewer than the configured %d: at most that many workers get work",
            settings.events_topic, counts.get(settings.events_topic), settings.topic_partitions,
        )
    if counts.get(settings.forget_topic) != counts.get(settings.events_topic):
        log.warning(
            "%s has %s partitions but %s has %s: forget requests may reach a worker that does not own the user"
            " (give both topics the same partition count)",
            settings.forget_topic, counts.get(settings.forget_topic), settings.events_topic,
            counts.get(settings.events_topic),
        )
    return counts


async def _partition_counts(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _ in range(20):  # freshly created topics take a moment to show their partitions
        described = await admin.describe_topics(topics)
        counts = {d["topic"]: len(d["partitions"]) for d in described}
        if all(counts.values()):
            break
        await asyncio.sleep(0.25)
    return counts


def ensure_topics_sync(settings: Settings) -> dict[str, int]:
    return asyncio.run(ensure_topics(settings))
