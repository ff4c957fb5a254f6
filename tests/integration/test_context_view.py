"""The context view live: a model whose next item depends on ``context.device``, a real worker, Kafka and Cassandra.

The model is trained on the context world (``stream/generator.py``
``context_events``): after a neutral item, users on ``device=tv`` go to
``tv-*`` items and users on ``device=phone`` to ``phone-*`` items. Users with
the same item history but different devices must get their own device's
items, which only the context stored in their windows can tell apart.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from streamrec.config import Settings
from streamrec.models.features import MAX_CONTEXT_VALUE_CHARS
from streamrec.stream.events import DeadLetter
from streamrec.stream.generator import ContextWorldConfig, context_events
from streamrec.stream.recommendation import Recommendation
from streamrec.testing.process import ServiceProcess
from tests.integration.helpers import events_as_records, produce, read_topic, read_windows

pytestmark = pytest.mark.integration

TOP_K = 4


@pytest.fixture(scope="module")
def context_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamrec.models.config import EncoderConfig
    from streamrec.onnx.writer import train_from_events

    models = tmp_path_factory.mktemp("models")
    events = context_events(ContextWorldConfig(num_users=240, pairs_per_user=6, group_size=4, seed=1))
    train_from_events(events, models, epochs=12, seed=0, context_keys=("device",),
                      model_config=EncoderConfig(n_items=0, hidden=32, layers=1, heads=2))
    return models


def _event(user: str, n: int, item: str, context: object, ts: int) -> dict:
    event = {"event_id": f"{user}-{n}", "user_id": user, "item_id": item, "event_type": "view", "ts": ts}
    if context is not ...:
        event["context"] = context
    return event


def test_recommendations_follow_the_context_kept_in_the_window(isolated: Settings, context_model_dir: Path,
                                                               tmp_path: Path) -> None:
    settings = isolated.with_overrides(model_dir=context_model_dir, top_k=TOP_K)
    now = int(time.time() * 1000) - 60_000
    events: list[dict] = []
    devices: dict[str, str] = {}
    for u in range(8):
        device = ("tv", "phone")[u % 2]
        user = f"{device}-user-{u}"
        devices[user] = device
        # The same items for everyone; a first event on the other device (or none), then the defining one.
        other = "phone" if device == "tv" else "tv"
        events.append(_event(user, 0, "n5", {"device": other, "location": "Paris"} if u % 4 < 2 else ..., now + u))
        events.append(_event(user, 1, "n3", {"device": device, "location": "Paris"}, now + 1000 + u))
    # Values no producer should send: the worker keeps going (stringified, cut) and still answers.
    hostile = {"num-user": 7, "huge-user": "x" * 20_000, "obj-user": {"a": [1, 2, 3]}}
    for n, (user, value) in enumerate(hostile.items()):
        events.append(_event(user, 0, "n3", {"device": value}, now + 2000 + n))
    bad_context = _event("bad-user", 0, "n3", "tv", now + 3000)  # not an object: breaks the contract
    worker = ServiceProcess.worker(settings, tmp_path / "worker.log").start()
    try:
        produce(settings, events_as_records([*events, bad_context]))
        users = {e["user_id"] for e in events}
        raw = read_topic(settings, settings.recommendations_topic, min_messages=len(users), timeout=120)
        letters = read_topic(settings, settings.dlq_topic, min_messages=1, timeout=60)
        windows = read_windows(settings, users)
        assert worker.alive(), worker.log_tail()
    finally:
        worker.kill()

    last: dict[str, Recommendation] = {}
    for _, value in raw:
        rec = Recommendation.from_json(value)
        last[rec.user_id] = rec
    assert set(last) == users
    assert {r.model_version for r in last.values()} == {1}
    for user, device in devices.items():
        other = "phone" if device == "tv" else "tv"
        items = [i.item_id for i in last[user].items]
        assert last[user].event_id == f"{user}-1"
        assert sum(i.startswith(f"{device}-") for i in items) >= 2, (user, items)
        assert not any(i.startswith(f"{other}-") for i in items), (user, items)
    assert all(len(last[u].items) == TOP_K for u in hostile)

    # The windows in Cassandra keep the model's key only, values cut, and events without context have none.
    for user, device in devices.items():
        contexts = [e.context for e in windows[user]]
        assert contexts[-1] == {"device": device}
        assert contexts[0] in ({"device": "phone" if device == "tv" else "tv"}, None)
    assert windows["num-user"][0].context == {"device": "7"}
    assert windows["huge-user"][0].context == {"device": "x" * MAX_CONTEXT_VALUE_CHARS}
    assert windows["obj-user"][0].context == {"device": orjson.dumps({"a": [1, 2, 3]}).decode()}
    reasons = [DeadLetter.from_json(v).reason for _, v in letters]
    assert reasons == ["wrong_type"]
