"""Forgetting a user in the worker: the processor and the handler on the in-memory store (write timestamps modelled)."""

from __future__ import annotations

import asyncio
import hashlib

import jsonschema

import orjson
import pytest

from streamrec.config import Settings
from streamrec.stream.events import Reason, Rejection, load_schema
from streamrec.stream.forget import ForgetAudit, Forgetter, ForgetRequest, parse_forget_request
from streamrec.stream.processor import BatchProcessor, SourceRecord
from streamrec.stream.forgotten import user_hash
from streamrec.stream.state.base import ForgetMark, StoredWindow, UserState
from streamrec.stream.state.memory import InMemoryStore
from tests.unit.stream.test_processor import RecordingSink, event, record

SETTINGS = Settings(window_size=5, top_k=2)
NOW_MS = 1_700_000_100_000  # after every event() timestamp


class SlowSaves(InMemoryStore):
    """Holds every save until ``release`` is set: a batch whose write is still in flight."""

    def __init__(self) -> None:
        super().__init__(clock=lambda: NOW_MS / 1000)
        self.release = asyncio.Event()

    async def save(self, windows: list[StoredWindow], states: list[UserState], ttl_s: int) -> None:
        await self.release.wait()
        await super().save(windows, states, ttl_s)


def request(user: str, request_id: str = "r1", offset: int = 0, requested_at_ms: int = NOW_MS) -> SourceRecord:
    value = orjson.dumps({"user_id": user, "request_id": request_id, "requested_at_ms": requested_at_ms})
    return SourceRecord(SETTINGS.forget_topic, 0, offset, user.encode(), value, requested_at_ms)


def setup(store: InMemoryStore, settings: Settings = SETTINGS) -> tuple[BatchProcessor, Forgetter, RecordingSink]:
    sink = RecordingSink()
    processor = BatchProcessor(settings, store, sink, retry_max_delay_s=0.01, clock=lambda: NOW_MS / 1000)
    return processor, Forgetter(settings, processor, partition_count=lambda: None, worker_id="w"), sink


def test_a_write_still_in_flight_cannot_bring_the_forgotten_window_back() -> None:
    async def scenario() -> tuple[InMemoryStore, RecordingSink, ForgetAudit | None]:
        store = SlowSaves()
        processor, forgetter, sink = setup(store)
        in_flight = await processor.begin([record(event(n), offset=n) for n in range(3)])
        audit = await forgetter.handle(request("u1"))
        store.release.set()  # the batch's write lands after the delete, with its earlier timestamp
        await in_flight.durable
        return store, sink, audit

    store, sink, audit = asyncio.run(scenario())
    assert "u1" not in store.windows and "u1" not in store.states
    recs = sink.on(SETTINGS.recommendations_topic)
    # The tombstone follows the recommendation computed from the forgotten window.
    assert [v is None for k, v in recs if k == b"u1"] == [False, True]
    assert audit is not None and audit.removed.window_events == 0  # nothing was stored yet
    assert audit.user_hash == hashlib.sha256(b"u1").hexdigest()
    assert [orjson.loads(v)["request_id"] for _, v in sink.on(SETTINGS.forget_audit_topic)] == ["r1"]


def test_the_forgotten_past_is_dropped_and_later_events_start_a_window_written_after_the_delete() -> None:
    async def scenario() -> tuple[InMemoryStore, BatchProcessor]:
        store = InMemoryStore(clock=lambda: NOW_MS / 1000)
        processor, forgetter, _ = setup(store)
        await processor.process([record(event(n), offset=n) for n in range(3)])
        audit = await forgetter.handle(request("u1"))
        assert audit is not None and audit.removed.window_events == 3 and audit.removed.user_state
        late_past = event(10, ts=NOW_MS - 1)  # produced before the request, arriving after it
        returning = event(11, ts=NOW_MS + 1)
        await processor.process([record(late_past, offset=10), record(returning, offset=11)])
        return store, processor

    store, processor = asyncio.run(scenario())
    assert [e.event_id for e in store.windows["u1"].entries] == ["e11"]
    assert store.windows["u1"].seq == 1


def test_without_a_cache_a_window_read_before_the_delete_lands_loses_its_forgotten_past() -> None:
    async def scenario() -> InMemoryStore:
        store = InMemoryStore(clock=lambda: NOW_MS / 1000)
        processor = BatchProcessor(SETTINGS, store, RecordingSink(), cache_capacity=0, clock=lambda: NOW_MS / 1000)
        await processor.process([record(event(n), offset=n) for n in range(3)])
        # Marked, but the store's delete has not happened yet (it follows the tombstone's delivery).
        async with processor.between_batches:
            processor.forget_now("u1", ForgetMark(user_hash("u1"), NOW_MS, 0, "r1"))
        await processor.process([record(event(9, ts=NOW_MS + 1), offset=9)])
        return store

    store = asyncio.run(scenario())
    assert [e.event_id for e in store.windows["u1"].entries] == ["e9"]


