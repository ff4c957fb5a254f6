"""A benchmark run's topics, schema and consumer offsets, beyond the harness's isolation.

A run's settings come from :func:`streamrec.testing.isolation.isolated_settings`
named ``bench-<benchmark>-<run id>``, so benchmarks never collide with each
other, with tests, or with the demo; its topics and keyspaces are dropped
afterwards (:func:`streamrec.testing.isolation.drop_isolated`) unless ``keep``
is asked for.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Sequence

from streamrec.config import Settings
from streamrec.stream.state.cassandra import connect, migrate
from streamrec.stream.topics import ensure_topics_sync


log = logging.getLogger(__name__)


def new_run_id() -> str:
    return f"{int(time.time()) % 10_000_000}{os.getpid() % 1000:03d}"


def create_topics(settings: Settings, extra: Sequence[str] = (), partitions: int | None = None) -> dict[str, int]:
    """The streamrec topics of ``settings`` plus ``extra`` ones (same partition count)."""
    from confluent_kafka.admin import AdminClient, NewTopic


    if partitions is not None and partitions != settings.topic_partitions:
        settings = settings.with_overrides(topic_partitions=partitions)
    counts = ensure_topics_sync(settings)
    if extra:
        admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
        futures = admin.create_topics([NewTopic(t, settings.topic_partitions, settings.topic_replication) for t in extra])
        for topic, fut in futures.items():
            try:
                fut.result(30)
            except Exception as exc:  # TOPIC_ALREADY_EXISTS is fine
                if "exists" not in str(exc).lower():
                    raise
            counts[topic] = settings.topic_partitions
    return counts


def prepare_schema(settings: Settings) -> None:
    """Create the run's keyspace and tables before any worker starts (no concurrent DDL from workers)."""

    cluster, session = connect(settings)
    try:
        migrate(session, settings)
    finally:
        cluster.shutdown()


def topic_size(bootstrap: str, topic: str) -> int:
    """Records currently in ``topic`` (high − low watermark, summed over partitions)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-size-{time.time_ns()}"})
    try:
        meta = consumer.list_topics(topic, timeout=10)
        total = 0
        for p in meta.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def skip_to_end(settings: Settings) -> None:
    """Commit the events topic's end offsets for ``settings.consumer_group`` (a fresh group starts there)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.consumer_group,
                         "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(settings.events_topic, timeout=10)
        tps = []
        for p in meta.topics[settings.events_topic].partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(settings.events_topic, p), timeout=10)
            tps.append(TopicPartition(settings.events_topic, p, high))
        consumer.commit(offsets=tps, asynchronous=False)
    finally:
        consumer.close()
