"""Event in, recommendation out: real worker, real Kafka and Cassandra, a real trained model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import jsonschema
import orjson
import pytest

from streamrec.config import Settings
from streamrec.stream.events import load_schema
from streamrec.stream.generator import SyntheticConfig, generate_events
from streamrec.stream.recommendation import Recommendation
from streamrec.testing.isolation import free_port
from streamrec.testing.process import ServiceProcess
from tests.integration.helpers import events_as_records, produce, read_topic

pytestmark = pytest.mark.integration

# A strong planted sequential signal: most next items are the current item's successor.
PLANTED = dict(num_users=400, num_items=300, cluster_size=30, p_follow=0.8, p_same_cluster=0.1, p_repeat=0.02)


@pytest.fixture(scope="module")
def planted_stream() -> list[dict]:
    return list(generate_events(SyntheticConfig(num_events=12_000, seed=21, **PLANTED)))


@pytest.fixture(scope="module")
def trained_model_dir(planted_stream: list[dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamrec.onnx.writer import train_from_events

    models = tmp_path_factory.mktemp("models")
    train_from_events(planted_stream[:6000], models, epochs=25, seed=0)
    return models


@pytest.fixture
def settings(isolated: Settings, trained_model_dir: Path) -> Settings:
    return isolated.with_overrides(model_dir=trained_model_dir, topic_partitions=4)


def _recommendations(settings: Settings, min_messages: int) -> list[Recommendation]:
    raw = read_topic(settings, settings.recommendations_topic, min_messages=min_messages, timeout=120)
    return [Recommendation.from_json(v) for _, v in raw]


def test_recommendations_follow_the_schema_one_per_user_per_batch(
    settings: Settings, planted_stream: list[dict], tmp_path: Path
) -> None:
    events = planted_stream[6000:7000]
    worker = ServiceProcess.worker(settings, tmp_path / "worker.log").start()
    try:
        produce(settings, events_as_records(events))
        users = {e["user_id"] for e in events}
        raw = read_topic(settings, settings.recommendations_topic, min_messages=len(users), timeout=120)
    finally:
        worker.kill()
    schema = load_schema("recommendation")
    for key, value in raw:
        jsonschema.validate(orjson.loads(value), schema)
    recs = [Recommendation.from_json(v) for _, v in raw]
    assert {r.user_id for r in recs} == users
    assert all(key == r.user_id.encode() for (key, _), r in zip(raw, recs))
    assert {r.model_version for r in recs} == {1}
    assert all(len(r.items) == settings.top_k for r in recs)
    # One message per user per batch: never two for the same triggering event.
    assert max(Counter(r.dedup_key for r in recs).values()) == 1
    # The last message for each user was triggered by the user's last event.
    last_event = {e["user_id"]: e["event_id"] for e in events}
    last_message = {}
    for r in recs:
        last_message[r.user_id] = r.event_id
    assert last_message == last_event
    # Items in the user's window are excluded from the final recommendation.
    window: dict[str, list[str]] = {}
    for e in events:
        window.setdefault(e["user_id"], []).append(e["item_id"])
    final = {r.user_id: r for r in recs}
    for user, rec in final.items():
        assert not {i.item_id for i in rec.items} & set(window[user][-settings.window_size:])

    # Operators' view of the same user through the CLI: `inspect user` and `tail --user`.
    user = next(iter(final))
    env = {**os.environ, **settings.to_env()}
    inspected = subprocess.run([sys.executable, "-m", "streamrec", "inspect", "user", user, "--json"],
                               env=env, capture_output=True, text=True, timeout=120)
    assert inspected.returncode == 0, inspected.stderr
    report = json.loads(inspected.stdout)
    assert [e["item_id"] for e in report["window"]] == window[user][-settings.window_size:]
    assert report["recommendation"]["event_id"] == final[user].event_id
    tailed = subprocess.run([sys.executable, "-m", "streamrec", "tail", "--user", user, "--json", "--from-beginning",
                             "--timeout", "10"], env=env, capture_output=True, text=True, timeout=120)
    lines = [json.loads(line) for line in tailed.stdout.splitlines() if line.strip()]
    assert lines and {m["user_id"] for m in lines} == {user}


def test_planted_sequence_beats_popularity_by_a_wide_margin(
    settings: Settings, planted_stream: list[dict], tmp_path: Path
) -> None:
    events = planted_stream[6000:]
    # The planted chains cycle through a cluster, so the true next item is often
    # already in the window: score without excluding seen items (a setting).
    # Small batches, as at live rates: with a whole backlog in one batch, only
    # a user's first event per batch is scored (mostly session starts).
    settings = settings.with_overrides(exclude_seen=False, batch_max_events=8)
    worker = ServiceProcess.worker(settings, tmp_path / "worker.log").start()
    try:
        produce(settings, events_as_records(events))
        recs = _recommendations(settings, min_messages=len({e["user_id"] for e in events}))
        metrics = worker.metrics()
    finally:
        worker.kill()
    model_hit, popularity_hit, scored = hit_rates_from_messages(events, recs, k=10)
    print(f"hit@10 from the messages: model {model_hit:.3f}, popularity {popularity_hit:.3f} over {scored} cases")
    assert scored > 300
    assert model_hit > 2 * popularity_hit and model_hit - popularity_hit > 0.2, (model_hit, popularity_hit)
    # The worker's own live figure (online field) agrees with ours.
    online = [r.online.hit for r in recs if r.online is not None]
    assert abs(sum(online) / len(online) - model_hit) < 0.1
    assert "streamrec_online_hits_total" in metrics


def hit_rates_from_messages(events: list[dict], recs: list[Recommendation], k: int) -> tuple[float, float, int]:
    """Hit@k of each recommendation against the user's next event, and of popularity-so-far on the same cases.

    Computed by the test from the stream it produced and the messages it read,
    independent of the worker's own online evaluation.
    """
    from collections import Counter

    next_item: dict[tuple[str, str], str] = {}
    popular_at: dict[tuple[str, str], list[str]] = {}
    last_of_user: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for event in sorted(events, key=lambda e: (int(e["ts"]), e["event_id"])):
        user = str(event["user_id"])
        if user in last_of_user:
            next_item[(user, last_of_user[user])] = event["item_id"]
        counts[event["item_id"]] += 1
        last_of_user[user] = event["event_id"]
        popular_at[(user, event["event_id"])] = [item for item, _ in counts.most_common(k)]
    model_hits = popularity_hits = scored = 0
    for key, rec in {(r.user_id, r.event_id): r for r in recs}.items():
        if key not in next_item:
            continue  # the user's last event: nothing to predict
        scored += 1
        model_hits += next_item[key] in [i.item_id for i in rec.items[:k]]
        popularity_hits += next_item[key] in popular_at[key]
    return model_hits / max(1, scored), popularity_hits / max(1, scored), scored


def test_unknown_user_and_unknown_items_are_served(settings: Settings, tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    events = [
        {"event_id": f"new-{i}", "user_id": "brand-new-user", "item_id": f"never-seen-item-{i}",
         "event_type": "view", "ts": now + i}
        for i in range(3)
    ]
    worker = ServiceProcess.worker(settings, tmp_path / "worker.log").start()
    try:
        produce(settings, events_as_records(events))
        recs = _recommendations(settings, min_messages=1)
        assert worker.alive()
    finally:
        worker.kill()
    assert recs and all(r.user_id == "brand-new-user" for r in recs)
    assert len(recs[-1].items) == settings.top_k
    assert recs[-1].event_id == "new-2"


def test_demo_runs_to_completion(infra: Settings, tmp_path: Path) -> None:
    env = {**os.environ, **infra.to_env(), "STREAMREC_STATE_DIR": str(tmp_path / "state"),
           "STREAMREC_ARTIFACTS_DIR": str(infra.lib_path), "STREAMREC_WEB_PORT": str(free_port())}
    proc = subprocess.run(
        [sys.executable, "-m", "streamrec", "demo", "--events", "4000", "--users", "200", "--items", "300",
         "--epochs", "2", "--rate", "0", "--bad-records", "7", "--idle-timeout", "60"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summaries = list((tmp_path / "state" / "demo").glob("*/summary.json"))
    assert len(summaries) == 1
    summary = json.loads(summaries[0].read_text())
    assert summary["events_processed"] == summary["events_replayed"] == 2000, "the replay alone, not the history"
    assert summary["history_events"] == 2000 and summary["catch_up_seconds"] > 0
    # The servers were started under the test session's state directory, not this demo's.
    assert summary["servers_uptime_s"] is None
    assert summary["warm_up_events"] == 0, "servers this demo did not start are not warmed up"
    assert summary["dead_lettered"] == 7
    assert summary["model_version"] == 1
    assert summary["recommendations_received"] > 0
    assert "online hit@10: model vs popularity" in proc.stdout


def test_top_k_beyond_the_models_catalogue_is_a_refusal_not_a_crash_loop(settings: Settings, tmp_path: Path) -> None:
    """STREAMREC_TOP_K larger than what the model can recommend once passed the load check and failed every batch."""
    settings = settings.with_overrides(top_k=1000)  # the planted catalogue has 300 items
    events = synthetic_users_events(30)
    worker = ServiceProcess.worker(settings, tmp_path / "worker.log").start()
    try:
        produce(settings, events_as_records(events))
        recs = _recommendations(settings, min_messages=len({e["user_id"] for e in events}))
        assert worker.alive(), worker.log_tail()
        health = worker.health()
    finally:
        worker.kill()
    assert recs and all(r.model_version == 0 for r in recs), "served by the popularity fallback"
    assert health["model"] is False and "STREAMREC_TOP_K=1000" in health["model_refused"]["reason"]


def synthetic_users_events(n: int) -> list[dict]:
    now = int(time.time() * 1000)
    return [{"event_id": f"k-{i}", "user_id": f"k-user-{i % 10}", "item_id": f"i{i % 7}", "event_type": "view",
             "ts": now + i} for i in range(n)]