def test_a_restarted_worker_drops_the_forgotten_past_from_a_replay() -> None:
    async def scenario() -> InMemoryStore:
        store = InMemoryStore(clock=lambda: NOW_MS / 1000)
        processor, forgetter, _ = setup(store)
        await processor.process([record(event(n), offset=n) for n in range(3)])
        await forgetter.handle(request("u1"))
        restarted, _, _ = setup(store)
        restarted.forgotten.replace_all(await store.load_forgotten())  # as on partition assignment
        await restarted.process([record(event(n), offset=n) for n in range(3)])
        return store

    store = asyncio.run(scenario())
    assert "u1" not in store.windows


def test_a_replayed_request_is_not_carried_out_again() -> None:
    async def scenario() -> tuple[InMemoryStore, list[ForgetAudit | None]]:
        store = InMemoryStore(clock=lambda: NOW_MS / 1000)
        processor, forgetter, _ = setup(store)
        await processor.process([record(event(1), offset=1)])
        first = await forgetter.handle(request("u1"))
        await processor.process([record(event(2, ts=NOW_MS + 5), offset=2)])
        again = await forgetter.handle(request("u1"))  # the same request, consumed again
        return store, [first, again]

    store, (first, again) = asyncio.run(scenario())
    assert first is not None and not first.repeated
    assert again is not None and again.repeated
    assert [e.event_id for e in store.windows["u1"].entries] == ["e2"]  # what came after stays


def test_refuse_policy_dead_letters_new_events_of_a_forgotten_user() -> None:
    async def scenario() -> tuple[InMemoryStore, RecordingSink]:
        store = InMemoryStore(clock=lambda: NOW_MS / 1000)
        processor, forgetter, sink = setup(store, SETTINGS.with_overrides(forget_policy="refuse"))
        await forgetter.handle(request("u1"))
        await processor.process([record(event(1, ts=NOW_MS + 1), offset=1), record(event(2, user="u2"), offset=2)])
        return store, sink

    store, sink = asyncio.run(scenario())
    assert list(store.windows) == ["u2"]
    assert [orjson.loads(v)["reason"] for _, v in sink.on(SETTINGS.dlq_topic)] == ["forgotten_user"]


@pytest.mark.parametrize("raw, field", [
    (None, None),
    (b"not json", None),
    (b"[1]", None),
    (b'{"user_id": ""}', "user_id"),
    (b'{"user_id": true}', "user_id"),
    (b'{"user_id": "u", "v": 2}', "v"),
    (b'{"user_id": "u", "requested_at_ms": "yesterday"}', "requested_at_ms"),
    (b'{"user_id": "u", "requested_by": 7}', "requested_by"),
    (b'{"user_id": "' + b"x" * 300 + b'"}', "user_id"),
])
def test_a_bad_request_is_rejected_with_a_reason(raw: bytes | None, field: str | None) -> None:
    parsed = parse_forget_request(raw, default_id="t/0/1", max_id_length=256)
    assert isinstance(parsed, Rejection) and parsed.reason == Reason.INVALID_FORGET_REQUEST and parsed.field == field


def test_a_request_without_an_id_gets_its_record_coordinate_so_a_replay_is_recognised() -> None:
    parsed = parse_forget_request(b'{"user_id": 42}', default_id="t/0/1", max_id_length=256)
    assert not isinstance(parsed, Rejection)
    assert (parsed.user_id, parsed.request_id, parsed.requested_at_ms) == ("42", "t/0/1", None)


def _validator(name: str) -> "jsonschema.Draft202012Validator":
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_requests_and_audit_records_follow_their_published_schemas() -> None:
    sent = ForgetRequest("u1", "r1", "ops@host", NOW_MS, "user asked by mail")
    _validator("forget_request").validate(orjson.loads(sent.to_json()))
    store = InMemoryStore(clock=lambda: NOW_MS / 1000)
    processor, forgetter, sink = setup(store)
    asyncio.run(processor.process([record(event(1), offset=1)]))
    audit = asyncio.run(forgetter.handle(request("u1")))
    assert audit is not None
    (_, value), = sink.on(SETTINGS.forget_audit_topic)
    _validator("forget_audit").validate(orjson.loads(value))
    assert ForgetAudit.from_json(value) == audit
