"""The demo's warm-up stream: the servers see traffic, the replay's users see none of it."""

from __future__ import annotations

from collections import Counter

import orjson

from streamrec.demo import WARM_UP_PREFIX, _warm_up_events
from streamrec.stream.events import Rejection, ValidationRules, parse_event
from streamrec.stream.generator import SyntheticConfig, generate_events


def test_the_warm_up_is_the_history_again_at_the_replays_rate_under_users_of_its_own() -> None:
    events = list(generate_events(SyntheticConfig(num_users=50, num_items=40, num_events=1400, seed=0)))
    history, replay = events[:400], events[400:]
    warm_up = _warm_up_events(history, 2.0, 500.0)

    assert len(warm_up) == 1000  # 2 s at 500 events/s: the history two and a half times
    assert len({e["event_id"] for e in warm_up}) == 1000, "every pass has event ids of its own"
    assert all(e["user_id"].startswith(WARM_UP_PREFIX) for e in warm_up)
    assert not {e["user_id"] for e in warm_up} & {e["user_id"] for e in replay + history}
    # The history's items in the history's proportions: the popularity baseline keeps the stream's shape.
    assert Counter(e["item_id"] for e in warm_up[:800]) == Counter(e["item_id"] for e in history * 2)
    rules = ValidationRules()
    assert not any(isinstance(parse_event(orjson.dumps(e), rules=rules), Rejection) for e in warm_up), "no dead letters"
    assert _warm_up_events([], 2.0, 500.0) == []
