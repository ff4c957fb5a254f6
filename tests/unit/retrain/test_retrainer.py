"""Pure parts of the retrainer: the publish decision, vocabulary growth, warm-start weights."""

import pytest
import torch

from streamrec.models.features import ItemVocab
from streamrec.models.warm_start import grow_vocab, warm_state
from streamrec.retrain.recent import newest_share
from streamrec.retrain.round import judge


@pytest.mark.parametrize(
    "candidate, live, tolerance, publish",
    [(0.30, None, 0.0, True), (0.30, 0.30, 0.0, True), (0.31, 0.30, 0.0, True),
     (0.296, 0.30, 0.005, True), (0.29, 0.30, 0.005, False), (0.10, 0.30, 0.05, False)],
)
def test_a_worse_candidate_is_rejected_beyond_the_tolerance(candidate, live, tolerance, publish) -> None:
    decision, reason = judge(candidate, live, tolerance)
    assert decision is publish
    assert ("worse than live" in reason) is (not publish)


def test_vocabulary_grows_by_appending_so_live_indices_keep_their_rows() -> None:
    live = ItemVocab(["a", "b", "c"])
    grown, new = grow_vocab(live, ["c", "d", "a", "e", "d"])
    assert new == 2
    assert [grown.index(i) for i in ("a", "b", "c")] == [live.index(i) for i in ("a", "b", "c")]
    assert "d" in grown and "e" in grown and len(grown) == len(live) + 2


def test_warm_state_copies_live_rows_and_keeps_fresh_rows_for_new_items() -> None:
    live = {"item_emb.weight": torch.ones(4, 3), "other": torch.full((2,), 5.0)}
    fresh = {"item_emb.weight": torch.zeros(6, 3), "other": torch.zeros(2), "new_layer": torch.zeros(1)}
    state = warm_state(live, fresh)
    assert torch.equal(state["item_emb.weight"][:4], torch.ones(4, 3))
    assert torch.equal(state["item_emb.weight"][4:], torch.zeros(2, 3))
    assert torch.equal(state["other"], torch.full((2,), 5.0))
    assert torch.equal(state["new_layer"], torch.zeros(1))


def test_a_capped_round_reads_the_newest_events_of_each_partition() -> None:
    first = {"p0": 0, "p1": 100, "p2": 50}
    ends = {"p0": 600, "p1": 400, "p2": 50}  # 600 + 300 + 0 = 900 events within the horizon
    starts = newest_share(first, ends, max_events=300)
    assert starts == {"p0": 400, "p1": 300, "p2": 50}  # the newest 200 and 100: the most recent third of each
    assert newest_share(first, ends, max_events=5000) == first


def test_a_round_that_cannot_read_the_forgotten_users_does_not_train() -> None:
    from streamrec.config import Settings
    from streamrec.retrain.recent import RetrainError, forgotten_users

    nothing_there = Settings(cassandra_port=1)  # refused at once, then retried until the wait is spent
    with pytest.raises(RetrainError, match="cannot keep them out of training"):
        forgotten_users(nothing_there, wait_s=1.5)
