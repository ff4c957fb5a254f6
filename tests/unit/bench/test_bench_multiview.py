"""The cold-item protocol's pieces (no training): held-out items, their cases, the popularity baseline, the tables."""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.bench.quality import (
    choose_cold_items,
    cold_cases,
    format_multi_view,
    id_only_cold_metrics,
    merge_multi_view,
    multi_view_tables,
    new_item_top_share,
    offset_for_share,
    popularity_as_of_metrics,
    popularity_metrics,
    ranks_with_offset,
    top_k_share,
    without_items,
)
from streamrec.errors import StreamrecError
from streamrec.models.data import EventLog
from streamrec.models.splits import leave_one_out


def small_log() -> EventLog:
    log = EventLog()
    rows = [("u1", "a"), ("u1", "b"), ("u1", "c"), ("u2", "a"), ("u2", "c"), ("u2", "d"), ("u3", "c"), ("u3", "a")]
    for t, (user, item) in enumerate(rows):
        log.append(user, item, "view", 1000 * t)
    return log


def test_held_out_items_never_reach_training_and_each_of_their_events_is_a_case() -> None:
    log = small_log()
    assert choose_cold_items(log.item_ids, 0.5, seed=3) == choose_cold_items(log.item_ids, 0.5, seed=3)
    assert len(choose_cold_items(log.item_ids, 0.5, seed=3)) == 2
    cold = {"c"}
    assert "c" not in without_items(log, cold).item_ids
    cases = cold_cases(log, cold)
    # u1: a b [c]; u2: a [c]; u3: [c] is first (no history), so not a case.
    assert [(c.user_id, list(c.history.item_ids), c.target) for c in cases] == [("u1", ["a", "b"], "c"), ("u2", ["a"], "c")]


def test_popularity_ranks_by_whole_log_counts_excluding_seen() -> None:
    log = small_log()  # counts: a 3, c 3, b 1, d 1
    cases = cold_cases(log, {"c"})
    # u1 has seen a and b: c ranks first; u2 has seen a: c ranks first.
    assert popularity_metrics(log, cases, ks=(1,))["recall@1"] == 1.0
    cases_d = cold_cases(log, {"d"})  # u2: seen a, c -> b and d tie with 1: ties count in the target's favour
    assert popularity_metrics(log, cases_d, ks=(1,))["recall@1"] == 1.0


def test_popularity_so_far_counts_only_the_events_before_each_case() -> None:
    log = small_log()  # u1: a0 b1 c2; u2: a3 c4 d5; u3: c6 a7 (times x 1000)
    # u2's d at t=5: before it a 2, c 2 (both seen), b 1, d 0: b ranks first. The whole-log
    # counts (b 1, d 1) tie, which counts for the target.
    cases_d = cold_cases(log, {"d"})
    assert popularity_as_of_metrics(log, cases_d, ks=(1, 2))["recall@1"] == 0.0
    assert popularity_as_of_metrics(log, cases_d, ks=(1, 2))["recall@2"] == 1.0
    assert popularity_metrics(log, cases_d, ks=(1,))["recall@1"] == 1.0


def test_tables_report_mean_std_and_the_ratio_to_popularity() -> None:
    def run(seed: int, mv: float) -> dict:
        test = {"ndcg@10": 0.1, "recall@10": 0.2, "ndcg@20": 0.12, "recall@20": 0.3}
        cold = {"recall@10": 0.0, "ndcg@10": 0.0, "recall@20": 0.0}
        return {"seed": seed, "loo_id_only": {"test": test}, "loo_multi_view": {"test": test},
                "cold": {"id_only": cold, "popularity": {**cold, "recall@10": 0.02},
                         "multi_view": {**cold, "recall@10": mv}}}

    tables = multi_view_tables([run(0, 0.06), run(1, 0.10)])
    assert tables["cold_items"]["multi-view"]["recall@10"]["mean"] == pytest.approx(0.08)
    assert tables["cold_hr10_vs_popularity"] == pytest.approx(4.0)
    assert "4.00x" in format_multi_view(tables)

    # --cold-only runs have no leave-one-out rows: that table is empty, the cold one unchanged.
    cold_only = [{k: v for k, v in run(s, mv).items() if not k.startswith("loo_")} for s, mv in ((0, 0.06), (1, 0.10))]
    tables = multi_view_tables(cold_only)
    assert tables["leave_one_out"] == {} and tables["loo_ndcg10_diff"] is None
    assert tables["cold_hr10_vs_popularity"] == pytest.approx(4.0)
    assert "4.00x" in format_multi_view(tables)


