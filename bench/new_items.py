"""New items live: a batch of items appears mid-stream and is recommended before any retrain.

The scenario (shared by ``streamrec bench new-items`` and the integration
test ``tests/integration/test_new_items.py``): the synthetic stream's items
get content by cluster (every cluster has its own theme: titles and a
category), a multi-view model is trained on the first part of the stream,
then a real worker and a real item embedder run against Kafka and Cassandra.
Mid-stream, item records of new items whose content matches the most popular
cluster are produced to the items topic (plus one bad record). Measured: the
time from producing those records to their text vectors on the item-vectors
topic and to the first recommendation that contains one of them, and which
users are offered them (those whose last event is in that cluster, or the
others).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import orjson

from streamrec.bench.isolation import create_topics, new_run_id, prepare_schema
from streamrec.bench.processes import worker as worker_process
from streamrec.config import Settings
from streamrec.models.content import ItemContent
from streamrec.models.features import UserSequence
from streamrec.models.text import MODEL_ZIP_SHA256, encode_texts_cached
from streamrec.onnx.runtime import ServedModel
from streamrec.testing.isolation import drop_isolated, isolated_settings
from streamrec.onnx.writer import train_from_events
from streamrec.stream.generator import SyntheticConfig, SyntheticWorld, build_world, generate_events, item_index
from streamrec.stream.item_vectors import ContentAwareSession, ItemVector, LiveItems, load_content_aware, merge_new_items
from streamrec.stream.items import Item
from streamrec.stream.recommendation import Recommendation

log = logging.getLogger(__name__)

# One theme per cluster: (category, noun phrase). Distinct vocabularies, so the text encoder separates them.
THEMES: tuple[tuple[str, str], ...] = (
    ("jazz", "jazz saxophone album"),
    ("running", "trail running shoes"),
    ("sci-fi", "science fiction space novel"),
    ("kitchen", "chef's kitchen knife"),
    ("fitness", "yoga mat for home fitness"),
    ("games", "strategy board game for families"),
    ("coffee", "espresso coffee beans"),
    ("camping", "mountain camping tent"),
    ("kids", "children's picture book about animals"),
    ("guitar", "electric guitar amplifier"),
)
ADJECTIVES = ("classic", "deluxe", "compact", "vintage", "modern", "premium", "essential", "handmade", "limited", "travel")
PLANTED = dict(num_users=400, num_items=300, cluster_size=30, p_follow=0.6, p_same_cluster=0.3, p_repeat=0.02)


@dataclass(frozen=True)
class Scenario:
    """The stream, its items' content, the popular ("hot") cluster and the new items that match it."""

    config: SyntheticConfig
    world: SyntheticWorld
    events: list[dict[str, Any]]
    items: list[Item]
    hot_cluster: int
    new_items: list[Item]
    train_events: int

    def cluster_of_item(self, item_id: str) -> int | None:
        if item_id.startswith("new-"):
            return self.hot_cluster
        return self.world.cluster_of[item_index(item_id)]


def item_for(index: int, cluster: int) -> Item:
    category, noun = THEMES[cluster % len(THEMES)]
    return Item(f"i{index}", f"{ADJECTIVES[index % len(ADJECTIVES)].title()} {noun} no. {index}", categories=(category,))


def build_scenario(*, seed: int = 21, num_events: int = 12_000, n_new: int = 5, train_share: float = 0.5) -> Scenario:
    """The synthetic stream with themed items; ``n_new`` new items themed like the cluster with most events."""
    config = SyntheticConfig(num_events=num_events, seed=seed, **PLANTED)
    world = build_world(config)
    events = list(generate_events(config))
    items = [item_for(i, world.cluster_of[i]) for i in range(config.num_items)]
    hot = Counter(world.cluster_of[item_index(e["item_id"])] for e in events).most_common(1)[0][0]
    category, noun = THEMES[hot % len(THEMES)]
    new = [Item(f"new-{n}", f"New {ADJECTIVES[(n + 3) % len(ADJECTIVES)]} {noun}, edition {n}", categories=(category,))
           for n in range(n_new)]
    return Scenario(config, world, events, items, hot, new, int(num_events * train_share))


def newcomer_events(scenario: Scenario, *, n_users: int = 30, per_user: int = 2, seed: int = 0) -> list[dict[str, Any]]:
    """Users who arrive after the new items and meet only them: nothing in their windows is known to the served graph.

    What they are offered next shows whether the worker reads the new items'
    content inside a window (then: the items' own cluster) or takes them as
    unknown items (then: whatever an empty history gets).
    """
    rng = np.random.default_rng(seed)
    last = scenario.events[-1]
    events = []
    for user in range(n_users):
        met = rng.choice(len(scenario.new_items), size=per_user, replace=False)
        for step, index in enumerate(met):
            events.append({**last, "event_id": f"newcomer-{user}-{step}", "user_id": f"newcomer-{user}",
                           "item_id": scenario.new_items[int(index)].item_id, "ts": int(last["ts"]) + 1000 * (step + 1),
                           "session_id": f"newcomer-{user}-s0"})
    return events


