"""The event contract: parse_event, its rejection reasons, the JSON Schema and dead letters."""

from __future__ import annotations

import base64
import hashlib
import random
from typing import Any

import jsonschema
import orjson
import pytest

from streamrec.config import Settings
from streamrec.stream.events import (
    DeadLetter,
    Event,
    Reason,
    Rejection,
    ValidationRules,
    load_schema,
    parse_event,
    validate_event,
)
from tests.corpus import BAD_RECORDS, NULL_RECORD, REASONS_COVERED, VALID_TS_MS

NOW_MS = 1_732_300_000_000  # 2024-11-22T18:26:40Z
RULES = ValidationRules(now_ms=lambda: NOW_MS)

VALID: dict[str, Any] = {
    "event_id": "e-1",
    "user_id": "u1",
    "item_id": "i1",
    "event_type": "click",
    "ts": VALID_TS_MS,
}


def _schema(name: str) -> jsonschema.Draft202012Validator:
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


EVENT_SCHEMA = _schema("event")
DLQ_SCHEMA = _schema("dead_letter")


def _parse(record: dict[str, Any], rules: ValidationRules = RULES) -> Event | Rejection:
    return parse_event(orjson.dumps(record), rules=rules)


def _event(**changes: Any) -> Event:
    result = _parse({**VALID, **changes})
    assert isinstance(result, Event), result
    return result


def _rejection(raw: bytes | None, rules: ValidationRules = RULES) -> Rejection:
    result = parse_event(raw, rules=rules)
    assert isinstance(result, Rejection), result
    return result


# --- valid events ---------------------------------------------------------------


def test_minimal_event_parses() -> None:
    event = _event()
    assert event == Event("e-1", "u1", "i1", "click", VALID_TS_MS, None, None, 1)


def test_optional_fields_and_unknown_extras() -> None:
    event = _event(session_id="s1", context={"device": "ios", "n": [1, 2]}, future_field={"x": 1}, other=3)
    assert event.session_id == "s1"
    assert event.context == {"device": "ios", "n": [1, 2]}
    assert "future_field" not in event.to_dict()


def test_version_field_optional_and_checked() -> None:
    assert _event(v=1).v == 1
    assert "v" not in VALID and _event().v == 1
    assert _rejection(orjson.dumps({**VALID, "v": 2})).reason is Reason.UNSUPPORTED_VERSION
    for bad in ("1", 1.0, True, None):
        assert _rejection(orjson.dumps({**VALID, "v": bad})).reason is Reason.WRONG_TYPE


def test_integer_ids_are_coerced_to_strings() -> None:
    event = _event(user_id=42, item_id=0, session_id=7)
    assert (event.user_id, event.item_id, event.session_id) == ("42", "0", "7")
    assert _event(user_id=-3).user_id == "-3"
    assert _event(user_id=2**64 - 1).user_id == str(2**64 - 1)
    # event_id is the idempotency key: strings only.
    assert _rejection(orjson.dumps({**VALID, "event_id": 5})).reason is Reason.WRONG_TYPE
    assert _rejection(orjson.dumps({**VALID, "user_id": 5.0})).reason is Reason.WRONG_TYPE


def test_empty_or_null_session_means_none() -> None:
    assert _event(session_id="").session_id is None
    assert _event(session_id=None).session_id is None


@pytest.mark.parametrize(
    ("ts", "expected_ms"),
    [
        (VALID_TS_MS, VALID_TS_MS),
        (0, 0),
        (1_704_067_200_000.4, 1_704_067_200_000),
        (1_704_067_200_000.6, 1_704_067_200_001),
        (1.7040672e12, 1_704_067_200_000),
        ("2024-01-01T00:00:00Z", VALID_TS_MS),
        ("2024-01-01T00:00:00.123Z", VALID_TS_MS + 123),
        ("2024-01-01T00:00:00.123456789Z", VALID_TS_MS + 123),
        ("2024-01-01T01:00:00+01:00", VALID_TS_MS),
        ("2023-12-31T19:00:00-05:00", VALID_TS_MS),
        ("2024-01-01T00:00:00", VALID_TS_MS),  # naive = UTC
        ("2024-01-01 00:00:00", VALID_TS_MS),
        ("2024-01-01T00:00", VALID_TS_MS),
        ("2024-01-01", VALID_TS_MS),
        ("1970-01-01T00:00:00Z", 0),
    ],
)
def test_timestamp_forms(ts: Any, expected_ms: int) -> None:
    assert _event(ts=ts).ts_ms == expected_ms


