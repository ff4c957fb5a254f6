"""The Python producer helper: events keyed by user, serialised to the contract, batched.

Example::

    async with EventProducer(settings) as producer:
        await producer.send({"event_id": "e1", "user_id": "u1", "item_id": "i9",
                             "event_type": "view", "ts": 1732300000000})
"""

from __future__ import annotations

import asyncio
import csv
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable, Iterator

import orjson
from aiokafka import AIOKafkaProducer

from streamrec.config import Settings


class EventProducer:
    """Async producer for the events topic (acks=all, idempotent, lz4-free defaults)."""

    def __init__(self, settings: Settings, *, linger_ms: int = 5, topic: str | None = None) -> None:
        self.settings = settings
        self.topic = topic or settings.events_topic
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=linger_ms,
            max_batch_size=256 * 1024,
            **settings.kafka_client_kwargs(),
        )
        self.sent = 0

    async def __aenter__(self) -> "EventProducer":
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(self, event: dict[str, Any]) -> asyncio.Future:
        """Queue one event (keyed by its ``user_id``); await the returned future for delivery."""
        key = str(event["user_id"]).encode()
        future = await self._producer.send(self.topic, orjson.dumps(event), key=key)
        self.sent += 1
        return future

    async def send_raw(self, value: bytes, key: bytes | None) -> asyncio.Future:
        """Queue raw bytes as they are (for replays of recorded input, bad records included)."""
        future = await self._producer.send(self.topic, value, key=key)
        self.sent += 1
        return future

    async def flush(self) -> None:
        await self._producer.flush()


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                yield orjson.loads(line)


CONTEXT_COLUMN_PREFIX = "context."


def read_csv(path: Path) -> Iterator[dict[str, Any]]:
    """CSV with a header naming the event fields; ``ts`` stays a string unless all digits.

    ``context.<key>`` columns become the event's ``context`` object (as
    ``streamrec train`` reads the same CSV); empty cells are left out.
    """
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            event: dict[str, Any] = {k: v for k, v in row.items() if v not in (None, "")}
            if str(event.get("ts", "")).isdigit():
                event["ts"] = int(event["ts"])
            context = {k[len(CONTEXT_COLUMN_PREFIX):]: event.pop(k) for k in list(event)
                       if k.startswith(CONTEXT_COLUMN_PREFIX)}
            if context:
                event["context"] = context
            yield event


async def paced(events: Iterable[dict[str, Any]], rate: float | None, clock: Callable[[], float] = time.monotonic) -> AsyncIterator[dict[str, Any]]:
    """Yield events no faster than ``rate`` per second (None = as fast as possible)."""
    started = clock()
    for n, event in enumerate(events):
        if rate:
            ahead = started + n / rate - clock()
            if ahead > 0:
                await asyncio.sleep(ahead)
        yield event