def scenario_content(items: list[Item], cache_dir: Path) -> ItemContent:
    """Text vectors (the packaged encoder, cached on disk) and categories of ``items``."""
    vectors = encode_texts_cached([i.text() for i in items], cache_dir)
    return ItemContent([i.item_id for i in items], vectors, [i.categories for i in items])


def train_scenario_model(scenario: Scenario, models_dir: Path, cache_dir: Path, *, epochs: int = 20, seed: int = 0) -> Path:
    """A multi-view artifact trained on the first part of the stream (the new items do not exist yet)."""
    return train_from_events(scenario.events[: scenario.train_events], models_dir, epochs=epochs, seed=seed,
                             item_content=scenario_content(scenario.items, cache_dir), id_dropout=0.5)


@dataclass
class Arrival:
    topic: str
    key: bytes | None
    value: bytes | None
    at: float


class TopicCollector(threading.Thread):
    """Everything that arrives on some topics (from their start), with the wall-clock time it arrived."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        super().__init__(daemon=True, name="new-items-collector")
        from confluent_kafka import Consumer

        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"new-items-{time.time_ns()}",
                                   "auto.offset.reset": "earliest", "enable.auto.commit": False,
                                   "fetch.wait.max.ms": 20, "topic.metadata.refresh.interval.ms": 1000})
        self._consumer.subscribe(topics)
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self.arrivals: list[Arrival] = []

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                for msg in self._consumer.consume(num_messages=1000, timeout=0.1):
                    if msg.error():
                        continue  # a topic not created yet: it will be
                    with self._lock:
                        self.arrivals.append(Arrival(msg.topic(), msg.key(), msg.value(), time.time()))
        finally:
            self._consumer.close()

    def on(self, topic: str) -> list[Arrival]:
        with self._lock:
            return [a for a in self.arrivals if a.topic == topic]

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def produce(settings: Settings, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5, "acks": "all"})
    for key, value in records:
        producer.produce(topic, value=value, key=key)
        producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError(f"records to {topic} not delivered")


def produce_paced(settings: Settings, events: list[dict[str, Any]], per_second: float) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 2, "acks": "all"})
    started = time.monotonic()
    for n, event in enumerate(events):
        delay = started + n / per_second - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        producer.produce(settings.events_topic, value=orjson.dumps(event), key=str(event["user_id"]).encode())
        producer.poll(0)
    producer.flush(60)


@dataclass
class LiveRun:
    """What a user of the system would notice, and when."""

    items_produced_at: float
    before: list[Recommendation] = field(default_factory=list)
    after: list[tuple[Recommendation, float]] = field(default_factory=list)
    vectors_at: dict[str, float] = field(default_factory=dict)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    first_offered_at: float | None = None
    newcomers: list[Recommendation] = field(default_factory=list)  # after each newcomer's last event

    def summary(self, scenario: Scenario) -> dict[str, Any]:
        new_ids = {i.item_id for i in scenario.new_items}
        by_event = {e["event_id"]: e for e in scenario.events}
        hot_total = hot_with = other_total = other_with = hot_slots = 0
        # Who is offered the items, once every worker could hold them (their vectors out, plus a
        # second for the worker's consumer); how soon is the latency figures' business.
        served_from = max(self.vectors_at.values(), default=float("inf")) + 1.0
        for rec, at in self.after:
            if at < served_from:
                continue
            offered = any(i.item_id in new_ids for i in rec.items)
            event = by_event.get(rec.event_id)
            if event is None:
                continue
            if scenario.cluster_of_item(event["item_id"]) == scenario.hot_cluster:
                hot_total += 1
                hot_with += offered
                hot_slots += sum(i.item_id in new_ids for i in rec.items)
            else:
                other_total += 1
                other_with += offered
        t0 = self.items_produced_at
        offered_to_newcomers = [i.item_id for r in self.newcomers for i in r.items]
        known = [i for i in offered_to_newcomers if i not in new_ids]
        return {
            "new_items": len(new_ids),
            "record_to_vector_s": round(max(self.vectors_at.values()) - t0, 3) if self.vectors_at else None,
            "record_to_first_recommendation_s": round(self.first_offered_at - t0, 3) if self.first_offered_at else None,
            "hot_cluster_recommendations": hot_total,
            "hot_cluster_share_offered_new": round(hot_with / hot_total, 4) if hot_total else None,
            "hot_cluster_new_items_per_recommendation": round(hot_slots / hot_total, 2) if hot_total else None,
            "other_recommendations": other_total,
            "other_share_offered_new": round(other_with / other_total, 4) if other_total else None,
            "newcomers": len(self.newcomers),
            # Of the items offered to newcomers who met only new items, the share in those items' cluster.
            "newcomer_hot_cluster_share": round(
                sum(scenario.cluster_of_item(i) == scenario.hot_cluster for i in known) / len(known), 4) if known else None,
            "newcomer_share_offered_new": round(
                sum(any(i.item_id in new_ids for i in r.items) for r in self.newcomers) / len(self.newcomers), 4)
            if self.newcomers else None,
            "model_versions": sorted({r.model_version for r, _ in self.after} | {r.model_version for r in self.before}),
            "dead_letters": [(d.get("reason"), d.get("source_topic")) for d in self.dead_letters],
        }


BAD_ITEM_RECORD = (b"new-bad", b'{"item_id": "new-bad", "title": "   "}')


def run_live(settings: Settings, scenario: Scenario, work_dir: Path, *, per_second: float = 150.0,
             before_events: int = 1500, after_events: int = 2500, settle_s: float = 2.0, warm_items: int = 20) -> LiveRun:
    """Worker + embedder against the real servers; new items produced between two stretches of the stream.

    ``settings`` must name the model directory (a multi-view artifact) and
    this run's own topics, keyspace, group and web port.
    """
    create_topics(settings)
    prepare_schema(settings)
    work_dir.mkdir(parents=True, exist_ok=True)
    collector = TopicCollector(settings.kafka_bootstrap, [settings.recommendations_topic, settings.item_vectors_topic,
                                                          settings.dlq_topic])
    collector.start()
    env = {**os.environ, **settings.to_env()}
    with open(work_dir / "embedder.log", "ab") as log_file:
        embedder = subprocess.Popen([sys.executable, "-m", "streamrec", "--log-level", "info", "items", "embedder"],
                                    env=env, stdout=log_file, stderr=subprocess.STDOUT)
    worker = worker_process(settings, work_dir / "worker.log", worker_id="new-items-w1")
    try:
        worker.start(need_model=True)
        # The catalogue's first items, as a deployment holds them before: once their vectors are
        # out, the embedder is up (its start, torch and the text encoder, takes a minute or two here).
        warm = scenario.items[:warm_items]
        produce(settings, settings.items_topic, [(i.kafka_key(), i.to_json()) for i in warm])
        _wait_for(lambda: len(collector.on(settings.item_vectors_topic)) >= len(warm), 600.0,
                  f"the embedder's vectors of {len(warm)} catalogue items ({work_dir / 'embedder.log'})",
                  lambda: embedder.poll() is None)
        rest = scenario.events[scenario.train_events:]
        before, after = rest[:before_events], rest[before_events: before_events + after_events]
        produce_paced(settings, before, per_second * 4)
        _wait_quiet(collector, settings.recommendations_topic, settle_s)
        n_before = len(collector.on(settings.recommendations_topic))

        t0 = time.time()
        produce(settings, settings.items_topic,
                [(i.kafka_key(), i.to_json()) for i in scenario.new_items] + [BAD_ITEM_RECORD])
        run = LiveRun(items_produced_at=t0)
        produce_paced(settings, after, per_second)
        _wait_quiet(collector, settings.recommendations_topic, settle_s)
        n_stream = len(collector.on(settings.recommendations_topic))
        newcomers = newcomer_events(scenario)
        produce_paced(settings, newcomers, per_second)
        _wait_quiet(collector, settings.recommendations_topic, settle_s)
        if embedder.poll() is not None:
            raise RuntimeError(f"the item embedder exited with {embedder.returncode}; see {work_dir / 'embedder.log'}")
    finally:
        worker.stop()
        embedder.terminate()
        try:
            embedder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            embedder.kill()
        collector.stop()

    recs = collector.on(settings.recommendations_topic)
    run.before = [Recommendation.from_json(a.value or b"") for a in recs[:n_before]]
    new_ids = {i.item_id for i in scenario.new_items}
    last_events = {e["user_id"]: e["event_id"] for e in newcomers}
    run.newcomers = [rec for a in recs[n_stream:] if (rec := Recommendation.from_json(a.value or b"")).event_id in last_events.values()]
    for arrival in recs[n_before:n_stream]:
        rec = Recommendation.from_json(arrival.value or b"")
        run.after.append((rec, arrival.at))
        if run.first_offered_at is None and any(i.item_id in new_ids for i in rec.items):
            run.first_offered_at = arrival.at
    run.vectors_at = {(a.key or b"").decode(): a.at for a in collector.on(settings.item_vectors_topic)
                      if a.value and (a.key or b"").decode() in new_ids}
    run.dead_letters = [orjson.loads(a.value or b"{}") for a in collector.on(settings.dlq_topic)]
    return run


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if not alive():
            raise RuntimeError(f"gave up waiting for {what}: the process exited")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no sign of {what} after {timeout_s:.0f} s")
        time.sleep(0.2)


def _wait_quiet(collector: TopicCollector, topic: str, quiet_s: float, timeout_s: float = 120.0) -> None:
    """Until nothing new arrived on ``topic`` for ``quiet_s`` (the worker caught up)."""
    deadline = time.monotonic() + timeout_s
    seen, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = len(collector.on(topic))
        if count != seen:
            seen, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet_s and count:
            return
        time.sleep(0.2)


def run_new_items_bench(base: Settings, work_dir: Path, *, epochs: int = 20, seed: int = 21,
                        per_second: float = 150.0, keep: bool = False) -> dict[str, Any]:
    """``streamrec bench new-items``: the live scenario on this run's own topics and keyspace; the figures."""
    scenario = build_scenario(seed=seed)
    run_id = new_run_id()
    settings = isolated_settings(base, "bench-newitems", run_id, model_dir=work_dir / "models")
    started = time.monotonic()
    train_scenario_model(scenario, work_dir / "models", base.state_dir / "text-encoder", epochs=epochs)
    train_s = time.monotonic() - started
    try:
        run = run_live(settings, scenario, work_dir, per_second=per_second)
    finally:
        if not keep:
            drop_isolated(settings)
    return {"benchmark": "new-items", "seed": seed, "epochs": epochs, "events_per_second": per_second,
            "train_seconds": round(train_s, 1), "hot_cluster": scenario.hot_cluster,
            "new_item_titles": [i.title for i in scenario.new_items], **run.summary(scenario)}


