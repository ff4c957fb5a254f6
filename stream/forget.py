"""Forgetting a user on request: the request and audit messages, the worker's handler, the client.

An application (or ``streamrec forget user ID``) produces a request, keyed by
user id, to ``<prefix>.forget``. That topic has the events topic's partition
count, so the worker that owns the user's events also gets the request
(Faust assigns partition i of both to one worker); a request on another
partition is re-routed there first, as events are. The owner then, in order:

1. between two batches, marks the user forgotten, replaces its cached window
   with an empty one and hands a tombstone (key = user id, null value) to the
   producer for the recommendations topic, behind every recommendation
   already produced for the user;
2. once the tombstone is delivered, deletes the user's window and serving
   state (with it the latest recommendation) at a write timestamp past every
   earlier write, so nothing in flight can land after the delete, and stores
   the mark in the suppression list (a hash of the id);
3. delivers an audit record to ``<prefix>.forget.audit``, and only then
   acknowledges the request. A crash before that repeats the request; the
   mark is stored last, so a repeat that finds its own request's mark only
   re-sends the audit record (deleting again would remove what the user did
   since).

Events stamped at or before the request are dropped from then on, by the
worker and by the retrainer; later ones start a fresh window
(``STREAMREC_FORGET_POLICY=start_fresh``) or are dead-lettered with reason
``forgotten_user`` (``refuse``).
"""

from __future__ import annotations

import asyncio
import getpass
import socket
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Callable

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from streamrec.config import Settings
from streamrec.errors import StreamrecError
from streamrec.stream.events import Reason, Rejection
from streamrec.stream.forgotten import user_hash
from streamrec.stream.delivery import Output
from streamrec.stream.processor import BatchProcessor, SourceRecord
from streamrec.stream.state.base import ForgetMark
from streamrec.stream.topics import owner_partition

FORGET_VERSION = 1


class ForgetError(StreamrecError):
    """A forget request could not be sent, or was not confirmed in time."""


@dataclass(frozen=True, slots=True)
class ForgetRequest:
    """``schemas/forget_request.schema.json``: forget ``user_id``."""

    user_id: str
    request_id: str
    requested_by: str = ""
    requested_at_ms: int | None = None
    reason: str = ""

    def to_json(self) -> bytes:
        doc = {"v": FORGET_VERSION, **{k: v for k, v in asdict(self).items() if v not in (None, "")}}
        return orjson.dumps(doc)


@dataclass(frozen=True, slots=True)
class RemovedData:
    """What a forget request removed from Cassandra."""

    window_events: int
    user_state: bool  # the serving state, which holds the latest recommendation


@dataclass(frozen=True, slots=True)
class ForgetAudit:
    """``schemas/forget_audit.schema.json``: who asked, when, and what was removed. No user id, its hash."""

    request_id: str
    user_hash: str
    requested_by: str
    requested_at_ms: int
    forgotten_at_ms: int
    completed_at_ms: int
    worker_id: str
    policy: str
    removed: RemovedData
    recommendation_tombstone: bool = True
    excluded_from_training: bool = True
    repeated: bool = False  # a replayed request, carried out before: ``removed`` is in the first record

    def to_json(self) -> bytes:
        return orjson.dumps({"v": FORGET_VERSION, **asdict(self)})

    @classmethod
    def from_json(cls, raw: bytes) -> "ForgetAudit":
        doc = orjson.loads(raw)
        removed = RemovedData(int(doc["removed"]["window_events"]), bool(doc["removed"]["user_state"]))
        return cls(
            str(doc["request_id"]), str(doc["user_hash"]), str(doc.get("requested_by", "")),
            int(doc["requested_at_ms"]), int(doc["forgotten_at_ms"]), int(doc["completed_at_ms"]),
            str(doc.get("worker_id", "")), str(doc.get("policy", "")), removed,
            bool(doc.get("recommendation_tombstone", True)), bool(doc.get("excluded_from_training", True)),
            bool(doc.get("repeated", False)),
        )


def parse_forget_request(raw: bytes | None, *, default_id: str, max_id_length: int) -> ForgetRequest | Rejection:
    """A request from a record's value, or why it is not one (it is then dead-lettered)."""

    def invalid(detail: str, field: str | None = None) -> Rejection:
        return Rejection(Reason.INVALID_FORGET_REQUEST, detail, field)

    if not raw:
        return invalid("empty value: a forget request is a JSON object with a user_id")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return invalid(f"not JSON: {exc}")
    if not isinstance(doc, dict):
        return invalid("not a JSON object")
    if doc.get("v", FORGET_VERSION) != FORGET_VERSION:
        return invalid(f"unsupported version {doc.get('v')!r} (this worker reads {FORGET_VERSION})", "v")
    user_id = doc.get("user_id")
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        user_id = str(user_id)  # as events accept integer ids
    if not isinstance(user_id, str) or not user_id:
        return invalid("user_id must be a non-empty string", "user_id")
    if len(user_id) > max_id_length:
        return invalid(f"user_id longer than {max_id_length} characters", "user_id")
    requested_at = doc.get("requested_at_ms")
    if requested_at is not None and (isinstance(requested_at, bool) or not isinstance(requested_at, int) or requested_at < 0):
        return invalid("requested_at_ms must be epoch milliseconds", "requested_at_ms")
    texts = {name: doc.get(name, "") for name in ("request_id", "requested_by", "reason")}
    for name, value in texts.items():
        if not isinstance(value, str) or len(value) > 1024:
            return invalid(f"{name} must be a string of at most 1024 characters", name)
    return ForgetRequest(user_id, texts["request_id"] or default_id, texts["requested_by"], requested_at, texts["reason"])


