"""The shadow slot in the processor: scored on the same events as live, never emitted, never hurting serving."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import orjson
import pytest

from streamrec.config import Settings
from streamrec.models.features import UserSequence
from streamrec.onnx.registry import ShadowPointer
from streamrec.retrain.gate import judge_online
from streamrec.stream.metrics import WorkerMetrics
from streamrec.stream.model_holder import ModelHolder
from streamrec.stream.online_figures import Figures, OnlineTally, Role
from streamrec.stream.processor import BatchProcessor, SourceRecord
from streamrec.stream.recommendation import Recommendation
from streamrec.stream.shadow import ShadowScorer, ShadowSlot, in_sample
from streamrec.stream.state.memory import InMemoryStore
from tests.unit.stream.test_processor import RecordingSink

SETTINGS = Settings(window_size=5, top_k=3, exclude_seen=False)


@dataclass(frozen=True)
class Ranked:
    item_ids: list[str]
    scores: list[float]
    user_vector: list[float]


@dataclass
class FixedModel:
    """Recommends the same items to everyone; records how many users it was asked about."""

    version: int
    items: list[str]
    fail: bool = False
    context_keys: tuple[str, ...] = ()
    asked: list[int] = field(default_factory=list)

    def recommend(self, sequences: Sequence[UserSequence], k: int, exclude_seen: bool = True) -> list[Ranked]:
        self.asked.append(len(sequences))
        if self.fail:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION")
        return [Ranked(self.items[:k], [1.0] * len(self.items[:k]), [0.0]) for _ in sequences]


def record(n: int, user: str, item: str) -> SourceRecord:
    value = orjson.dumps({"event_id": f"e{n}", "user_id": user, "item_id": item, "event_type": "view",
                          "ts": 1_700_000_000_000 + n})
    return SourceRecord("streamrec.events", 0, n, user.encode(), value, 1_700_000_000_000)


def build(live: FixedModel, shadow: FixedModel | None, fraction: float = 1.0):
    metrics = WorkerMetrics()
    holder = ModelHolder(loader=lambda path: shadow)
    slot = ShadowSlot(holder)
    if shadow is not None:
        holder.load_now(Path("v-shadow"))
        slot.pointer = ShadowPointer(shadow.version, fraction)
    tally = OnlineTally()
    scorer = ShadowScorer(slot, tally, metrics, top_k=SETTINGS.top_k, exclude_seen=False, capacity=1000)
    sink = RecordingSink()
    processor = BatchProcessor(SETTINGS, InMemoryStore(), sink, model=lambda: live, metrics=metrics,
                               shadow=scorer, retry_max_delay_s=0.01)
    return processor, sink, tally, metrics


def stream(users: int, rounds: int, item: Callable[[int, int], str] = lambda r, u: "good") -> list[list[SourceRecord]]:
    return [[record(r * 1000 + u, f"u{u}", item(r, u)) for u in range(users)] for r in range(rounds)]


def test_the_shadow_is_scored_beside_live_on_the_same_events_and_never_emitted() -> None:
    live = FixedModel(1, ["bad1", "bad2", "bad3"])
    shadow = FixedModel(2, ["good", "x", "y"])
    processor, sink, tally, metrics = build(live, shadow)
    for batch in stream(users=20, rounds=3):
        asyncio.run(processor.process(batch))
    recs = [Recommendation.from_json(v) for _, v in sink.on(SETTINGS.recommendations_topic)]
    assert recs and {r.model_version for r in recs} == {1}
    assert not {i.item_id for r in recs for i in r.items} & {"good", "x", "y"}, "a shadow item reached the output"
    figures = tally.drain()
    shadow_figures, live_figures = figures[(2, Role.SHADOW)], figures[(2, Role.SHADOW_LIVE)]
    # Rounds 2 and 3 score the lists of rounds 1 and 2: 40 events, the same ones for both.
    assert shadow_figures.evaluated == live_figures.evaluated == 40
    assert shadow_figures.hit_rate == 1.0 and live_figures.hit_rate == 0.0
    assert figures[(1, Role.LIVE)].evaluated == 40  # the live version's own figures, all users
    assert metrics.shadow_evaluated.labels("shadow")._value.get() == 40


def test_a_failing_shadow_leaves_serving_exactly_as_without_one() -> None:
    outputs = []
    for shadow in (None, FixedModel(2, ["good"], fail=True)):
        processor, sink, tally, metrics = build(FixedModel(1, ["a", "b", "c"]), shadow)
        for batch in stream(users=5, rounds=3):
            asyncio.run(processor.process(batch))
        outputs.append([(r.user_id, r.model_version, [i.item_id for i in r.items], r.online)
                        for r in (Recommendation.from_json(v) for _, v in sink.on(SETTINGS.recommendations_topic))])
        if shadow is not None:
            assert metrics.shadow_failures._value.get() == 3
            assert not any(role in (Role.SHADOW, Role.SHADOW_LIVE) for _, role in tally.drain())
    assert outputs[0] == outputs[1]


def test_the_shadow_encodes_only_the_sampled_users() -> None:
    shadow = FixedModel(2, ["good"])
    processor, _, _, _ = build(FixedModel(1, ["a"]), shadow, fraction=0.25)
    batch = stream(users=400, rounds=1)[0]
    asyncio.run(processor.process(batch))
    sampled = sum(in_sample(f"u{u}", 0.25) for u in range(400))
    assert shadow.asked == [sampled]
    assert 60 < sampled < 140


def test_the_sample_is_stable_and_grows_with_the_fraction() -> None:
    users = [f"user-{i}" for i in range(2000)]
    small = {u for u in users if in_sample(u, 0.1)}
    large = {u for u in users if in_sample(u, 0.5)}
    assert small <= large, "raising the fraction must keep the users already sampled"
    assert small == {u for u in users if in_sample(u, 0.1)}
    assert 140 < len(small) < 260 and 900 < len(large) < 1100
    assert all(in_sample(u, 1.0) for u in users)


@pytest.mark.parametrize(
    "shadow, live, promoted",
    [
        (Figures(1000, 300, 0), Figures(1000, 300, 0), True),
        (Figures(1000, 295, 0), Figures(1000, 300, 0), True),  # within the tolerance 0.01
        (Figures(1000, 200, 0), Figures(1000, 300, 0), False),
        (Figures(1000, 400, 0), Figures(1000, 300, 0), True),
        (Figures(), Figures(), False),  # no evidence: never promoted
    ],
)
def test_judge_online(shadow: Figures, live: Figures, promoted: bool) -> None:
    decision, reason = judge_online(shadow, live, Figures(1000, 50, 0), 0.01)
    assert decision is promoted
    assert ("hit@10" in reason) or not shadow.evaluated


def test_the_slot_scores_only_the_version_pointed_at_and_drops_it_when_the_pointer_goes() -> None:
    models = {"v2": FixedModel(2, ["a"]), "v3": FixedModel(3, ["b"])}
    holder = ModelHolder(loader=lambda path: models[path.name])
    slot = ShadowSlot(holder)
    slot.follow(ShadowPointer(2, 0.5), Path("v2"))
    holder._pending.result(timeout=10)  # noqa: SLF001 - the background load, finished
    asyncio.run(holder.maybe_swap())
    active = slot.active()
    assert active is not None and active.model.version == 2 and active.fraction == 0.5
    slot.follow(ShadowPointer(3, 0.5), Path("v3"))
    assert slot.active() is None, "version 2 must not be scored as version 3 while 3 loads"
    holder._pending.result(timeout=10)  # noqa: SLF001
    asyncio.run(holder.maybe_swap())
    assert slot.active() is not None and slot.active().model.version == 3
    slot.follow(None, None)
    assert slot.active() is None and holder.current is None


def test_a_failed_flush_keeps_the_figures_for_the_next() -> None:
    tally = OnlineTally()
    tally.add(2, Role.SHADOW, 10, 4, 2.5)
    tally.add(0, Role.LIVE, 10, 4, 2.5)  # the popularity fallback has no registry row
    pending = tally.drain()
    assert pending == {(2, Role.SHADOW): Figures(10, 4, 2_500_000)} and tally.drain() == {}
    tally.add(2, Role.SHADOW, 1, 1, 1.0)
    tally.restore(pending)
    assert tally.drain() == {(2, Role.SHADOW): Figures(11, 5, 3_500_000)}
