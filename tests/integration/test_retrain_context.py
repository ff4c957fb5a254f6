"""A retrain round of a live version with context keys learns from the context the events topic carries (real Kafka)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from streamrec.config import Settings
from streamrec.models.config import EncoderConfig
from streamrec.models.features import UserSequence
from streamrec.onnx.runtime import ServedModel
from streamrec.onnx.writer import train_from_events
from streamrec.stream.generator import ContextWorldConfig, context_events
from streamrec.stream.topics import ensure_topics_sync
from tests.integration.helpers import events_as_records, produce

pytestmark = pytest.mark.integration

WORLD = ContextWorldConfig(num_users=240, pairs_per_user=6, group_size=4, seed=1)


def follows_the_context(model: ServedModel) -> bool:
    """The same item history on each device: that device's items come first, none of the other's."""
    for device, other in (("tv", "phone"), ("phone", "tv")):
        top = model.recommend([UserSequence(["n3"], ["view"], [0], [{"device": device}])], k=4)[0].item_ids
        if sum(i.startswith(f"{device}-") for i in top) < 2 or any(i.startswith(f"{other}-") for i in top):
            return False
    return True


@pytest.mark.timeout(1800)
def test_a_context_round_keeps_the_keys_and_learns_from_the_context_on_the_events_topic(
    isolated: Settings, tmp_path: Path
) -> None:
    from streamrec.retrain.round import retrain_round

    models = tmp_path / "models"
    small = EncoderConfig(n_items=0, hidden=32, layers=1, heads=2)
    # The live version reads context.device but has barely trained: it does not follow the device yet.
    live_path = train_from_events(context_events(WORLD), models, epochs=1, context_keys=("device",), model_config=small)
    live = ServedModel.load(live_path, device="cpu", threads=1)
    assert live.config.context_keys == ("device",) and not follows_the_context(live)

    settings = isolated.with_overrides(model_dir=models, retrain_min_events=100, retrain_epochs=12,
                                       retrain_holdout_frac=0.1, retrain_horizon_hours=1)
    ensure_topics_sync(settings)
    # Recent traffic of the same world, as any producer sends it: the context travels in each event.
    produce(settings, events_as_records(context_events(replace(WORLD, seed=2))))

    result = retrain_round(settings, epochs=12, announce=False)
    assert result.outcome in {"published", "rejected"}, result.reason
    candidate = ServedModel.load(models / f"v{result.candidate_version:06d}", device="cpu", threads=1)
    # The candidate keeps the live version's keys and values, and learned the device from the topic's events:
    # had the round dropped the context, no training could tell the two devices apart.
    assert candidate.config.context_keys == ("device",)
    assert candidate.config.context_values == live.config.context_values
    assert follows_the_context(candidate)