class Forgetter:
    """Carries out forget requests in a worker, beside (and between) its event batches."""

    def __init__(
        self, settings: Settings, processor: BatchProcessor, *, partition_count: Callable[[], int | None],
        worker_id: str, clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._processor = processor
        self._partition_count = partition_count  # of the forget topic
        self._worker_id = worker_id
        self._clock = clock

    async def handle(self, record: SourceRecord) -> ForgetAudit | None:
        """Carry out one request (idempotent); returns its audit, or None when it was re-routed or invalid."""
        processor, metrics = self._processor, self._processor.metrics
        request = parse_forget_request(
            record.value, default_id=f"{record.topic}/{record.partition}/{record.offset}",
            max_id_length=self._settings.max_id_length,
        )
        if isinstance(request, Rejection):
            await processor.outputs.deliver([await processor.dead_letter(record, request)])
            metrics.forget_requests.labels("invalid").inc()
            return None
        key = request.user_id.encode()
        owner = self._owner(key)
        if owner is not None and (record.key != key or record.partition != owner):
            # The owner of the user's events must carry it out: it holds the user's cached window.
            await processor.outputs.deliver([await processor.outputs.send(Output(self._settings.forget_topic, key, record.value, owner))])
            metrics.forget_requests.labels("rerouted").inc()
            return None

        now_ms = int(self._clock() * 1000)
        requested_at = request.requested_at_ms if request.requested_at_ms is not None else record.timestamp_ms or now_ms
        # Never in the future: that would drop the user's new events until then.
        forgotten_at = min(requested_at, now_ms)
        hashed = user_hash(request.user_id)
        done = await processor.store_calls.retry("forget check", lambda: processor.store.forget_mark(hashed))
        repeated = done is not None and done.request_id == request.request_id
        if repeated and done is not None:
            # A replay of a request carried out before (its mark is stored last): doing it again would
            # delete what the user did since. Its audit record may not have been delivered: send it again.
            removed, forgotten_at = RemovedData(0, False), done.forgotten_at_ms
            metrics.forget_requests.labels("repeated").inc()
        else:
            mark = ForgetMark(hashed, forgotten_at, 0, request.request_id)
            async with processor.between_batches:
                mark = processor.forget_now(request.user_id, mark)
                tombstone = await processor.outputs.send(Output(self._settings.recommendations_topic, key, None))
            await processor.outputs.deliver([tombstone])
            result = await processor.store_calls.retry("forget", lambda: processor.store.forget_user(request.user_id, mark))
            processor.forgotten_at(request.user_id, replace(mark, deleted_us=result.deleted_us))
            removed = RemovedData(result.window_events, result.had_state)
            metrics.forget_requests.labels("done").inc()
        audit = ForgetAudit(
            request.request_id, hashed, request.requested_by, requested_at, forgotten_at, int(self._clock() * 1000),
            self._worker_id, self._settings.forget_policy, removed, repeated=repeated,
        )
        audited = await processor.outputs.send(Output(self._settings.forget_audit_topic, request.request_id.encode(), audit.to_json()))
        await processor.outputs.deliver([audited])
        return audit

    def _owner(self, key: bytes) -> int | None:
        """The forget partition the user's owner reads, when the two topics are co-partitioned (else None)."""
        events = self._processor.partition_count()
        forget = self._partition_count()
        if not events or forget != events:
            return None  # not co-partitioned: handled here (the worker warned at start-up)
        return owner_partition(key, events)


# --------------------------------------------------------------------------- #
# client (`streamrec forget user ID`)
# --------------------------------------------------------------------------- #
def default_requester() -> str:
    """Who is asking, for the audit record: ``user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


async def request_forget(
    settings: Settings, user_id: str, *, requested_by: str, reason: str = "", wait_s: float = 60.0,
    partitions: int | None = None,
) -> tuple[ForgetRequest, ForgetAudit | None]:
    """Produce a forget request for ``user_id`` and wait up to ``wait_s`` for its audit record (None: not yet).

    ``partitions`` is the forget topic's partition count (the request goes to
    the partition of the user's owner); the topics must exist.
    """
    request = ForgetRequest(user_id, uuid.uuid4().hex, requested_by, int(time.time() * 1000), reason)
    audit_tp = TopicPartition(settings.forget_audit_topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
                                **settings.kafka_client_kwargs())
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", **settings.kafka_client_kwargs())
    try:
        await consumer.start()
        await producer.start()
        consumer.assign([audit_tp])
        await consumer.seek_to_end(audit_tp)
        await consumer.position(audit_tp)  # fix the start before the request exists
        key = user_id.encode()
        partition = owner_partition(key, partitions) if partitions else None
        await producer.send_and_wait(settings.forget_topic, request.to_json(), key=key, partition=partition)
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            batch = await consumer.getmany(audit_tp, timeout_ms=int(min(left, 1.0) * 1000))
            for record in batch.get(audit_tp, []):
                try:
                    audit = ForgetAudit.from_json(record.value)
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue  # not ours to judge: some other writer's record
                if audit.request_id == request.request_id:
                    return request, audit
        return request, None
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        raise ForgetError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    finally:
        await producer.stop()
        await consumer.stop()
