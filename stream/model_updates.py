"""Model announcements on the compacted ``<prefix>.model-updates`` topic.

The registry is the source of truth; an announcement tells every worker (and
anyone else listening) that the live version changed, so workers switch
within a batch or two instead of waiting for their next registry poll. Each
worker reads the topic with its own group-less consumer: every worker must
see every announcement, which a consumer group would prevent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from typing import Awaitable, Callable

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streamrec.config import Settings

log = logging.getLogger(__name__)
ANNOUNCEMENT_KEY = b"live"


@dataclass(frozen=True)
class ModelAnnouncement:
    """``version`` is live now (``reason``: published, rollback, ...)."""

    version: int
    checksum: str
    reason: str
    announced_at_ms: int

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> "ModelAnnouncement":
        doc = orjson.loads(raw)
        return cls(int(doc["version"]), str(doc.get("checksum", "")), str(doc.get("reason", "")),
                   int(doc.get("announced_at_ms", 0)))


async def announce(settings: Settings, version: int, checksum: str, reason: str) -> ModelAnnouncement:
    """Publish that ``version`` is live (key ``live``: compaction keeps the latest)."""
    message = ModelAnnouncement(version, checksum, reason, int(time.time() * 1000))
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", **settings.kafka_client_kwargs())
    await producer.start()
    try:
        await producer.send_and_wait(settings.model_updates_topic, message.to_json(), key=ANNOUNCEMENT_KEY)
    finally:
        await producer.stop()
    log.info("announced model version %d (%s)", version, reason)
    return message


async def watch_announcements(
    settings: Settings, on_announcement: Callable[[ModelAnnouncement], Awaitable[None] | None],
    stop: asyncio.Event,
) -> None:
    """Call ``on_announcement`` for each announcement, from the oldest retained, until ``stop`` is set."""
    consumer = AIOKafkaConsumer(
        settings.model_updates_topic, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
        auto_offset_reset="earliest", **settings.kafka_client_kwargs(),
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    try:
                        message = ModelAnnouncement.from_json(record.value)
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                        log.error("ignoring a malformed model announcement at offset %s: %s", record.offset, exc)
                        continue
                    result = on_announcement(message)
                    if asyncio.iscoroutine(result):
                        await result
    finally:
        await consumer.stop()