def test_the_id_only_cold_row_is_a_miss_for_every_case_and_checks_its_premise() -> None:
    log = small_log()
    cold = {"c"}
    cases = cold_cases(log, cold)
    row = id_only_cold_metrics(leave_one_out(without_items(log, cold)), cases, ks=(1, 10))
    assert row["recall@10"] == row["ndcg@10"] == row["mrr"] == 0.0
    assert row["n_cases"] == len(cases) == 2
    # Had "c" reached the id-only model's training data, its row would not be zero by construction.
    with pytest.raises(StreamrecError, match="training vocabulary"):
        id_only_cold_metrics(leave_one_out(log), cases)


def test_top_k_share_counts_the_slots_of_new_items_and_skips_excluded_ones() -> None:
    inf = float("-inf")
    # Items 0-2 trained, 3-4 new (first_index 3).
    scores = np.array([[0.0, 0.1, 0.2, 0.9, 0.8],   # both new items on top
                       [0.9, 0.8, 0.7, 0.0, 0.1],   # none
                       [inf, inf, inf, 0.5, inf]])  # one finite slot, a new item
    assert top_k_share(scores[:1], 3, k=2) == 1.0
    assert top_k_share(scores[1:2], 3, k=2) == 0.0
    assert top_k_share(scores[2:], 3, k=2) == 1.0
    assert top_k_share(scores, 3, k=2) == pytest.approx(3 / 5)
    assert top_k_share(scores[:2], 3, k=10) == pytest.approx(4 / 10)  # k capped at the catalogue


def test_tables_carry_the_crowding_of_new_items() -> None:
    m = {"recall@10": 0.1, "ndcg@10": 0.05, "recall@20": 0.2}
    runs = [{"seed": s, "cold": {"id_only": m, "popularity": m, "multi_view": m, "warm_test": {"multi_view": m},
                                 "warm_test_after_adding": {**m, "ndcg@10": 0.04},
                                 "new_item_top10_share": share, "held_out_interaction_share": 0.1}}
            for s, share in ((0, 0.1), (1, 0.3))]
    tables = multi_view_tables(runs)
    assert tables["new_item_crowding"]["new_item_top10_share"]["mean"] == pytest.approx(0.2)
    assert tables["new_item_crowding"]["warm_test_ndcg10_after_adding"]["mean"] == pytest.approx(0.04)
    text = format_multi_view(tables)
    assert "top-10 slots on warm test cases: 0.200" in text and "0.0500 / 0.0400" in text


def test_the_offset_for_a_share_gives_new_items_exactly_the_slots_their_interactions_earn() -> None:
    # Items 0-3 trained, 4-5 new; k = 1: each row's single slot goes to a new item or not.
    rows = np.array([[0.0, 0.0, 0.5, 0.4, 0.9, 0.1],   # new item 4 leads by 0.4
                     [0.0, 0.0, 0.8, 0.1, 0.6, 0.2],   # trained item 2 leads new 4 by 0.2
                     [0.0, 0.0, 0.4, 0.2, 0.0, 0.1],   # trained item 2 leads new 5 by 0.3
                     [0.0, 0.0, 0.9, 0.0, 0.1, 0.0]])  # trained item 2 leads new 4 by 0.8
    chunks = [rows[:2], rows[2:]]  # chunks as case_scores yields them
    assert new_item_top_share(chunks, 4, k=1) == pytest.approx(0.25)
    # Half the slots: lift new items past the 0.2 gap, not past 0.3.
    offset = offset_for_share(chunks, 4, 0.5, k=1)
    assert 0.2 <= offset < 0.3
    assert new_item_top_share(chunks, 4, k=1, offset=offset) == pytest.approx(0.5)
    # Over-ranked new items come down: a share of 0 needs a negative offset.
    down = offset_for_share(chunks, 4, 0.0, k=1)
    assert down < -0.4 and new_item_top_share(chunks, 4, k=1, offset=down) == 0.0
    # A share no offset gives exactly (0.4 here: 0.25, then 0.5): the largest offset that stays under it.
    under = offset_for_share(chunks, 4, 0.4, k=1)
    assert 0.19 < under <= 0.2 and new_item_top_share(chunks, 4, k=1, offset=under) == pytest.approx(0.25)


