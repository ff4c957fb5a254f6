"""Explanations: leave-one-out on the served graph, the message field, the worker hook and the planted pattern."""

from __future__ import annotations

import asyncio
from pathlib import Path

import jsonschema
import numpy as np
import orjson
import pytest
import torch

from streamrec.bench.explain import PairWorld, pair_windows, planted_rate, split_users, train_planted
from streamrec.config import Settings
from streamrec.models.config import EncoderConfig
from streamrec.models.encoder import SequenceEncoder
from streamrec.models.features import ItemVocab, UserSequence
from streamrec.onnx.explain import Explainer, without
from streamrec.onnx.runtime import ServedModel
from streamrec.onnx.writer import write_artifact
from streamrec.stream.events import load_schema
from streamrec.stream.processor import BatchProcessor, SourceRecord
from streamrec.stream.recommendation import Recommendation, ScoredItem
from streamrec.stream.state.memory import InMemoryStore
from tests.unit.stream.test_processor import RecordingSink

N_ITEMS = 30
MAX_LEN = 8


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> ServedModel:
    torch.manual_seed(3)
    vocab = ItemVocab([f"i{n}" for n in range(N_ITEMS)])
    model = SequenceEncoder(EncoderConfig(n_items=len(vocab), max_len=MAX_LEN, hidden=16, layers=2, heads=2)).eval()
    artifact = write_artifact(model, vocab, tmp_path_factory.mktemp("models"), include_fp16=False)
    encoder = ServedModel.load(artifact, device="cpu", threads=1)
    yield encoder
    encoder.close()


def sequence(items: list[int], start_ms: int = 0) -> UserSequence:
    return UserSequence([f"i{i}" for i in items], ["view"] * len(items), [start_ms + 7_000 * n for n in range(len(items))])


def all_scores(session: ServedModel, seq: UserSequence) -> dict[str, float]:
    top = session.recommend([seq], k=session.n_recommendable, exclude_seen=False)[0]
    return dict(zip(top.item_ids, top.scores))


def test_contribution_is_the_served_score_minus_the_score_without_the_event(session: ServedModel) -> None:
    seq = sequence([3, 9, 4, 17, 9, 22])
    top = session.recommend([seq], k=4)[0]
    attribution = Explainer.for_session(session).attribute([seq], [top.item_ids])[0]
    assert attribution.positions == tuple(range(6))
    np.testing.assert_allclose(attribution.scores, top.scores, atol=1e-4)
    for row, position in enumerate(attribution.positions):
        reduced = all_scores(session, without(seq, position))
        expected = [top.scores[c] - reduced[item] for c, item in enumerate(top.item_ids)]
        np.testing.assert_allclose(attribution.contributions[row], expected, atol=1e-4)


def test_only_the_newest_events_the_model_reads_are_explained(session: ServedModel) -> None:
    long = sequence(list(range(2, 14)))  # 12 events, the model reads the newest 8
    short = sequence([5, 6])
    explainer = Explainer.for_session(session)
    items = [["i20", "i21"], ["i20"]]
    full, two = explainer.attribute([long, short], items)
    assert full.positions == tuple(range(4, 12))  # positions in the given sequence, oldest first
    assert two.contributions.shape == (2, 1)
    bounded = explainer.attribute([long, short], items, max_events=3)
    assert bounded[0].positions == (9, 10, 11) and bounded[1].positions == (0, 1)
    # Bounding changes which events are explained, not their contributions.
    np.testing.assert_allclose(bounded[0].contributions, full.contributions[-3:], atol=1e-4)


def test_top_positions_keep_only_events_that_raised_the_score(session: ServedModel) -> None:
    seq = sequence([3, 9, 4, 17])
    top = session.recommend([seq], k=3)[0]
    attribution = Explainer.for_session(session).attribute([seq], [top.item_ids])[0]
    for column, positions in enumerate(attribution.top_positions(2)):
        values = [attribution.contributions[attribution.positions.index(p), column] for p in positions]
        assert all(v > 0 for v in values) and values == sorted(values, reverse=True)
        positive = int((attribution.contributions[:, column] > 0).sum())
        assert len(positions) == min(2, positive)


def test_because_is_optional_on_the_wire_and_follows_the_schema() -> None:
    plain = Recommendation.from_ranked("u1", ["i1", "i2"], [2.0, 1.0], model_version=3, event_id="e9",
                                       event_ts_ms=10, emitted_at_ms=20, worker_id="w")
    # With explanations off, the message is byte for byte what it was before the field existed.
    assert plain.to_json() == (b'{"v":1,"user_id":"u1","items":[{"item_id":"i1","score":2.0},{"item_id":"i2","score":1.0}],'
                               b'"model_version":3,"event_id":"e9","event_ts":10,"emitted_at":20,"worker_id":"w"}')
    explained = Recommendation.from_ranked("u1", ["i1", "i2"], [2.0, 1.0], model_version=3, event_id="e9",
                                           event_ts_ms=10, emitted_at_ms=20, worker_id="w", because=[["e9", "e7"], []])
    wire = orjson.loads(explained.to_json())
    jsonschema.validate(wire, load_schema("recommendation"))
    assert wire["items"][0]["because"] == ["e9", "e7"] and wire["items"][1]["because"] == []
    assert Recommendation.from_json(explained.to_json()).items[0] == ScoredItem("i1", 2.0, ("e9", "e7"))
    assert Recommendation.from_json(plain.to_json()).items[0].because is None


