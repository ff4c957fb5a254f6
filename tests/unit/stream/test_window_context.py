"""Windows keep the context values the served model reads: storage form (old and new), size, and the processor."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest

from streamrec.config import Settings
from streamrec.models.features import MAX_CONTEXT_VALUE_CHARS, UserSequence
from streamrec.onnx.runtime import TopK
from streamrec.stream.processor import BatchProcessor, SourceRecord
from streamrec.stream.state.memory import InMemoryStore
from streamrec.stream.window import WindowDecodeError, WindowEntry, decode_window, encode_window, user_sequence, window_context
from tests.unit.stream.test_processor import RecordingSink

# What a worker before the context view wrote for a two-event window (the format is unchanged for it).
OLD_BYTES = b'[1,["e1","i1","view",1700000000000],["e2","i2","click",1700000001000]]'


def test_a_window_stored_before_the_context_view_still_decodes_and_reencodes_to_the_same_bytes() -> None:
    window = decode_window(OLD_BYTES)
    assert window == [WindowEntry("e1", "i1", "view", 1_700_000_000_000), WindowEntry("e2", "i2", "click", 1_700_000_001_000)]
    assert all(e.context is None for e in window)
    assert encode_window(window) == OLD_BYTES
    assert user_sequence(window).contexts is None


def test_entries_with_context_round_trip_beside_entries_without() -> None:
    window = [WindowEntry("e1", "i1", "view", 1, None), WindowEntry("e2", "i2", "view", 2, {"device": "tv"})]
    data = encode_window(window)
    assert data == b'[1,["e1","i1","view",1],["e2","i2","view",2,{"device":"tv"}]]'
    assert decode_window(data) == window
    assert user_sequence(decode_window(data)).contexts == [None, {"device": "tv"}]


def test_the_window_grows_only_by_the_configured_keys() -> None:
    raw = {"device": "tv", "location": "Paris, 5th arrondissement", "channel": "push", "debug": "x" * 500}
    plain = [WindowEntry(f"e{n}", f"i{n}", "view", n, window_context(raw, ())) for n in range(50)]
    keyed = [WindowEntry(f"e{n}", f"i{n}", "view", n, window_context(raw, ("device",))) for n in range(50)]
    assert encode_window(plain) == encode_window([WindowEntry(f"e{n}", f"i{n}", "view", n) for n in range(50)])
    grown = len(encode_window(keyed)) - len(encode_window(plain))
    assert grown == 50 * len(b',{"device":"tv"}')


@pytest.mark.parametrize("bad", [
    b'[1,["e1","i1","view",1,"tv"]]',           # a context that is not an object
    b'[1,["e1","i1","view",1,{},7]]',           # too many fields
])
def test_malformed_stored_rows_are_decode_errors(bad: bytes) -> None:
    with pytest.raises(WindowDecodeError):
        decode_window(bad)


def test_window_context_never_raises_and_caps_values() -> None:
    keys = ("device", "channel", "n")
    raw = {"device": "x" * 100_000, "channel": {"deep": [1, 2, {"a": None}]}, "n": 12.5, "ignored": "y"}
    kept = window_context(raw, keys)
    assert kept is not None and set(kept) == set(keys)
    assert all(type(v) is str and len(v) <= MAX_CONTEXT_VALUE_CHARS for v in kept.values())
    assert kept["n"] == "12.5"
    for not_an_object in (None, [], "tv", 3):
        assert window_context(not_an_object, keys) is None
    assert window_context({"device": None}, keys) is None


class ContextModel:
    """A stand-in served model with context keys; records the sequences it was asked about."""

    version = 1
    context_keys = ("device",)

    def __init__(self) -> None:
        self.seen: list[UserSequence] = []

    def recommend(self, sequences, k, exclude_seen=True):
        self.seen.extend(sequences)
        return [TopK(["x1", "x2"][:k], [2.0, 1.0][:k], np.zeros(4, dtype=np.float32)) for _ in sequences]


def _record(n: int, context: object, offset: int) -> SourceRecord:
    event = {"event_id": f"e{n}", "user_id": "u1", "item_id": f"i{n}", "event_type": "view",
             "ts": 1_700_000_000_000 + n}
    if context is not ...:
        event["context"] = context
    return SourceRecord("streamrec.events", 0, offset, b"u1", orjson.dumps(event), 1_700_000_000_000)


def test_the_worker_keeps_the_live_models_keys_in_the_window_and_the_model_sees_them() -> None:
    model = ContextModel()
    store = InMemoryStore()
    processor = BatchProcessor(Settings(window_size=10, top_k=2), store, RecordingSink(), model=lambda: model,
                               retry_max_delay_s=0.01)
    records = [
        _record(1, {"device": "tv", "location": "Paris"}, 0),
        _record(2, ..., 1),                                   # no context
        _record(3, {"device": 42}, 2),                        # a number: stringified
        _record(4, {"device": "z" * 10_000}, 3),              # huge: cut
        _record(5, {"device": {"nested": True}}, 4),          # an object: its JSON, cut
        _record(6, {"location": "Rome"}, 5),                  # no configured key
    ]
    report = asyncio.run(processor.process(records))
    assert report.events == 6 and report.rejected == 0
    contexts = [e.context for e in store.windows["u1"].entries]
    assert contexts == [{"device": "tv"}, None, {"device": "42"}, {"device": "z" * MAX_CONTEXT_VALUE_CHARS},
                        {"device": '{"nested":true}'}, None]
    assert model.seen[-1].contexts == contexts
    # A context that is not an object breaks the event contract: dead-lettered, the batch goes on.
    report = asyncio.run(processor.process([_record(7, "tv", 6), _record(8, {"device": "phone"}, 7)]))
    assert report.rejected == 1 and report.events == 1
    assert store.windows["u1"].entries[-1].context == {"device": "phone"}


def test_without_a_context_model_windows_keep_no_context() -> None:
    store = InMemoryStore()
    processor = BatchProcessor(Settings(window_size=10, top_k=2), store, RecordingSink(), retry_max_delay_s=0.01)
    asyncio.run(processor.process([_record(1, {"device": "tv"}, 0)]))
    assert store.windows["u1"].entries[0].context is None


def test_produce_from_csv_folds_context_columns_into_the_context_object(tmp_path) -> None:
    from streamrec.stream.producer import read_csv

    path = tmp_path / "events.csv"
    path.write_text("event_id,user_id,item_id,event_type,ts,context.device,context.channel\n"
                    "e1,u1,i1,view,1,tv,push\ne2,u1,i2,view,2,,\n")
    events = list(read_csv(path))
    assert events[0]["context"] == {"device": "tv", "channel": "push"} and "context.device" not in events[0]
    assert "context" not in events[1]
