"""Shadow models against the real Kafka and Cassandra: never served, scored on the same events, gated online."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streamrec.config import Settings
from streamrec.onnx.registry import ModelRegistry
from streamrec.retrain.gate import shadow_figures
from streamrec.stream.generator import SyntheticConfig, generate_events
from streamrec.stream.online_figures import OnlineFiguresStore
from streamrec.stream.recommendation import Recommendation
from streamrec.testing.process import ServiceProcess
from tests.integration.helpers import (
    committed_lag,
    events_as_records,
    paced_producer,
    produce,
    read_topic,
    wait_until,
)

pytestmark = pytest.mark.integration
WINDOW = 20


def planted(seed: int, n: int, prefix: str) -> list[dict]:
    """A stream with a strong next-item structure (users follow item clusters), so a real model has online hits."""
    events = list(generate_events(SyntheticConfig(num_users=1000, num_items=120, cluster_size=20, num_events=n,
                                                  seed=seed, p_follow=0.7)))
    for e in events:
        e["event_id"] = f"{prefix}{e['event_id']}"
    return events


def shuffled(events: list[dict], seed: int) -> list[dict]:
    """The same events with their items shuffled: a model trained on it knows the catalogue, not the sequences."""
    items = [e["item_id"] for e in events]
    random.Random(seed).shuffle(items)
    return [{**e, "item_id": item} for e, item in zip(events, items)]


def cli(settings: Settings, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    env = {**os.environ, **settings.to_env()}
    return subprocess.run([sys.executable, "-m", "streamrec", "model", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def model_list(settings: Settings) -> dict[int, dict]:
    done = cli(settings, "list", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return {row["version"]: row for row in json.loads(done.stdout)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1 and v3: trained on shuffled events (clearly worse); v2: trained on the real sequences. Small and quick."""
    from streamrec.models.config import EncoderConfig
    from streamrec.onnx.writer import train_from_events

    history = planted(1, 3000, "h-")
    models = tmp_path_factory.mktemp("shadow") / "models"
    small = EncoderConfig(n_items=0, hidden=32, layers=1, heads=1, max_len=WINDOW)
    train_from_events(shuffled(history[:2000], 1), models, epochs=1, seed=0, model_config=small)
    train_from_events(history, models, epochs=5, seed=0, model_config=small)
    train_from_events(shuffled(history[:2000], 2), models, epochs=1, seed=1, model_config=small)
    return models


@pytest.fixture
def settings(isolated: Settings, tmp_path: Path, trained: Path) -> Settings:
    models = tmp_path / "models"
    shutil.copytree(trained, models)
    ModelRegistry.at(models).publish(1)
    return isolated.with_overrides(model_dir=models, window_size=WINDOW, batch_max_events=64,
                                   retrain_gate_tolerance=0.02)