def test_future_skew_is_configurable_and_relative_to_now() -> None:
    skew = RULES.max_future_skew_ms
    assert _event(ts=NOW_MS + skew).ts_ms == NOW_MS + skew
    assert _rejection(orjson.dumps({**VALID, "ts": NOW_MS + skew + 1})).reason is Reason.TIMESTAMP_IN_FUTURE
    tight = ValidationRules(max_future_skew_ms=0, now_ms=lambda: NOW_MS)
    assert _rejection(orjson.dumps({**VALID, "ts": NOW_MS + 1}), tight).reason is Reason.TIMESTAMP_IN_FUTURE


def test_canonical_round_trip() -> None:
    event = _event(user_id=9, ts="2024-01-01T00:00:00.5Z", session_id="s", context={"a": 1})
    wire = event.to_dict()
    assert wire == {
        "v": 1,
        "event_id": "e-1",
        "user_id": "9",
        "item_id": "i1",
        "event_type": "click",
        "ts": VALID_TS_MS + 500,
        "session_id": "s",
        "context": {"a": 1},
    }
    assert parse_event(event.to_json(), rules=RULES) == event
    EVENT_SCHEMA.validate(wire)


def test_accepts_bytearray_and_memoryview() -> None:
    raw = orjson.dumps(VALID)
    assert isinstance(parse_event(bytearray(raw), rules=RULES), Event)
    assert isinstance(parse_event(memoryview(raw), rules=RULES), Event)


def test_rules_from_settings() -> None:
    settings = Settings(event_types="view:1,like:5", max_event_bytes=100, max_id_length=4, max_future_skew_s=1.5)
    rules = ValidationRules.from_settings(settings, now_ms=lambda: NOW_MS)
    assert rules.event_types == frozenset({"view", "like"})
    assert (rules.max_event_bytes, rules.max_id_length, rules.max_future_skew_ms) == (100, 4, 1500)
    assert isinstance(_parse({**VALID, "event_type": "like", "event_id": "e1"}, rules), Event)
    assert _rejection(orjson.dumps({**VALID, "event_type": "click"}), rules).reason is Reason.UNKNOWN_EVENT_TYPE
    long_id = orjson.dumps({**VALID, "event_type": "view", "event_id": "e-123"})
    assert _rejection(long_id, rules).reason is Reason.ID_TOO_LONG
    big = orjson.dumps({**VALID, "event_type": "view", "event_id": "e", "pad": "x" * 100})
    assert _rejection(big, rules).reason is Reason.PAYLOAD_TOO_LARGE


def test_validate_event_on_mappings() -> None:
    assert isinstance(validate_event(VALID, rules=RULES), Event)
    assert validate_event({}, rules=RULES) == Rejection(Reason.MISSING_FIELD, "event_id is missing", "event_id")


# --- rejections -------------------------------------------------------------------


def test_corpus_covers_every_reason() -> None:
    # These are not about an event's content (tests/unit/stream/test_forget.py and test_items.py cover them).
    not_parsing = {Reason.FORGOTTEN_USER.value, Reason.INVALID_FORGET_REQUEST.value,
                   Reason.EMPTY_FIELD.value, Reason.FIELD_TOO_LONG.value}
    assert REASONS_COVERED == {reason.value for reason in Reason} - not_parsing


@pytest.mark.parametrize(("raw", "reason"), BAD_RECORDS, ids=[f"{i}-{r}" for i, (_, r) in enumerate(BAD_RECORDS)])
def test_bad_record_gets_its_reason(raw: bytes, reason: str) -> None:
    rejection = _rejection(raw)
    assert rejection.reason == reason, rejection
    assert rejection.detail


