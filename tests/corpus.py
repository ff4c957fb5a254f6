"""Reusable corpus of bad event records, each with the rejection reason it must get.

Assumes the default settings (event types view/click/add_to_cart/purchase,
64 KiB records, 256-character ids, 24 h future skew). The integration tests
interleave these with valid events; unit tests check every reason.
``BAD_RECORDS`` holds raw Kafka values; ``None`` stands for a null value
(a tombstone) and is kept apart in ``NULL_RECORD`` because a list of bytes is
what most producers take.
"""

from __future__ import annotations

from typing import Any

import orjson

# Far enough ahead that it stays "in the future" for decades.
FAR_FUTURE_MS = 4_102_444_800_000  # 2100-01-01
VALID_TS_MS = 1_704_067_200_000  # 2024-01-01

_BASE: dict[str, Any] = {
    "event_id": "bad-base",
    "user_id": "u-bad",
    "item_id": "i-bad",
    "event_type": "view",
    "ts": VALID_TS_MS,
}


def _with(**changes: Any) -> bytes:
    record = {**_BASE, **changes}
    return orjson.dumps(record)


def _without(name: str) -> bytes:
    return orjson.dumps({k: v for k, v in _BASE.items() if k != name})


def _raw_base(ts_literal: str) -> bytes:
    head = b'{"event_id":"bad-lit","user_id":"u-bad","item_id":"i-bad","event_type":"view","ts":'
    return head + ts_literal.encode() + b"}"


BAD_RECORDS: list[tuple[bytes, str]] = [
    (b"", "empty_payload"),
    (_with(event_id="big", pad="x" * 70_000), "payload_too_large"),
    (b'{"event_id":"\xff\xfe","user_id":"u","item_id":"i","event_type":"view","ts":1}', "invalid_utf8"),
    (b"\xc3\x28 not utf8", "invalid_utf8"),
    (b"\xed\xa0\x80", "invalid_utf8"),  # an encoded surrogate
    (b"{", "malformed_json"),
    (b"not json at all", "malformed_json"),
    (b'{"event_id":"x",}', "malformed_json"),
    (b'{"event_id":"x","ts":NaN}', "malformed_json"),
    (b'{"event_id":"\\ud800","user_id":"u","item_id":"i","event_type":"view","ts":1}', "malformed_json"),
    (b"\xef\xbb\xbf{}", "malformed_json"),  # UTF-8 BOM
    (b"[1, 2, 3]", "not_an_object"),
    (b'"a string"', "not_an_object"),
    (b"null", "not_an_object"),
    (b"42", "not_an_object"),
    (_with(v=2), "unsupported_version"),
    (_with(v="1"), "wrong_type"),
    (_without("event_id"), "missing_field"),
    (_without("user_id"), "missing_field"),
    (_without("item_id"), "missing_field"),
    (_without("event_type"), "missing_field"),
    (_without("ts"), "missing_field"),
    (b"{}", "missing_field"),
    (_with(event_id=123), "wrong_type"),
    (_with(user_id=1.5), "wrong_type"),
    (_with(user_id=True), "wrong_type"),
    (_with(item_id=None), "wrong_type"),
    (_with(item_id=["i1"]), "wrong_type"),
    (_with(event_type=3), "wrong_type"),
    (_with(ts=True), "wrong_type"),
    (_with(ts=None), "wrong_type"),
    (_with(ts={"ms": 1}), "wrong_type"),
    (_with(session_id=["s"]), "wrong_type"),
    (_with(context="ctx"), "wrong_type"),
    (_with(context=[1]), "wrong_type"),
    (_with(event_id=""), "empty_id"),
    (_with(user_id="   "), "empty_id"),
    (_with(item_id=""), "empty_id"),
    (_with(event_id="e" * 257), "id_too_long"),
    (_with(user_id="u" * 1000), "id_too_long"),
    (_with(session_id="s" * 300), "id_too_long"),
    (_with(event_type="like"), "unknown_event_type"),
    (_with(event_type="VIEW"), "unknown_event_type"),
    (_with(event_type=""), "unknown_event_type"),
    (_with(ts="yesterday"), "bad_timestamp"),
    (_with(ts="1704067200000"), "bad_timestamp"),
    (_with(ts="2024-13-01T00:00:00Z"), "bad_timestamp"),
    (_with(ts="2024-01-01T25:00:00Z"), "bad_timestamp"),
    (_with(ts="2024-W01-1"), "bad_timestamp"),
    (_with(ts=""), "bad_timestamp"),
    (_with(ts=-1), "timestamp_negative"),
    (_with(ts=-1.5e12), "timestamp_negative"),
    (_with(ts="1969-12-31T23:59:59Z"), "timestamp_negative"),
    (_raw_base("1e400"), "timestamp_not_finite"),
    (_raw_base("-1e400"), "timestamp_not_finite"),
    (_with(ts=FAR_FUTURE_MS), "timestamp_in_future"),
    (_with(ts=1e300), "timestamp_in_future"),
    (_with(ts=2**64 - 1), "timestamp_in_future"),
    (_with(ts="2999-01-01T00:00:00Z"), "timestamp_in_future"),
]

# A Kafka record whose value is null.
NULL_RECORD: tuple[None, str] = (None, "empty_payload")

# Every reason code the corpus exercises (the unit tests check this is all of them).
REASONS_COVERED = frozenset(reason for _, reason in BAD_RECORDS)