def test_a_shadow_is_never_served_and_the_online_gate_promotes_the_better_and_rejects_the_worse(
    settings: Settings, tmp_path: Path
) -> None:
    worker = ServiceProcess.worker(settings, tmp_path / "worker.log").start()
    # The structure the good model learnt, later events. Users come in bursts (sessions): only a user's
    # first event of a micro-batch is scored against the previous recommendation.
    live_stream = planted(1, 15_000, "s-")[3000:]
    try:
        # v2 shadowed on half of the users: scored on their events, never emitted.
        done = cli(settings, "shadow", "2", "--fraction", "0.5")
        assert done.returncode == 0, done.stdout + done.stderr
        producer = paced_producer(settings, live_stream[:3000], per_second=600)
        figures_store = OnlineFiguresStore.open(settings)
        try:
            wait_until(lambda: shadow_figures(figures_store, 2)[0].evaluated >= 100, 60, "100 events scored for the shadow")
            # The worker adds the three roles' counters one row at a time while events flow: read
            # them once the stream is consumed and the last batch's figures are written.
            producer.join(timeout=60)
            wait_until(lambda: committed_lag(settings) == 0, 60, "the stream consumed")
            wait_until(lambda: len({f.evaluated for f in shadow_figures(figures_store, 2)}) == 1, 30,
                       "the shadow's, live's and popularity's figures written for the same events")
        finally:
            figures_store.close()
        figures = model_list(settings)
        assert figures[2]["status"] == "shadow" and figures[1]["status"] == "live"
        online = figures[2]["online"]
        # The same events for the three: live and popularity are scored on exactly the shadow's events.
        assert online["shadow"]["events"] == online["shadow_live"]["events"] == online["shadow_popularity"]["events"]
        assert online["shadow"]["events"] < figures[1]["online"]["live"]["events"], "only a fraction is shadowed"
        recs = [Recommendation.from_json(v)
                for _, v in read_topic(settings, settings.recommendations_topic, min_messages=200, timeout=30)]
        assert recs and {r.model_version for r in recs} == {1}, "a shadowed version reached the output"

        # The online gate: v2 against live v1 on live traffic.
        producer.join(timeout=60)
        producer = paced_producer(settings, live_stream[3000:7500], per_second=600)
        done = cli(settings, "gate", "2", "--events", "300", "--fraction", "1", "--timeout", "100", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        verdict = json.loads(done.stdout)
        assert verdict["promoted"] and verdict["shadow"]["hit@10"] > verdict["live"]["hit@10"], verdict
        registry = ModelRegistry.at(settings.models_path)
        assert registry.live_version() == 2 and registry.shadow() is None

        # v3 (shuffled, clearly worse) against the new live v2: rejected with the figures as the reason.
        producer.join(timeout=60)
        wait_until(lambda: worker.health().get("model_version") == 2, 30, "the worker serving v2")
        producer = paced_producer(settings, live_stream[7500:], per_second=600)
        done = cli(settings, "gate", "3", "--events", "300", "--fraction", "1", "--timeout", "100")
        assert done.returncode == 4, done.stdout + done.stderr
        record = registry.record(3)
        assert record.status == "rejected" and "online hit@10" in record.reason and "worse than live" in record.reason
        assert registry.live_version() == 2 and registry.shadow() is None
        producer.join(timeout=60)

        recs = [Recommendation.from_json(v)
                for _, v in read_topic(settings, settings.recommendations_topic, min_messages=1000, timeout=30)]
        assert {r.model_version for r in recs} <= {1, 2}, "a shadowed version reached the output"
        assert worker.alive()
        print("GATE v2:", verdict["reason"])
        print("GATE v3:", record.reason)
    finally:
        worker.kill()


def test_a_broken_shadow_is_refused_and_serving_goes_on(settings: Settings, tmp_path: Path) -> None:
    registry = ModelRegistry.at(settings.models_path)
    registry.start_shadow(2, 1.0)
    onnx_file = registry.storage.artifact_path(2) / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[: onnx_file.stat().st_size // 2])  # truncated after the check
    worker = ServiceProcess.worker(settings, tmp_path / "worker.log").start()
    try:
        produce(settings, events_as_records(planted(3, 600, "b-")))
        recs = [Recommendation.from_json(v)
                for _, v in read_topic(settings, settings.recommendations_topic, min_messages=50)]
        assert recs and {r.model_version for r in recs} == {1}
        wait_until(lambda: "streamrec_shadow_refusals_total 1.0" in worker.metrics(), 30, "the shadow refusal counted")
        assert worker.alive() and worker.health()["model_version"] == 1
    finally:
        worker.kill()


def test_the_retrainer_with_the_online_gate_promotes_a_candidate_that_beats_live_on_traffic(
    settings: Settings, tmp_path: Path
) -> None:
    from streamrec.retrain.round import retrain_round

    settings = settings.with_overrides(retrain_gate="online", retrain_gate_events=200, retrain_gate_timeout_s=120,
                                       retrain_min_events=100, retrain_horizon_hours=1, retrain_epochs=3)
    worker = ServiceProcess.worker(settings, tmp_path / "worker.log").start()
    traffic = planted(1, 15_000, "r-")[3000:]
    try:
        produce(settings, events_as_records(traffic[:3000]))  # what the round trains on
        producer = paced_producer(settings, traffic[3000:], per_second=300)  # what the gate is decided on
        result = retrain_round(settings, epochs=3)
        assert result.gate == "online" and result.outcome == "published", result.reason
        assert result.online["shadow"]["hit@10"] > result.online["live"]["hit@10"], result.online
        assert "online hit@10" in result.reason
        registry = ModelRegistry.at(settings.models_path)
        assert registry.live_version() == result.candidate_version == 4 and registry.shadow() is None
        producer.join(timeout=60)
        assert worker.alive()
    finally:
        worker.kill()
