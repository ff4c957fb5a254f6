"""The item embedder: item records in, text vectors out, once per item (``streamrec items embedder``).

Why a small service and not the workers: the text encoder (all-MiniLM-L6-v2,
torch + transformers, ~90 MB of weights, tens of milliseconds of CPU per item)
then runs once per item record instead of once per worker, workers stay free
of torch and of that CPU load (their per-event cost is what serving
latency is made of), and a bad item record is dead-lettered exactly once: the
embedder reads the items topic in a consumer group and commits after the
vectors and dead letters are delivered. Its output, the compacted
``<prefix>.item-vectors`` topic, is model-independent (the frozen text
vector); each worker projects it with the weights of the version it serves
(:mod:`streamrec.stream.item_vectors`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from streamrec.config import Settings
from streamrec.models.text import MODEL_ZIP_SHA256, TextEncoder
from streamrec.stream.events import DeadLetter, Rejection
from streamrec.stream.item_vectors import ItemVector
from streamrec.stream.items import Item, ItemRules, parse_item

log = logging.getLogger(__name__)

EMBED_BATCH = 256


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """One consumed record of the items topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


@dataclass
class EmbedOutcome:
    """What one batch of item records becomes: messages for the item-vectors topic and dead letters."""

    vectors: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)


def embed_records(
    records: Sequence[ItemRecord], encode: Callable[[list[str]], np.ndarray], *, settings: Settings,
    text_encoder_sha256: str, worker_id: str, now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
) -> EmbedOutcome:
    """Validate and encode a batch: good records -> :class:`ItemVector`, tombstones -> tombstones, bad -> dead letters.

    Within a batch the latest record of an item wins (as compaction would
    keep it); a bad record never stops the others.
    """
    rules = ItemRules.from_settings(settings)
    outcome = EmbedOutcome()
    latest: dict[str, tuple[ItemRecord, Item | None]] = {}
    for record in records:
        if record.value is None:
            key = (record.key or b"").decode("utf-8", "replace")
            if key:
                latest.pop(key, None)
                latest[key] = (record, None)
            continue
        verdict = parse_item(record.value, rules=rules)
        if isinstance(verdict, Rejection):
            outcome.letters.append(DeadLetter.from_rejection(
                verdict, record.value, key=record.key, topic=settings.items_topic, partition=record.partition,
                offset=record.offset, source_timestamp_ms=record.timestamp_ms, worker_id=worker_id,
            ))
            log.warning("item record %s[%d]@%d rejected: %s (%s)", settings.items_topic, record.partition,
                        record.offset, verdict.reason, verdict.detail)
            continue
        latest.pop(verdict.item_id, None)
        latest[verdict.item_id] = (record, verdict)
    good = [(record, item) for record, item in latest.values() if item is not None]
    vectors = encode([item.text() for _, item in good]) if good else np.zeros((0, 0), np.float32)
    done_ms = now_ms()
    row = 0
    for key, (record, item) in latest.items():
        if item is None:
            outcome.vectors.append((key.encode(), None))
            continue
        message = ItemVector(item.item_id, vectors[row], item.categories, text_encoder_sha256, record.timestamp_ms, done_ms)
        row += 1
        outcome.vectors.append((message.kafka_key(), message.to_json()))
    return outcome


async def run_embedder(settings: Settings, stop: asyncio.Event, *, worker_id: str = "item-embedder",
                       on_batch: Callable[[EmbedOutcome], None] = lambda outcome: None) -> None:
    """Consume the items topic (group ``<consumer_group>-item-embedder``) until ``stop``; at-least-once.

    Offsets are committed only after every vector and dead letter of the batch
    was delivered, so a crash re-embeds (idempotently: same key, same vector).
    """
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    encoder = TextEncoder(settings.state_dir / "text-encoder")
    loop = asyncio.get_running_loop()
    consumer = AIOKafkaConsumer(
        settings.items_topic, bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.consumer_group}-item-embedder", enable_auto_commit=False, auto_offset_reset="earliest",
        metadata_max_age_ms=10_000, **settings.kafka_client_kwargs(),
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=5, **settings.kafka_client_kwargs())
    await producer.start()
    await consumer.start()
    log.info("item embedder reading %s, writing %s", settings.items_topic, settings.item_vectors_topic)
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=EMBED_BATCH)
            records = [
                ItemRecord(m.partition, m.offset, m.key, m.value, int(m.timestamp))
                for messages in batch.values() for m in messages
            ]
            if not records:
                continue
            # The encoder runs off the event loop (a batch of titles takes a second or more on one core).
            outcome = await loop.run_in_executor(None, lambda: embed_records(
                records, encoder.encode, settings=settings, text_encoder_sha256=MODEL_ZIP_SHA256, worker_id=worker_id))
            pending = [await producer.send(settings.item_vectors_topic, value, key=key) for key, value in outcome.vectors]
            pending += [await producer.send(settings.dlq_topic, l.to_json(), key=l.kafka_key()) for l in outcome.letters]
            await asyncio.gather(*pending)  # raises if anything was not delivered: nothing is committed then
            await consumer.commit()
            log.info("embedded %d items, dead-lettered %d records", sum(v is not None for _, v in outcome.vectors), len(outcome.letters))
            on_batch(outcome)
    finally:
        await consumer.stop()
        await producer.stop()