def test_a_bad_because_is_a_decode_error() -> None:
    raw = orjson.loads(Recommendation.from_ranked("u1", ["i1"], [1.0], model_version=1, event_id="e", event_ts_ms=1,
                                                  emitted_at_ms=1, worker_id="w").to_json())
    raw["items"][0]["because"] = "e1"
    with pytest.raises(ValueError, match="because"):
        Recommendation.from_dict(raw)


def _process(session: ServedModel, settings: Settings) -> list[Recommendation]:
    sink = RecordingSink()
    processor = BatchProcessor(settings, InMemoryStore(), sink, encoder=lambda: session, retry_max_delay_s=0.01)
    events = [{"event_id": f"e{n}", "user_id": f"u{n % 2}", "item_id": f"i{3 + n}", "event_type": "view",
               "ts": 1_700_000_000_000 + 1000 * n} for n in range(10)]
    records = [SourceRecord("streamrec.events", 0, n, e["user_id"].encode(), orjson.dumps(e), None) for n, e in enumerate(events)]
    asyncio.run(processor.process(records))
    return [Recommendation.from_json(v) for _, v in sink.on(settings.recommendations_topic)]


def test_the_worker_explains_with_event_ids_of_the_users_window_only_when_asked(session: ServedModel) -> None:
    base = Settings(window_size=4, top_k=3)
    plain = _process(session, base)
    assert all(item.because is None for rec in plain for item in rec.items)
    explained = _process(session, base.with_overrides(explain=True, explain_events=2, explain_top=2))
    assert [r.user_id for r in explained] == [r.user_id for r in plain]
    for rec, before in zip(explained, plain):
        assert [i.item_id for i in rec.items] == [i.item_id for i in before.items]  # same recommendation
        n = int(rec.user_id[1:])
        newest_two = {f"e{m}" for m in range(10) if m % 2 == n}
        newest_two = set(sorted(newest_two, key=lambda e: int(e[1:]))[-2:])
        assert all(item.because is not None and set(item.because) <= newest_two and len(item.because) <= 2
                   for item in rec.items)
    assert any(item.because for rec in explained for item in rec.items)


def test_an_explanation_failure_still_sends_the_recommendation(session: ServedModel, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(Explainer, "attribute", broken)
    recs = _process(session, Settings(window_size=4, top_k=3, explain=True))
    assert len(recs) == 2 and all(len(r.items) == 3 and r.items[0].because is None for r in recs)


@pytest.mark.slow
def test_the_planted_predecessor_is_the_top_contributor(tmp_path: Path) -> None:
    # a<j> is always followed by b<j>, nothing else predicts b<j>: when b<j> is recommended
    # and a<j> is in the window, a<j> must be b<j>'s top contributing event.
    world = PairWorld(users=300, seed=1)
    train, test = split_users(world.events())
    artifact = train_planted(tmp_path, train, epochs=8)
    encoder = ServedModel.load(artifact, device="cpu", threads=1)
    windows = pair_windows(test)
    recs = encoder.recommend(windows, k=5)
    attributions = Explainer.for_session(encoder).attribute(windows, [r.item_ids for r in recs])
    rate = planted_rate(windows, attributions, world.predecessor)
    assert rate.cases >= 100
    assert rate.rate is not None and rate.rate >= 0.8, rate


def test_the_table_marks_each_items_top_event_and_the_heat_map_is_written(tmp_path: Path) -> None:
    from streamrec.stream.explain_cli import UserExplanation, format_table, plot_heatmap
    from streamrec.stream.window import WindowEntry

    window = tuple(WindowEntry(f"e{n}", f"i{n}", "view", 1000 * n) for n in range(4))
    explanation = UserExplanation(
        user_id="u1", model_version=2, window=window, item_ids=("i7", "i8"), scores=(3.0, 2.0), positions=(1, 2, 3),
        contributions=((0.5, -0.1), (0.2, -0.3), (-0.4, -0.2)),
    )
    assert explanation.top_event(0) == 1 and explanation.top_event(1) is None  # nothing raised i8's score
    lines = format_table(explanation).splitlines()
    assert "i7" in lines[1] and "i8" in lines[1]
    assert lines[2].split()[-1] == "·" and lines[3].endswith("0.500* -0.100")  # e0 not explained; e1 tops i7
    assert "*" not in "".join(lines[4:6])
    report = explanation.to_dict()
    assert [i["top_event_id"] for i in report["items"]] == ["e1", None]
    assert report["window"][0]["contributions"] is None and report["window"][3]["contributions"] == [-0.4, -0.2]
    png = plot_heatmap(explanation, tmp_path / "out" / "u1.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
