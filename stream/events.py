"""The versioned event contract: parsing, validation and dead-letter records.

This is the worker's per-event hot path. :func:`parse_event` turns the raw
Kafka value into an :class:`Event` or a :class:`Rejection` and never raises
on input; the published contract is ``schemas/event.schema.json``.

Decisions (mirrored in the JSON Schema, keep both in step):

* **Version field** ``"v"``: an integer, currently ``1``. Absent means ``1``
  so that producers may omit it; any other integer is ``unsupported_version``.
  Unknown extra fields are ignored (forward compatibility): a minor addition
  does not bump ``v``, an incompatible change does.
* **``ts``** is either epoch milliseconds as a JSON number (an integer, or a
  finite float rounded to the nearest millisecond) or an ISO-8601 string in
  extended form, ``YYYY-MM-DD[(T| )hh:mm[:ss[.fraction]][Z|±hh:mm]]``. A string
  without an offset is UTC. Numeric strings are not epoch milliseconds: they
  are ``bad_timestamp``.
* **Ids**: ``user_id``, ``item_id`` and ``session_id`` may be JSON integers
  (many logs use them); they are coerced to their decimal string, so ``7`` and
  ``"7"`` are the same user. ``event_id`` must be a string: it is the
  idempotency key, and integer ids above 2**53 are silently rounded by some
  producers (JavaScript), which would merge distinct events. Ids must be
  non-empty, not only whitespace, and at most ``max_id_length`` characters.
  An empty or null ``session_id`` means no session.
* **``context``** is an optional JSON object, kept as parsed (not copied).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson

from streamrec.config import DEFAULT_EVENT_TYPES, parse_event_types

if TYPE_CHECKING:
    from streamrec.config import Settings

logger = logging.getLogger(__name__)

EVENT_VERSION = 1
DEAD_LETTER_VERSION = 1
# Kafka's default max.message.bytes (and the producers' max request size) is
# ~1 MiB, and the rejected record itself may be that big. base64 grows bytes
# by 4/3, so a dead letter keeps at most this much of the original value and
# of the original key, and always fits: 4/3 × (256 KiB + 1 KiB) + the rest.
DEFAULT_DLQ_MAX_PAYLOAD_BYTES = 256 * 1024
DLQ_MAX_KEY_BYTES = 1024
DLQ_MAX_DETAIL_CHARS = 1024

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)
# Same pattern as the JSON Schema's (anchored there with ^…$). fromisoformat
# alone is far more lenient (week dates, basic format, seconds in offsets).
_ISO_TS = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?(?:Z|[+-][0-9]{2}:[0-9]{2})?)?"
)


class Reason(StrEnum):
    """Machine-readable rejection codes (the DLQ ``reason`` and the metric label)."""

    EMPTY_PAYLOAD = "empty_payload"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_UTF8 = "invalid_utf8"
    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    UNSUPPORTED_VERSION = "unsupported_version"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    EMPTY_ID = "empty_id"
    ID_TOO_LONG = "id_too_long"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    BAD_TIMESTAMP = "bad_timestamp"
    TIMESTAMP_NEGATIVE = "timestamp_negative"
    TIMESTAMP_NOT_FINITE = "timestamp_not_finite"
    TIMESTAMP_IN_FUTURE = "timestamp_in_future"
    FORGOTTEN_USER = "forgotten_user"  # the user asked to be forgotten and STREAMREC_FORGET_POLICY=refuse
    INVALID_FORGET_REQUEST = "invalid_forget_request"  # a record on the forget topic that is not a request
    EMPTY_FIELD = "empty_field"  # an item record's title or category is empty
    FIELD_TOO_LONG = "field_too_long"  # an item record's text, category list or attributes exceed their limit


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record is not a valid event; ``field`` names the offending field, if any."""

    reason: Reason
    detail: str
    field: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """A validated event (contract version ``v``). ``ts_ms`` is epoch milliseconds, UTC."""

    event_id: str
    user_id: str
    item_id: str
    event_type: str
    ts_ms: int
    session_id: str | None = None
    context: dict[str, Any] | None = None
    v: int = EVENT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The canonical wire form: ``ts`` as epoch ms, optional fields omitted when unset."""
        out: dict[str, Any] = {
            "v": self.v,
            "event_id": self.event_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "event_type": self.event_type,
            "ts": self.ts_ms,
        }
        if self.session_id is not None:
            out["session_id"] = self.session_id
        if self.context is not None:
            out["context"] = self.context
        return out

    def to_json(self) -> bytes:
        """UTF-8 JSON of :meth:`to_dict` (what producers should send)."""
        return orjson.dumps(self.to_dict())


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _default_event_types() -> frozenset[str]:
    return frozenset(parse_event_types(DEFAULT_EVENT_TYPES))


@dataclass(frozen=True, slots=True)
class ValidationRules:
    """Limits :func:`parse_event` enforces; ``now_ms`` is injectable for tests."""

    event_types: frozenset[str] = field(default_factory=_default_event_types)
    max_event_bytes: int = 64 * 1024
    max_id_length: int = 256
    max_future_skew_ms: int = 24 * 3600 * 1000
    now_ms: Callable[[], int] = _wall_clock_ms

    @classmethod
    def from_settings(cls, settings: Settings, *, now_ms: Callable[[], int] | None = None) -> ValidationRules:
        """Rules from the settings object (event types, byte and id limits, future skew)."""
        return cls(
            event_types=frozenset(settings.event_type_weights),
            max_event_bytes=settings.max_event_bytes,
            max_id_length=settings.max_id_length,
            max_future_skew_ms=int(settings.max_future_skew_s * 1000),
            now_ms=now_ms or _wall_clock_ms,
        )


def parse_event(raw: bytes | bytearray | memoryview | None, *, rules: ValidationRules) -> Event | Rejection:
    """Parse one raw record (a Kafka value) into an :class:`Event`, or say why not.

    Never raises on input: every malformed record becomes a :class:`Rejection`.
    Checks run in a fixed order (size, encoding, JSON, shape, version, then
    fields in contract order) so a record with several faults always gets the
    same reason.
    """
    if raw is None:
        return Rejection(Reason.EMPTY_PAYLOAD, "record has no value (null)")
    if type(raw) is not bytes and not isinstance(raw, (bytes, bytearray, memoryview)):
        return Rejection(Reason.WRONG_TYPE, f"record value is {type(raw).__name__}, expected bytes")
    size = len(raw) if type(raw) is not memoryview else raw.nbytes
    if size == 0:
        return Rejection(Reason.EMPTY_PAYLOAD, "record value is empty")
    if size > rules.max_event_bytes:
        return Rejection(Reason.PAYLOAD_TOO_LARGE, f"{size} bytes > limit {rules.max_event_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _diagnose_undecodable(raw, exc, rules)
    if type(obj) is not dict:
        return Rejection(Reason.NOT_AN_OBJECT, f"top-level JSON value is {_json_type(obj)}, expected object")
    return validate_event(obj, rules=rules)


def validate_event(obj: Mapping[str, Any], *, rules: ValidationRules) -> Event | Rejection:
    """Validate an already decoded JSON object (producer helper, CSV import, tests)."""
    version = obj.get("v", EVENT_VERSION)
    if version != EVENT_VERSION or type(version) is not int:
        if type(version) is not int:
            return Rejection(Reason.WRONG_TYPE, f"v must be an integer, got {_json_type(version)}", "v")
        return Rejection(Reason.UNSUPPORTED_VERSION, f"v={version} is not supported (supported: {EVENT_VERSION})", "v")

    event_id = _check_id(obj, "event_id", rules.max_id_length, False)
    if type(event_id) is not str:
        return event_id
    user_id = _check_id(obj, "user_id", rules.max_id_length, True)
    if type(user_id) is not str:
        return user_id
    item_id = _check_id(obj, "item_id", rules.max_id_length, True)
    if type(item_id) is not str:
        return item_id

    event_type = obj.get("event_type")
    if type(event_type) is not str:
        return _absent_or_wrong(obj, "event_type", "a string")
    if event_type not in rules.event_types:
        return Rejection(Reason.UNKNOWN_EVENT_TYPE, f"event_type {event_type[:64]!r} is not configured", "event_type")

    ts_ms = _check_ts(obj, rules)
    if type(ts_ms) is not int:
        return ts_ms

    session_id = obj.get("session_id")
    if session_id is not None:
        if type(session_id) is int:
            session_id = str(session_id)
        elif type(session_id) is not str:
            expected = "a string, integer or null"
            return Rejection(
                Reason.WRONG_TYPE, f"session_id must be {expected}, got {_json_type(session_id)}", "session_id"
            )
        if not session_id:
            session_id = None
        elif len(session_id) > rules.max_id_length:
            detail = f"session_id has {len(session_id)} characters > limit {rules.max_id_length}"
            return Rejection(Reason.ID_TOO_LONG, detail, "session_id")

    context = obj.get("context")
    if context is not None and type(context) is not dict:
        return Rejection(Reason.WRONG_TYPE, f"context must be an object or null, got {_json_type(context)}", "context")

    return Event(event_id, user_id, item_id, event_type, ts_ms, session_id, context)


def _check_id(obj: Mapping[str, Any], name: str, max_len: int, allow_int: bool) -> str | Rejection:
    value = obj.get(name)
    if type(value) is not str:
        if allow_int and type(value) is int:
            value = str(value)
        else:
            return _absent_or_wrong(obj, name, "a string or integer" if allow_int else "a string")
    if not value or value.isspace():
        return Rejection(Reason.EMPTY_ID, f"{name} is empty", name)
    if len(value) > max_len:
        return Rejection(Reason.ID_TOO_LONG, f"{name} has {len(value)} characters > limit {max_len}", name)
    return value


def _check_ts(obj: Mapping[str, Any], rules: ValidationRules) -> int | Rejection:
    ts = obj.get("ts")
    kind = type(ts)
    if kind is int:
        ts_ms = ts
    elif kind is float:
        if not math.isfinite(ts):
            return Rejection(Reason.TIMESTAMP_NOT_FINITE, f"ts is {ts}", "ts")
        ts_ms = round(ts)
    elif kind is str:
        parsed = _parse_iso_ms(ts)
        if type(parsed) is not int:
            return parsed
        ts_ms = parsed
    else:
        return _absent_or_wrong(obj, "ts", "epoch milliseconds or an ISO-8601 string")
    if ts_ms < 0:
        return Rejection(Reason.TIMESTAMP_NEGATIVE, f"ts {ts_ms} ms is before 1970-01-01", "ts")
    limit = rules.now_ms() + rules.max_future_skew_ms
    if ts_ms > limit:
        return Rejection(
            Reason.TIMESTAMP_IN_FUTURE, f"ts {ts_ms} ms is more than {rules.max_future_skew_ms} ms ahead of now", "ts"
        )
    return ts_ms


def _parse_iso_ms(text: str) -> int | Rejection:
    if _ISO_TS.fullmatch(text) is None:
        detail = f"ts {text[:64]!r} is not ISO-8601 (YYYY-MM-DDThh:mm:ss[.f][Z|±hh:mm])"
        return Rejection(Reason.BAD_TIMESTAMP, detail, "ts")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        return Rejection(Reason.BAD_TIMESTAMP, f"ts {text!r}: {exc}", "ts")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return (parsed - _EPOCH) // _ONE_MS
    except OverflowError as exc:
        return Rejection(Reason.BAD_TIMESTAMP, f"ts {text!r}: {exc}", "ts")


def _absent_or_wrong(obj: Mapping[str, Any], name: str, expected: str) -> Rejection:
    if name not in obj:
        return Rejection(Reason.MISSING_FIELD, f"{name} is missing", name)
    return Rejection(Reason.WRONG_TYPE, f"{name} must be {expected}, got {_json_type(obj[name])}", name)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class _NonStandardConstant(ValueError):
    """NaN/Infinity literals: stdlib json accepts them, JSON does not."""


def _reject_constant(name: str) -> Any:
    raise _NonStandardConstant(name)


def _diagnose_undecodable(
    raw: bytes | bytearray | memoryview, exc: orjson.JSONDecodeError, rules: ValidationRules
) -> Rejection:
    """Name the fault of a record orjson refused (error path only, so cost is irrelevant)."""
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as uexc:
        return Rejection(Reason.INVALID_UTF8, f"invalid UTF-8 at byte {uexc.start}")
    # orjson refuses numbers that overflow a double (1e400); the stdlib parser
    # reads them as inf, which lets a non-finite ts get its own reason.
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return Rejection(Reason.MALFORMED_JSON, str(exc))
    if type(obj) is dict:
        verdict = validate_event(obj, rules=rules)
        if isinstance(verdict, Rejection) and verdict.reason is Reason.TIMESTAMP_NOT_FINITE:
            return verdict
    return Rejection(Reason.MALFORMED_JSON, str(exc))


def load_schema(name: str) -> dict[str, Any]:
    """A published JSON Schema by name: ``event``, ``recommendation`` or ``dead_letter``."""
    text = resources.files("streamrec.stream").joinpath("schemas", f"{name}.schema.json").read_text("utf-8")
    return json.loads(text)


# --- dead letters -------------------------------------------------------------


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text, validate=True)


def _bounded(data: bytes | bytearray | memoryview | None, limit: int) -> tuple[bytes | None, int, bool, str | None]:
    """(the first ``limit`` bytes, the full size, whether it was cut, SHA-256 hex of the whole)."""
    if data is None:
        return None, 0, False, None
    whole = bytes(data)
    return whole[:limit], len(whole), len(whole) > limit, hashlib.sha256(whole).hexdigest()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected record as published to the dead-letter topic (``schemas/dead_letter.schema.json``).

    ``payload`` and ``key`` are the original bytes (base64 on the wire, since
    they may be invalid UTF-8), each cut to a bound so that a dead letter of
    any record the broker accepted still fits in a Kafka message; the
    ``*_size`` and ``*_truncated`` fields say so, and the SHA-256 of the whole
    original value and key lets the record be found again.
    :meth:`kafka_key` is the key to publish the dead letter under.
    """

    reason: str
    detail: str
    rejected_at_ms: int
    payload: bytes | None
    payload_size: int
    payload_truncated: bool = False
    field: str | None = None
    key: bytes | None = None
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    source_timestamp_ms: int | None = None
    worker_id: str | None = None
    payload_sha256: str | None = None
    key_size: int = 0
    key_truncated: bool = False
    key_sha256: str | None = None
    v: int = DEAD_LETTER_VERSION

    def kafka_key(self) -> bytes | None:
        """The original key when it was kept whole, else its SHA-256 (hex): bounded either way."""
        if self.key_truncated:
            return (self.key_sha256 or "").encode()
        return self.key

    @classmethod
    def from_rejection(
        cls,
        rejection: Rejection,
        payload: bytes | bytearray | memoryview | None,
        *,
        key: bytes | None = None,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        source_timestamp_ms: int | None = None,
        worker_id: str | None = None,
        rejected_at_ms: int | None = None,
        max_payload_bytes: int = DEFAULT_DLQ_MAX_PAYLOAD_BYTES,
    ) -> DeadLetter:
        """Build the dead letter for ``payload`` rejected with ``rejection`` at a source coordinate."""
        value, value_size, value_cut, value_digest = _bounded(payload, max_payload_bytes)
        key_kept, key_size, key_cut, key_digest = _bounded(key, DLQ_MAX_KEY_BYTES)
        detail = rejection.detail
        if len(detail) > DLQ_MAX_DETAIL_CHARS:
            detail = detail[:DLQ_MAX_DETAIL_CHARS] + "…"
        return cls(
            reason=str(rejection.reason),
            detail=detail,
            rejected_at_ms=_wall_clock_ms() if rejected_at_ms is None else rejected_at_ms,
            payload=value,
            payload_size=value_size,
            payload_truncated=value_cut,
            field=rejection.field,
            key=key_kept,
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            source_timestamp_ms=source_timestamp_ms,
            worker_id=worker_id,
            payload_sha256=value_digest,
            key_size=key_size,
            key_truncated=key_cut,
            key_sha256=key_digest,
        )

    def to_dict(self) -> dict[str, Any]:
        """Wire form (``null`` for unknown coordinates, base64 for bytes)."""
        return {
            "v": self.v,
            "reason": self.reason,
            "detail": self.detail,
            "field": self.field,
            "payload_b64": _b64(self.payload),
            "payload_size": self.payload_size,
            "payload_truncated": self.payload_truncated,
            "key_b64": _b64(self.key),
            "source_topic": self.source_topic,
            "source_partition": self.source_partition,
            "source_offset": self.source_offset,
            "source_timestamp": self.source_timestamp_ms,
            "rejected_at": self.rejected_at_ms,
            "worker_id": self.worker_id,
            "payload_sha256": self.payload_sha256,
            "key_size": self.key_size,
            "key_truncated": self.key_truncated,
            "key_sha256": self.key_sha256,
        }

    def to_json(self) -> bytes:
        """UTF-8 JSON of :meth:`to_dict`."""
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(cls, raw: bytes | str) -> DeadLetter:
        """Decode a dead letter (DLQ consumers, tests); raises ``ValueError`` on a malformed one."""
        try:
            obj = orjson.loads(raw)
            return cls(
                reason=obj["reason"],
                detail=obj["detail"],
                rejected_at_ms=obj["rejected_at"],
                payload=_unb64(obj.get("payload_b64")),
                payload_size=obj["payload_size"],
                payload_truncated=obj.get("payload_truncated", False),
                field=obj.get("field"),
                key=_unb64(obj.get("key_b64")),
                source_topic=obj.get("source_topic"),
                source_partition=obj.get("source_partition"),
                source_offset=obj.get("source_offset"),
                source_timestamp_ms=obj.get("source_timestamp"),
                worker_id=obj.get("worker_id"),
                payload_sha256=obj.get("payload_sha256"),
                key_size=obj.get("key_size", 0),
                key_truncated=obj.get("key_truncated", False),
                key_sha256=obj.get("key_sha256"),
                v=obj.get("v", DEAD_LETTER_VERSION),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error) as exc:
            raise ValueError(f"not a dead letter: {exc}") from exc
