"""Live check (#16 part 6): items that appear mid-stream are recommended to the users they suit, before any retrain.

Real Kafka, Cassandra, worker and item embedder; a multi-view model trained
on the first half of a synthetic stream whose clusters each have a theme.
Mid-stream, five items with the theme of the most popular cluster are
produced to the items topic (and one bad record); at the end, newcomers meet
only those new items.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrec.bench.new_items import BAD_ITEM_RECORD, Scenario, build_scenario, run_live, train_scenario_model
from streamrec.config import Settings
from streamrec.onnx.artifact import load_artifact

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return build_scenario()


@pytest.fixture(scope="module")
def models_dir(scenario: Scenario, infra: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("models")
    train_scenario_model(scenario, models, infra.state_dir / "text-encoder", epochs=20)
    return models


# Training the model (fixture) takes minutes on a busy 2-core box; the live part about three.
@pytest.mark.timeout(1800)
def test_new_items_are_recommended_to_users_of_the_matching_cluster_before_any_retrain(
    isolated: Settings, scenario: Scenario, models_dir: Path, tmp_path: Path
) -> None:
    # Explanations on: a new item's `because` must come from the content vector it was ranked by.
    settings = isolated.with_overrides(model_dir=models_dir, explain=True)
    trained_vocab = load_artifact(models_dir / "v000001").vocab
    new_ids = {i.item_id for i in scenario.new_items}
    assert not any(i in trained_vocab for i in new_ids)  # the model has never seen them

    run = run_live(settings, scenario, tmp_path)
    summary = run.summary(scenario)
    print("new items live:", summary)

    # Before the item records exist nobody is offered them; afterwards the worker serves them
    # from their content, with the same model version: no retrain happened.
    assert run.before and not any(i.item_id in new_ids for r in run.before for i in r.items)
    assert summary["model_versions"] == [1]
    assert set(run.vectors_at) == new_ids  # each good record embedded once; the bad one is not
    # Users whose last event is in the cluster the new items resemble are offered them, and
    # mostly only they are: the content placed the items, not chance or a blanket boost.
    assert summary["hot_cluster_recommendations"] >= 100
    assert summary["hot_cluster_share_offered_new"] >= 0.3
    assert summary["other_share_offered_new"] <= summary["hot_cluster_share_offered_new"] / 5
    # Newcomers who so far met only new items are encoded from those items' content: they are
    # offered the items' cluster and the other new items. (Read as unknown items, as before
    # 2026-12-02, they got what an empty history gets: 0.2 of the cluster, no new item.)
    assert summary["newcomers"] == 30
    assert summary["newcomer_hot_cluster_share"] >= 0.6
    assert summary["newcomer_share_offered_new"] >= 0.5
    # Item record to a recommendation containing it: seconds.
    assert summary["record_to_first_recommendation_s"] is not None and summary["record_to_first_recommendation_s"] < 30
    # The bad record was dead-lettered with its reason, and stopped nothing.
    letters = [d for d in run.dead_letters if d.get("source_topic") == settings.items_topic]
    assert [(d["reason"], d["key_b64"] is not None) for d in letters] == [("empty_field", True)]
    assert BAD_ITEM_RECORD[0].decode() not in run.vectors_at

    # Each new item offered is explained by the user's own events, and mostly by events of the
    # cluster whose theme the item shares: the events that raised its content-vector score.
    by_event = {e["event_id"]: e for e in scenario.events}
    explained = [(rec, item) for rec, _ in run.after for item in rec.items if item.item_id in new_ids]
    # (An item no single event raised has an empty `because`: its score owes nothing to one event.)
    with_because = [(rec, item) for rec, item in explained if item.because]
    top_events = [by_event[item.because[0]] for _, item in with_because]
    assert all(by_event[rec.event_id]["user_id"] == event["user_id"] for (rec, _), event in zip(with_because, top_events))
    hot_share = sum(scenario.cluster_of_item(e["item_id"]) == scenario.hot_cluster for e in top_events) / max(1, len(top_events))
    print("new items offered:", len(explained), "with a because:", len(with_because),
          "top event in the items' cluster:", round(hot_share, 3))
    assert len(with_because) >= len(explained) / 2
    assert hot_share >= 0.5
    # Each new item is explained by its own vector: scored against one shared column (the graph's
    # OOV row, as before 2026-12-02), every new item of a message would get the same `because`.
    several = [[i.because for i in rec.items if i.item_id in new_ids] for rec, _ in run.after]
    several = [lists for lists in several if len(lists) >= 2]
    distinct = sum(len(set(lists)) > 1 for lists in several)
    print("messages with several new items:", len(several), "whose new items differ in because:", distinct)
    assert several and distinct >= len(several) / 10
