"""Retraining and hot swap with a real worker under a steady stream."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamrec.config import Settings
from streamrec.onnx.registry import ModelRegistry
from streamrec.stream.generator import SyntheticConfig, generate_events
from streamrec.stream.model_updates import announce
from streamrec.stream.recommendation import Recommendation
from streamrec.testing.process import ServiceProcess
from tests.integration.helpers import (
    events_as_records,
    expected_windows,
    paced_producer,
    produce,
    read_topic,
    wait_for_windows,
    wait_until,
)

pytestmark = pytest.mark.integration
WINDOW = 20


def stream(seed: int, n: int, item_prefix: str) -> list[dict]:
    events = list(generate_events(SyntheticConfig(num_users=150, num_items=120, cluster_size=20, num_events=n,
                                                  seed=seed, p_follow=0.7)))
    for e in events:  # a separate item namespace per phase: phase-2 items are new to model v1
        e["item_id"] = f"{item_prefix}{e['item_id']}"
        e["event_id"] = f"{item_prefix}{e['event_id']}"
    return events


@pytest.fixture
def settings(isolated: Settings, tmp_path: Path) -> Settings:
    from streamrec.onnx.writer import train_from_events

    models = tmp_path / "models"
    train_from_events(stream(1, 3000, "a-"), models, epochs=3, seed=0)
    return isolated.with_overrides(
        model_dir=models, window_size=WINDOW, batch_max_events=32, retrain_min_events=100,
        retrain_epochs=3, retrain_holdout_frac=0.1, retrain_horizon_hours=1,
    )


def test_retrain_publishes_v2_workers_switch_between_batches_and_rollback_returns(settings: Settings, tmp_path: Path) -> None:
    from streamrec.retrain.round import retrain_round

    phase1 = stream(1, 3000, "a-")[:1500]
    phase2 = stream(2, 3000, "b-")  # new items, first seen after v1
    worker = ServiceProcess.worker(settings, tmp_path / "worker.log").start()
    try:
        assert worker.health()["model_version"] == 1
        produce(settings, events_as_records(phase1 + phase2[:1500]))
        # A steady stream while the round trains and publishes.
        producer = paced_producer(settings, phase2[1500:], per_second=150)
        result = retrain_round(settings, epochs=3)
        assert result.outcome == "published", result.reason
        assert result.candidate_version == 2 and result.new_items > 0
        producer.join(timeout=120)
        wait_until(lambda: worker.health().get("model_version") == 2, 60, "the worker serving version 2")

        all_events = phase1 + phase2
        expected = expected_windows(all_events, WINDOW)
        assert wait_for_windows(settings, expected) == expected, "events lost or doubled across the switch"

        recs = [Recommendation.from_json(v) for _, v in read_topic(settings, settings.recommendations_topic, min_messages=100)]
        versions = [r.model_version for r in sorted(recs, key=lambda r: r.emitted_at_ms)]
        switch = versions.index(2)
        assert set(versions[:switch]) == {1} and set(versions[switch:]) == {2}, "not one clean switch"
        v2_items = {i.item_id for r in recs if r.model_version == 2 for i in r.items}
        assert any(item.startswith("b-") for item in v2_items), "items new since v1 are not recommended by v2"

        # Rollback with the operator's command: the worker returns to version 1 ...
        env = {**os.environ, **settings.to_env()}
        done = subprocess.run([sys.executable, "-m", "streamrec", "model", "rollback"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        wait_until(lambda: worker.health().get("model_version") == 1, 60, "the worker back on version 1")

        # ... and stays there when a stale announcement of version 2 comes along (replayed from
        # the compacted topic, say): the registry's LIVE pointer decides, not the announcement.
        registry = ModelRegistry.at(settings.models_path)
        asyncio.run(announce(settings, 2, registry.record(2).checksum, "published"))
        time.sleep(6.0)  # nothing may happen: a window past the announcement's delivery and a registry poll (5 s)
        seen = len(read_topic(settings, settings.recommendations_topic, timeout=30, idle=2.0))
        produced_at_ms = time.time() * 1000
        produce(settings, events_as_records(stream(4, 200, "d-")))
        recs = [r for r in (Recommendation.from_json(v) for _, v in
                            read_topic(settings, settings.recommendations_topic, min_messages=seen + 10))
                if r.emitted_at_ms >= produced_at_ms]
        assert recs and {r.model_version for r in recs} == {1}, "messages after the rollback must carry version 1"
        assert worker.health()["model_version"] == 1
    finally:
        worker.kill()


def test_a_corrupted_version_is_refused_and_the_worker_keeps_serving(settings: Settings, tmp_path: Path) -> None:
    registry = ModelRegistry.at(settings.models_path)
    registry.publish(1)
    worker = ServiceProcess.worker(settings, tmp_path / "worker.log").start()
    try:
        bad = registry.storage.artifact_path(2)
        shutil.copytree(registry.storage.artifact_path(1), bad)
        onnx_file = bad / "model.onnx"
        onnx_file.write_bytes(onnx_file.read_bytes()[: onnx_file.stat().st_size // 2])  # truncated
        # Forced live behind the registry's back (the registry itself refuses to publish it).
        registry.storage.replace_text("LIVE", "2\n")
        asyncio.run(announce(settings, 2, "bogus", "forced"))
        wait_until(lambda: worker.health().get("model_refused") is not None, 60, "the worker refusing version 2")
        produce(settings, events_as_records(stream(3, 300, "c-")))
        recs = [Recommendation.from_json(v) for _, v in read_topic(settings, settings.recommendations_topic, min_messages=10)]
        assert recs and {r.model_version for r in recs} == {1}
        assert worker.alive() and worker.health()["model_version"] == 1
        assert "REFUSED model" in worker.log_tail(400)
    finally:
        worker.kill()


def test_a_version_published_without_an_announcement_is_picked_up_by_the_registry_poll(
    settings: Settings, tmp_path: Path
) -> None:
    """The announcement is only a hint: a worker that missed it still follows the registry's LIVE pointer."""
    from streamrec.retrain.round import retrain_round

    worker = ServiceProcess.worker(settings, tmp_path / "worker.log").start()
    try:
        assert worker.health()["model_version"] == 1
        produce(settings, events_as_records(stream(1, 3000, "a-")[:1500] + stream(2, 3000, "b-")[:1500]))
        result = retrain_round(settings, epochs=2, announce=False)
        assert result.outcome == "published", result.reason
        assert ModelRegistry.at(settings.models_path).live_version() == result.candidate_version
        wait_until(lambda: worker.health().get("model_version") == result.candidate_version, 60,
                   "the worker serving the version the registry poll found")
        assert worker.alive()
    finally:
        worker.kill()
