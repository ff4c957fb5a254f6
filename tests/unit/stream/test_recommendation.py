"""The recommendation message: wire form, schema, round trip."""

from __future__ import annotations

import jsonschema
import numpy as np
import orjson
import pytest

from streamrec.stream.events import load_schema
from streamrec.stream.recommendation import (
    OnlineEval,
    Recommendation,
    RecommendationDecodeError,
    ScoredItem,
)


@pytest.fixture(scope="module")
def schema() -> jsonschema.Draft202012Validator:
    loaded = load_schema("recommendation")
    jsonschema.Draft202012Validator.check_schema(loaded)
    return jsonschema.Draft202012Validator(loaded)


def _rec(**changes) -> Recommendation:
    fields = dict(
        user_id="u1",
        items=(ScoredItem("i3", 2.5), ScoredItem("i9", 1.25)),
        model_version=4,
        event_id="e-77",
        event_ts_ms=1_704_067_200_000,
        emitted_at_ms=1_704_067_200_015,
        worker_id="w-1",
    )
    fields.update(changes)
    return Recommendation(**fields)


def test_wire_form(schema: jsonschema.Draft202012Validator) -> None:
    wire = orjson.loads(_rec().to_json())
    assert wire == {
        "v": 1,
        "user_id": "u1",
        "items": [{"item_id": "i3", "score": 2.5}, {"item_id": "i9", "score": 1.25}],
        "model_version": 4,
        "event_id": "e-77",
        "event_ts": 1_704_067_200_000,
        "emitted_at": 1_704_067_200_015,
        "worker_id": "w-1",
    }
    schema.validate(wire)


@pytest.mark.parametrize(
    "rec",
    [
        _rec(),
        _rec(items=()),
        _rec(online=OnlineEval(k=10, hit=True, rank=3, ndcg=0.5, previous_event_id="e-76")),
        _rec(online=OnlineEval(k=10, hit=False)),
    ],
)
def test_round_trip_and_schema(rec: Recommendation, schema: jsonschema.Draft202012Validator) -> None:
    raw = rec.to_json()
    schema.validate(orjson.loads(raw))
    assert Recommendation.from_json(raw) == rec


def test_from_ranked_accepts_numpy() -> None:
    scores = np.array([3.5, 1.0], dtype=np.float32)
    rec = Recommendation.from_ranked(
        "u1", ["i1", "i2"], scores,
        model_version=np.int64(2), event_id="e", event_ts_ms=1, emitted_at_ms=2, worker_id="w",
    )
    assert rec.items == (ScoredItem("i1", 3.5), ScoredItem("i2", 1.0))
    assert type(rec.items[0].score) is float and type(rec.model_version) is int
    assert Recommendation.from_json(rec.to_json()) == rec


def test_replay_is_recognisable() -> None:
    first = _rec(emitted_at_ms=1)
    replay = _rec(emitted_at_ms=999, worker_id="w-2")
    assert first.dedup_key == replay.dedup_key == ("u1", "e-77")


@pytest.mark.parametrize(
    "wire",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"v":2}',
    ],
)
def test_from_json_rejects_garbage(wire: bytes) -> None:
    with pytest.raises(RecommendationDecodeError):
        Recommendation.from_json(wire)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("user_id", 1),
        ("items", [{"item_id": "i1"}]),
        ("items", [{"item_id": "i1", "score": "high"}]),
        ("items", ["i1"]),
        ("model_version", "4"),
        ("model_version", True),
        ("event_ts", 1.5),
        ("worker_id", None),
        ("online", [1]),
        ("online", {"k": 10, "hit": "yes"}),
        ("online", {"k": 10, "hit": True, "rank": "1"}),
    ],
)
def test_decoder_and_schema_agree_on_bad_fields(field: str, value, schema: jsonschema.Draft202012Validator) -> None:
    wire = {**_rec().to_dict(), field: value}
    assert not schema.is_valid(wire)
    with pytest.raises(RecommendationDecodeError):
        Recommendation.from_json(orjson.dumps(wire))


def test_missing_required_field(schema: jsonschema.Draft202012Validator) -> None:
    for name in ("v", "user_id", "items", "model_version", "event_id", "event_ts", "emitted_at", "worker_id"):
        wire = _rec().to_dict()
        del wire[name]
        assert not schema.is_valid(wire)
        with pytest.raises(RecommendationDecodeError):
            Recommendation.from_dict(wire)