def serving_cost(work_dir: Path, cache_dir: Path, *, new_counts: tuple[int, ...] = (0, 10, 100, 1000),
                 batch: int = 64, repeats: int = 60, threads: int = 1, seed: int = 21) -> dict[str, Any]:
    """Per-batch cost of ``recommend`` for a multi-view version: plain graph vs with ``n`` new items merged.

    Same windows, same session threads; the median of ``repeats`` calls after
    a warm-up, per event (one event = one user row of the batch).
    """
    scenario = build_scenario(seed=seed)
    path = train_scenario_model(scenario, work_dir / "models", cache_dir, epochs=1)
    windows: dict[str, list[dict[str, Any]]] = {}
    for event in scenario.events[: scenario.train_events]:
        windows.setdefault(event["user_id"], []).append(event)
    sequences = [UserSequence([e["item_id"] for e in w[-50:]], [e["event_type"] for e in w[-50:]],
                              [int(e["ts"]) if isinstance(e["ts"], int) else 0 for e in w[-50:]])
                 for w in list(windows.values())[:batch]]

    rng = np.random.default_rng(0)
    sessions: dict[str, ServedModel] = {"id-only path (ServedModel)": ServedModel.load(path, device="cpu", threads=threads)}
    for n in new_counts:
        live = LiveItems()
        for j in range(n):
            vector = rng.normal(size=384).astype(np.float32)
            live.put(ItemVector(f"new-{j}", vector / np.linalg.norm(vector), ("jazz",), MODEL_ZIP_SHA256, 0, 0))
        sessions[str(n)] = load_content_aware(path, live, threads=threads)
    # Interleaved, so that the load of a shared machine falls on every variant alike.
    times: dict[str, list[float]] = {name: [] for name in sessions}
    extra: dict[str, list[float]] = {name: [] for name in sessions}
    for session in sessions.values():
        session.recommend(sequences, k=10)
    for _ in range(repeats):
        for name, session in sessions.items():
            t0 = time.perf_counter()
            ranked = session.recommend(sequences, k=10)
            times[name].append(time.perf_counter() - t0)
            # The part the new items add outside the graph, alone: their table (cached), and the
            # merge where the graph does not rank them itself (graphs exported before it could).
            base = ServedModel.recommend(session, sequences, k=10) if isinstance(session, ContentAwareSession) else ranked
            t1 = time.perf_counter()
            if isinstance(session, ContentAwareSession):
                table = session.new_item_table()
                if table.item_ids and not session.reads_new_items:
                    merge_new_items(base, sequences, table, 10, True)
            extra[name].append(time.perf_counter() - t1)
    per_event = 1e6 / len(sequences)
    plain = float(np.median(times["id-only path (ServedModel)"])) * per_event
    rows = [{"new_items": name, "us_per_event": round(float(np.median(t)) * per_event, 1),
             "ratio": round(float(np.median(t)) * per_event / plain, 3),
             "merge_us_per_event": round(float(np.median(extra[name])) * per_event, 2)} for name, t in times.items()]
    return {"benchmark": "new-items-serving-cost", "batch": len(sequences), "threads": threads, "repeats": repeats,
            "rows": rows}
