"""Online evaluation: what a user was last shown, scored against their next event beside the popularity baseline."""

from __future__ import annotations

import math

from streamrec.stream.online import LastShown, OnlineScores, PopularityModel, Shown


def test_the_last_recommendation_is_scored_against_the_next_event_with_its_baseline() -> None:
    shown = LastShown(capacity=10)
    scores = OnlineScores()
    assert shown.score_next("u1", "a", scores) is None  # a first event has nothing to score
    shown.remember("u1", Shown(["x", "a", "y"], ["a"], "e1"))
    online = shown.score_next("u1", "a", scores)
    assert online is not None and online.hit and online.rank == 2 and online.previous_event_id == "e1"
    assert math.isclose(online.ndcg, 1 / math.log2(3))
    assert (scores.evaluated, scores.hits, scores.baseline_hits) == (1, 1, 1)
    assert math.isclose(scores.baseline_ndcg, 1.0)
    miss = shown.score_next("u1", "z", scores)
    assert miss is not None and not miss.hit and miss.rank is None and miss.ndcg == 0.0


def test_the_least_recently_served_user_goes_first_and_forgetting_drops_a_user() -> None:
    shown = LastShown(capacity=2)
    shown.remember("u1", Shown(["a"], [], "e1"))
    shown.remember("u2", Shown(["b"], [], "e2"))
    shown.remember("u1", Shown(["c"], [], "e3"))  # u1 served again: u2 is now the oldest
    shown.remember("u3", Shown(["d"], [], "e4"))
    assert shown.get("u2") is None and shown.get("u1") == Shown(["c"], [], "e3") and len(shown) == 2
    shown.forget("u1")
    assert shown.get("u1") is None and len(shown) == 1
    shown.clear()
    assert len(shown) == 0


def test_popularity_ties_break_by_item_id_and_new_counts_reach_the_top() -> None:
    popularity = PopularityModel()
    for item in ["b", "a", "c", "c"]:
        popularity.observe(item)
    assert popularity.top(3) == [("c", 2), ("b", 1), ("a", 1)]
    for _ in range(3):
        popularity.observe("d")
    assert popularity.top(2) == [("d", 3), ("c", 2)]
