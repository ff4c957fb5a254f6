"""A retrain round of a multi-view live version reads the catalogue from the items topic (real Kafka)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from streamrec.bench.new_items import build_scenario, train_scenario_model
from streamrec.config import Settings
from streamrec.onnx.artifact import load_artifact
from streamrec.onnx.content_head import load_content_head
from streamrec.stream.items import load_items, records_from_dicts
from streamrec.stream.topics import ensure_topics_sync
from tests.integration.helpers import events_as_records, produce

pytestmark = pytest.mark.integration


@pytest.mark.timeout(1800)
def test_a_multi_view_round_trains_on_the_catalogue_of_the_items_topic(isolated: Settings, tmp_path: Path) -> None:
    from streamrec.retrain.round import retrain_round

    scenario = build_scenario(num_events=6000)
    models = tmp_path / "models"
    train_scenario_model(scenario, models, isolated.state_dir / "text-encoder", epochs=2)
    settings = isolated.with_overrides(model_dir=models, retrain_min_events=100, retrain_epochs=2,
                                       retrain_holdout_frac=0.1, retrain_horizon_hours=1)
    ensure_topics_sync(settings)
    # Users of the popular cluster meet the new items (their records exist only on the items topic).
    recent = scenario.events[scenario.train_events:]
    new_ids = [i.item_id for i in scenario.new_items]
    hot_users = sorted({e["user_id"] for e in recent if scenario.cluster_of_item(e["item_id"]) == scenario.hot_cluster})
    recent += [{**recent[-1], "user_id": u, "item_id": new_ids[n % len(new_ids)], "event_id": f"new-ev-{n}",
                "ts": recent[-1]["ts"] + 1000 * (n + 1)} for n, u in enumerate(hot_users)]
    produce(settings, events_as_records(recent))

    # No catalogue yet: a multi-view round cannot represent the items, so it does not train.
    skipped = retrain_round(settings, epochs=2, announce=False)
    assert skipped.outcome == "skipped" and "catalogue" in skipped.reason

    records = records_from_dicts([i.to_dict() for i in scenario.items + scenario.new_items], "test")
    assert asyncio.run(load_items(settings, records)).produced == len(scenario.items) + len(new_ids)
    result = retrain_round(settings, epochs=2, announce=False)
    assert result.outcome in {"published", "rejected"}, result.reason
    assert result.new_items >= len(new_ids)
    candidate = load_artifact(models / f"v{result.candidate_version:06d}")
    assert candidate.config.item_content and load_content_head(candidate.path) is not None
    # The new items have their own text (from their records), not empty rows.
    state = torch.load(candidate.path / "weights.pt", weights_only=True)
    rows = candidate.vocab.lookup(new_ids)
    text = state["item_text"][rows].numpy()
    assert np.all(np.linalg.norm(text, axis=1) > 0.99)  # unit-length sentence vectors
    assert len({tuple(np.round(t, 5)) for t in text}) == len(new_ids)