def test_null_record() -> None:
    raw, reason = NULL_RECORD
    assert _rejection(raw).reason == reason


def test_rejection_names_the_field() -> None:
    assert _rejection(orjson.dumps({**VALID, "item_id": ""})).field == "item_id"
    assert _rejection(orjson.dumps({**VALID, "ts": -5})).field == "ts"
    assert _rejection(b"{").field is None


def test_first_fault_in_contract_order_wins() -> None:
    raw = orjson.dumps({**VALID, "user_id": "", "event_type": "nope", "ts": -1})
    assert _rejection(raw).reason is Reason.EMPTY_ID


def test_non_bytes_input_is_rejected_not_raised() -> None:
    assert _rejection(12345).reason is Reason.WRONG_TYPE  # type: ignore[arg-type]
    assert _rejection("{}").reason is Reason.WRONG_TYPE  # type: ignore[arg-type]


def test_random_bytes_never_raise() -> None:
    rnd = random.Random(1234)
    for _ in range(3000):
        raw = rnd.randbytes(rnd.randrange(0, 64))
        assert isinstance(parse_event(raw, rules=RULES), (Event, Rejection))


def test_mutated_valid_records_never_raise() -> None:
    """Byte flips, insertions and truncations of valid JSON reach the deeper checks."""
    rnd = random.Random(99)
    seeds = [
        orjson.dumps({**VALID, "session_id": "s", "context": {"k": [1, 2.5, None]}}),
        orjson.dumps({**VALID, "ts": "2024-01-01T00:00:00.250+02:00", "user_id": 17}),
    ]
    alphabet = b'{}[]":,-.0123456789eE+ \\untrfalsT\xff\xc3'
    outcomes: set[str] = set()
    for _ in range(3000):
        raw = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randrange(1, 4)):
            pos = rnd.randrange(len(raw))
            op = rnd.randrange(3)
            if op == 0:
                raw[pos] = rnd.choice(alphabet)
            elif op == 1:
                raw.insert(pos, rnd.choice(alphabet))
            else:
                del raw[pos:]
                if not raw:
                    break
        result = parse_event(bytes(raw), rules=RULES)
        assert isinstance(result, (Event, Rejection))
        outcomes.add("event" if isinstance(result, Event) else result.reason.value)
    assert len(outcomes) >= 6, outcomes


def test_deeply_nested_json_is_rejected() -> None:
    raw = b'{"context":' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert isinstance(parse_event(raw, rules=RULES), Rejection)


# --- the JSON Schema agrees with the parser -------------------------------------------


def test_valid_events_validate_against_schema() -> None:
    for changes in (
        {},
        {"v": 1},
        {"user_id": 7, "item_id": 8, "session_id": 9},
        {"session_id": None, "context": None},
        {"ts": "2024-01-01T00:00:00Z"},
        {"ts": "2024-01-01 00:00:00.5+05:30"},
        {"ts": 1.7e12},
        {"extra": "ignored"},
    ):
        record = {**VALID, **changes}
        assert isinstance(_parse(record), Event), record
        EVENT_SCHEMA.validate(record)


# Reasons that depend only on the record's shape (not on configuration, the
# clock or the raw bytes): the schema must reject those records too.
STRUCTURAL = {
    Reason.NOT_AN_OBJECT,
    Reason.UNSUPPORTED_VERSION,
    Reason.MISSING_FIELD,
    Reason.WRONG_TYPE,
    Reason.EMPTY_ID,
    Reason.ID_TOO_LONG,
    Reason.TIMESTAMP_NEGATIVE,
}