def test_ranks_with_an_offset_move_only_new_items() -> None:
    scores = np.array([[0.0, 0.0, 0.5, 0.4, 0.3]])  # item 4 new, the target
    chunks = [(scores, np.array([4]))]
    assert ranks_with_offset(chunks, 4, 0.0).tolist() == [3.0]
    assert ranks_with_offset(chunks, 4, 0.15).tolist() == [2.0]
    assert ranks_with_offset(chunks, 4, 0.3).tolist() == [1.0]
    assert scores[0, 4] == 0.3  # the caller's scores are not changed


def test_tables_carry_the_cold_row_at_the_interaction_share() -> None:
    m = {"recall@10": 0.1, "ndcg@10": 0.05, "recall@20": 0.2}
    runs = [{"seed": s, "cold": {"id_only": m, "popularity": {**m, "recall@10": 0.04}, "multi_view": m,
                                 "multi_view_at_interaction_share": {**m, "recall@10": hr}}}
            for s, hr in ((0, 0.04), (1, 0.06))]
    tables = multi_view_tables(runs)
    assert tables["cold_hr10_vs_popularity"] == pytest.approx(2.5)
    assert tables["cold_hr10_at_interaction_share_vs_popularity"] == pytest.approx(1.25)
    assert "at their interaction share / popularity: 1.25x" in format_multi_view(tables)


def test_merging_results_of_separate_seeds_gives_the_table_of_all_seeds() -> None:
    m = {"recall@10": 0.1, "ndcg@10": 0.05, "recall@20": 0.2}

    def result(seed: int, hr: float, **overrides: object) -> dict:
        run = {"seed": seed, "cold": {"id_only": m, "popularity": {**m, "recall@10": 0.05},
                                      "multi_view": {**m, "recall@10": hr}}}
        base = {"data": "ml-100k", "model_config": {"hidden": 64}, "id_dropout": 0.5, "cold_frac": 0.1,
                "cold_only": True, "train_config": {"epochs": 200, "patience": 20, "seed": seed, "threads": 1},
                "runs": [run], "tables": multi_view_tables([run])}
        return {**base, **overrides}

    merged = merge_multi_view([result(2, 0.15), result(0, 0.05)])
    assert [r["seed"] for r in merged["runs"]] == [0, 2]
    assert merged["tables"]["seeds"] == 2
    assert merged["tables"]["cold_hr10_vs_popularity"] == pytest.approx(2.0)
    with pytest.raises(StreamrecError, match="twice"):
        merge_multi_view([result(0, 0.05), result(0, 0.06)])
    with pytest.raises(StreamrecError, match="id_dropout"):
        merge_multi_view([result(0, 0.05), result(1, 0.05, id_dropout=0.8)])
    with pytest.raises(StreamrecError, match="train_config"):
        merge_multi_view([result(0, 0.05), result(1, 0.05, train_config={"epochs": 60, "patience": 10, "seed": 1})])


def test_the_placement_summary_finds_what_3x_popularity_costs_warm_users() -> None:
    m = {"recall@10": 0.1, "ndcg@10": 0.05, "recall@20": 0.2}
    curve = [{"offset": 0.0, "new_item_top10_share": 0.12, "cold_hr10": 0.06, "warm_hr10": 0.20},
             {"offset": -0.1, "new_item_top10_share": 0.10, "cold_hr10": 0.05, "warm_hr10": 0.21},
             {"offset": 0.9, "new_item_top10_share": 0.30, "cold_hr10": 0.16, "warm_hr10": 0.15},
             {"offset": 0.5, "new_item_top10_share": 0.20, "cold_hr10": 0.11, "warm_hr10": 0.18}]
    run = {"seed": 4, "cold": {"id_only": m, "popularity": {**m, "recall@10": 0.05}, "multi_view": m,
                               "held_out_interaction_share": 0.1, "interaction_share_offset": -0.1, "placement": curve}}
    [seed] = multi_view_tables([run])["placement"]
    assert [p["offset"] for p in seed["curve"]] == [-0.1, 0.0, 0.5, 0.9]
    assert [p["cold_hr10_vs_popularity"] for p in seed["curve"]] == pytest.approx([1.0, 1.2, 2.2, 3.2])
    assert seed["at_3x"] == {"new_item_top10_share": 0.30, "warm_hr10": 0.15, "warm_hr10_at_interaction_share": 0.21}
    assert "0.30 of the top-10 slots" in format_multi_view(multi_view_tables([run]))
    # A curve that never reaches 3x says so.
    run["cold"]["placement"] = curve[:2]
    assert multi_view_tables([run])["placement"][0]["at_3x"] is None
    assert "not reached" in format_multi_view(multi_view_tables([run]))