def test_schema_rejects_structural_rejections() -> None:
    checked = 0
    for raw, reason in BAD_RECORDS:
        if Reason(reason) not in STRUCTURAL:
            continue
        instance = orjson.loads(raw)
        if reason == Reason.TIMESTAMP_NEGATIVE and isinstance(instance["ts"], str):
            continue  # a pattern cannot tell a pre-1970 date; the parser does
        assert not EVENT_SCHEMA.is_valid(instance), (reason, instance)
        checked += 1
    assert checked >= 25
    # Timestamp strings outside the contract's ISO form are refused by both.
    for ts in ("yesterday", "1704067200000", "2024-W01-1", "20240101T000000", ""):
        assert not EVENT_SCHEMA.is_valid({**VALID, "ts": ts})
        assert _rejection(orjson.dumps({**VALID, "ts": ts})).reason is Reason.BAD_TIMESTAMP


def test_schema_documents_the_default_limits() -> None:
    settings = Settings()
    schema = EVENT_SCHEMA.schema
    assert schema["$defs"]["id_string"]["maxLength"] == settings.max_id_length
    for name in settings.event_type_weights:
        assert name in schema["properties"]["event_type"]["examples"]


# --- dead letters ------------------------------------------------------------------------


def test_dead_letter_round_trip_and_schema() -> None:
    raw = b'{"event_id":"\xff"}'
    rejection = _rejection(raw)
    letter = DeadLetter.from_rejection(
        rejection, raw, key=b"\x00k", topic="streamrec.events", partition=3, offset=42,
        worker_id="w1", rejected_at_ms=NOW_MS, source_timestamp_ms=NOW_MS - 5,
    )
    wire = orjson.loads(letter.to_json())
    DLQ_SCHEMA.validate(wire)
    assert wire["reason"] == "invalid_utf8"
    assert base64.b64decode(wire["payload_b64"]) == raw
    assert base64.b64decode(wire["key_b64"]) == b"\x00k"
    assert (wire["source_topic"], wire["source_partition"], wire["source_offset"]) == ("streamrec.events", 3, 42)
    assert DeadLetter.from_json(letter.to_json()) == letter


def test_dead_letter_for_null_value_and_oversized_payload() -> None:
    null = DeadLetter.from_rejection(_rejection(None), None, rejected_at_ms=1)
    DLQ_SCHEMA.validate(orjson.loads(null.to_json()))
    assert null.payload is None and null.key is None and null.payload_size == 0

    big = b"x" * 1000
    letter = DeadLetter.from_rejection(
        Rejection(Reason.PAYLOAD_TOO_LARGE, "too big"), big, rejected_at_ms=1, max_payload_bytes=100
    )
    assert letter.payload == big[:100] and letter.payload_truncated and letter.payload_size == 1000
    DLQ_SCHEMA.validate(orjson.loads(letter.to_json()))


def test_dead_letter_from_json_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        DeadLetter.from_json(b'{"reason": "x"}')


@pytest.mark.parametrize("key_size, value_size", [(450_000, 10), (450_000, 520_000), (0, 1_000_000), (1_000_000, 0)])
def test_a_dead_letter_of_any_record_the_broker_accepts_fits_a_kafka_message(key_size: int, value_size: int) -> None:
    """The producer refuses requests over ~1 MB: an oversized dead letter would crash the worker on every restart."""
    key = b"k" * key_size if key_size else None
    value = b"{" * value_size
    letter = DeadLetter.from_rejection(
        Rejection(Reason.PAYLOAD_TOO_LARGE, "detail " * 100_000), value, key=key, topic="t", partition=0, offset=1,
        rejected_at_ms=1,
    )
    kafka_key = letter.kafka_key()
    assert len(letter.to_json()) + len(kafka_key or b"") < 500_000
    wire = orjson.loads(letter.to_json())
    DLQ_SCHEMA.validate(wire)
    assert wire["payload_size"] == value_size and wire["payload_sha256"] == hashlib.sha256(value).hexdigest()
    if key is not None:
        assert wire["key_size"] == key_size and wire["key_sha256"] == hashlib.sha256(key).hexdigest()
        assert wire["key_truncated"] == (key_size > 1024)
        # A long key is replaced by its digest as the dead letter's own key; a short one is kept.
        assert kafka_key == (hashlib.sha256(key).hexdigest().encode() if key_size > 1024 else key)
    assert DeadLetter.from_json(letter.to_json()) == letter
