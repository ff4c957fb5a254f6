"""`streamrec demo`: the main job end to end on the local defaults.

1. local Kafka and Cassandra up (unless already reachable), topics created;
2. a synthetic stream with a planted sequential signal (or a given JSONL file);
3. a first encoder trained quickly on the stream's first part;
4. a real worker process started, which first catches up on the training
   part of the stream as an untimed backlog: a deployed worker would have
   seen those events, so the users' windows hold them when the replay starts
   (and the summary shows how fast one worker drains a backlog); on servers
   this project started minutes ago, the history follows again at the
   replay's rate under other users' ids (a warm-up), so the timed replay meets servers whose JVMs have
   compiled their hot paths, as a deployment's have;
5. the rest of the stream replayed at a set rate, with a progress bar and
   live recommendations for a few users;
6. a summary: events/s, end-to-end latency (event produced → recommendation
   consumed, measured here, independently of the worker), online hit@10 of
   the model against a popularity baseline on the same replay, dead letters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np

from streamrec.config import Settings
from streamrec.deploy import infra as local
from streamrec.stream.generator import SyntheticConfig, generate_events
from streamrec.stream.metrics import metric_values
from streamrec.stream.recommendation import Recommendation

log = logging.getLogger(__name__)


@dataclass
class DemoSummary:
    """What the demo prints at the end (and writes as JSON)."""

    history_events: int
    catch_up_seconds: float
    servers_uptime_s: float | None  # the younger of Kafka and Cassandra when the replay began; None if not ours
    warm_up_events: int  # 0: the servers were not freshly started (or --warm-up-seconds 0)
    warm_up_latency_p99_ms: float | None  # the warm-up's own p99: the same path on the servers still cold
    events_replayed: int
    events_processed: int
    dead_lettered: int
    recommendations_received: int
    replay_seconds: float
    events_per_second: float
    latency_p50_ms: float
    latency_p99_ms: float
    online_hit_at_10_model: float
    online_hit_at_10_popularity: float
    online_ndcg_at_10_model: float
    online_ndcg_at_10_popularity: float
    model_version: int
    train_seconds: float
    offline_test: dict[str, float]


def _fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.read().decode()
    except OSError:
        return None


def _bad_records(rnd: random.Random, n: int) -> list[bytes]:
    """A few malformed records, to show dead-lettering in the summary."""
    samples = [b"{not json", b'{"event_id": "x", "user_id": "u1"}', b'{"event_id": "", "user_id": "u1", "item_id": "i1", "event_type": "view", "ts": 1}',
               b'{"event_id": "e", "user_id": "u1", "item_id": "i1", "event_type": "teleport", "ts": 1}', b"\xff\xfe"]
    return [rnd.choice(samples) for _ in range(n)]


async def _produce_backlog(settings: Settings, events: list[dict]) -> None:
    """Produce ``events`` as fast as the producer allows."""
    from streamrec.stream.producer import EventProducer  # aiokafka: 0.19 s

    async with EventProducer(settings) as producer:
        for event in events:
            await producer.send(event)
        await producer.flush()


# Kafka's and Cassandra's JVMs compile their hot paths under the first minutes of load; on a 2-core
# box that took about a core during the first demo after a start (README: "The demo on freshly
# started servers"), so the summary says when the servers are that young.
RECENTLY_STARTED_S = 300.0
WARM_UP_RATE = 1000.0  # events/s of the warm-up when the replay itself is unpaced (--rate 0)


def _servers_uptime(settings: Settings) -> float | None:
    """Seconds the younger of the two local servers has run, when this project started them."""
    uptimes = [u for s in local.SERVERS if (u := local.uptime_s(settings, s)) is not None]
    return min(uptimes) if uptimes else None


def _worker_metrics(web_port: int) -> dict[str, float]:
    """The worker's metric values by name and labels; empty when it does not answer."""
    return metric_values(_fetch(f"http://127.0.0.1:{web_port}/metrics") or "")


def _processed(web_port: int) -> int:
    """Events the worker has processed so far (0 when it does not answer)."""
    return int(_worker_metrics(web_port).get("streamrec_events_total", 0))


# A worker slower than this on the history backlog is stuck, not slow: the demo gives up.
CATCH_UP_MIN_EVENTS_PER_S = 200
WARM_UP_PREFIX = "warm-up-"  # the warm-up stream's user and event ids: none of them is a replay user's


def _warm_up_events(history: list[dict], seconds: float, rate: float) -> list[dict]:
    """``seconds`` of the history again at ``rate``, each pass under user and event ids of its own.

    The same items in the same proportions, so the worker's popularity counts
    keep the stream's shape (the popularity baseline stays fair); other users,
    so the replay's windows, exclusions and online figures are what they would
    be without it. Only the servers have seen more traffic.
    """
    if not history:
        return []
    warm_up = []
    for i in range(int(seconds * rate)):
        event = history[i % len(history)]
        prefix = f"{WARM_UP_PREFIX}{i // len(history)}-"
        warm_up.append({**event, "user_id": prefix + event["user_id"], "event_id": prefix + event["event_id"],
                        **({"session_id": prefix + event["session_id"]} if event.get("session_id") else {})})
    return warm_up


def _latency_ms(sent: dict[str, float], received: dict[str, float]) -> np.ndarray:
    """Event sent → its recommendation received, per answered event (ms)."""
    return np.array([(received[e] - sent[e]) * 1000 for e in received if e in sent]) if received else np.array([0.0])


def _catch_up(settings: Settings, history: list[dict], web_port: int, idle_timeout: float) -> float:
    """Let the worker process the training history as a backlog; returns the seconds it took.

    The users' windows then hold their history, as they would in a deployment: without
    it every user starts the replay with an empty window, which no deployed worker sees.
    """
    started = time.monotonic()
    asyncio.run(_produce_backlog(settings, history))
    timeout = idle_timeout + len(history) / CATCH_UP_MIN_EVENTS_PER_S
    deadline = started + timeout
    while _processed(web_port) < len(history):
        if time.monotonic() > deadline:
            raise click.ClickException(f"the worker processed {_processed(web_port)} of the {len(history)} "
                                       f"history events in {timeout:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - started


async def _replay_and_watch(
    settings: Settings, events: list[dict], rate: float | None, show_users: list[str], bad: list[bytes],
    idle_timeout: float, label: str = "replay",
) -> tuple[dict[str, float], dict[str, float], int, float]:
    """Produce ``events`` (and the bad records) while consuming recommendations; returns send/receive times."""
    from aiokafka import AIOKafkaConsumer
    from tqdm import tqdm

    from streamrec.stream.producer import EventProducer, paced  # aiokafka: 0.19 s

    sent_at: dict[str, float] = {}
    received_at: dict[str, float] = {}
    count = {"recs": 0}
    consumer = AIOKafkaConsumer(
        settings.recommendations_topic, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
        auto_offset_reset="latest", **settings.kafka_client_kwargs(),
    )
    await consumer.start()
    # Make sure the consumer has its position before anything is produced.
    await consumer.seek_to_end()
    for tp in consumer.assignment():
        await consumer.position(tp)
    done = asyncio.Event()
    shown_last = 0.0

    async def watch() -> None:
        nonlocal shown_last
        while not done.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            now = time.monotonic()
            for records in batch.values():
                for record in records:
                    rec = Recommendation.from_json(record.value)
                    count["recs"] += 1
                    received_at.setdefault(rec.event_id, now)
                    if rec.user_id in show_users and now - shown_last > 1.0:
                        shown_last = now
                        items = ", ".join(i.item_id for i in rec.items[:5])
                        tqdm.write(f"  live: user {rec.user_id} after {rec.event_id} (model v{rec.model_version}) → {items}")

    watcher = asyncio.create_task(watch())
    started = time.monotonic()
    bad_every = max(1, len(events) // max(1, len(bad))) if bad else 0
    async with EventProducer(settings) as producer:
        with tqdm(total=len(events), unit="ev", desc=label, file=sys.stderr) as bar:
            i = 0
            async for event in paced(events, rate):
                sent_at[event["event_id"]] = time.monotonic()
                await producer.send(event)
                if bad_every and i % bad_every == 0 and bad:
                    await producer.send_raw(bad.pop(), b"demo-bad")
                i += 1
                bar.update(1)
            for raw in bad:
                await producer.send_raw(raw, b"demo-bad")
            await producer.flush()
    replay_seconds = time.monotonic() - started
    # Wait until the recommendation for each user's last event arrived (or the stream went idle).
    last_per_user = {e["user_id"]: e["event_id"] for e in events}
    deadline = time.monotonic() + idle_timeout
    while time.monotonic() < deadline and not all(eid in received_at for eid in last_per_user.values()):
        await asyncio.sleep(0.5)
    done.set()
    await watcher
    await consumer.stop()
    return sent_at, received_at, count["recs"], replay_seconds


def run_demo(
    settings: Settings, *, events_file: Path | None, num_events: int, train_fraction: float, num_users: int,
    num_items: int, rate: float | None, epochs: int, seed: int, stop_infra: bool, bad_records: int,
    idle_timeout: float, catch_up: bool = True, warm_up_seconds: float = 0.0,
) -> DemoSummary:
    """Run the whole demo; returns (and prints) the summary."""
    from streamrec.onnx.writer import train_from_events  # torch: 3-6.5 s
    from streamrec.stream.producer import read_jsonl  # aiokafka: 0.19 s
    from streamrec.stream.topics import ensure_topics_sync  # aiokafka: 0.1-0.2 s

    run_id = time.strftime("%Y%m%d_%H%M%S")
    settings = settings.with_overrides(
        topic_prefix=f"{settings.topic_prefix}.demo-{run_id}",
        cassandra_keyspace=f"demo_{run_id}",
        consumer_group=f"streamrec-demo-{run_id}",
        model_dir=settings.state_dir / "demo" / run_id / "models",
        worker_id="demo-worker",
    )
    out_dir = settings.state_dir / "demo" / run_id
    out_dir.mkdir(parents=True, exist_ok=True)

    click.secho("== 1/5 local Kafka and Cassandra", bold=True)
    missing = [s for s in local.SERVERS if not local.is_healthy(settings, s)]
    if missing:
        local.up(settings, tuple(missing), progress=click.echo)
    counts = ensure_topics_sync(settings)
    click.echo(f"topics: {', '.join(sorted(counts))}")

    click.secho("== 2/5 data", bold=True)
    if events_file is not None:
        events = list(read_jsonl(events_file))
    else:
        events = list(generate_events(SyntheticConfig(num_users=num_users, num_items=num_items, num_events=num_events, seed=seed)))
    split = int(len(events) * train_fraction)
    history, replay = events[:split], events[split:]
    click.echo(f"{len(events)} events: {len(history)} to train the first model, {len(replay)} to replay")

    click.secho("== 3/5 first model", bold=True)
    t0 = time.monotonic()
    artifact = train_from_events(history, settings.models_path, epochs=epochs, seed=seed, progress=True)
    train_seconds = time.monotonic() - t0
    metrics_path = artifact / "metrics.json"
    offline = json.loads(metrics_path.read_text()).get("test", {}) if metrics_path.exists() else {}
    click.echo(f"model {artifact.name} trained in {train_seconds:.0f}s; offline test {offline}")

    click.secho("== 4/5 worker", bold=True)
    web_port = settings.web_port
    log_path = out_dir / "worker.log"
    env = {**os.environ, **settings.to_env()}
    with open(log_path, "ab") as worker_log:
        worker = subprocess.Popen([sys.executable, "-m", "streamrec", "--log-level", "info", "worker"],
                                  env=env, stdout=worker_log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            health = _fetch(f"http://127.0.0.1:{web_port}/health")
            # Ready means in the group with partitions assigned and the model warm: replaying
            # before that only builds a backlog that the latency figures would then report.
            report = json.loads(health) if health else {}
            if report.get("ready") and report.get("model") and report.get("partitions"):
                break
            if worker.poll() is not None or time.monotonic() > deadline:
                raise click.ClickException(f"the worker did not become ready; see {log_path}")
            time.sleep(0.5)
        click.echo(f"worker ready: {health.strip()}  (metrics: http://127.0.0.1:{web_port}/metrics)")
        caught_up = history if catch_up else []
        catch_up_seconds = 0.0
        if caught_up:
            catch_up_seconds = _catch_up(settings, caught_up, web_port, idle_timeout)
            click.echo(f"caught up on the {len(caught_up)} history events in {catch_up_seconds:.1f} s "
                       f"({len(caught_up) / catch_up_seconds:.0f} events/s, produced as a backlog)")
        warm_up: list[dict] = []
        warm_up_p99: float | None = None
        uptime = _servers_uptime(settings)
        if warm_up_seconds > 0 and uptime is not None and uptime < RECENTLY_STARTED_S:
            warm_up = _warm_up_events(history, warm_up_seconds, rate or WARM_UP_RATE)
            click.echo(f"Kafka and Cassandra started {uptime:.0f} s ago; their JVMs compile hot paths in their first "
                       f"minutes under load. Warming them up: the history again as {len(warm_up)} "
                       f"events of other users ({WARM_UP_PREFIX}*) at the replay's rate, {warm_up_seconds:.0f} s (--warm-up-seconds 0: none).")
            sent, received, _, _ = asyncio.run(_replay_and_watch(settings, warm_up, rate or WARM_UP_RATE, [], [],
                                                                 idle_timeout, label="warm-up"))
            warm_up_p99 = round(float(np.percentile(_latency_ms(sent, received), 99)), 1)
            click.echo(f"warm-up done: p99 {warm_up_p99} ms on the servers still cold")
        # Counters are read as differences from here on, so the summary describes the replay alone.
        before = _worker_metrics(web_port)

        servers_uptime = _servers_uptime(settings)
        click.secho("== 5/5 replay", bold=True)
        rnd = random.Random(seed)
        # Show the most active users of the replay: they change recommendations often.
        activity: dict[str, int] = {}
        for e in replay:
            activity[e["user_id"]] = activity.get(e["user_id"], 0) + 1
        show = sorted(activity, key=lambda u: (-activity[u], u))[:3]
        sent, received, recs, replay_seconds = asyncio.run(
            _replay_and_watch(settings, replay, rate, show, _bad_records(rnd, bad_records), idle_timeout)
        )
        time.sleep(1.0)
        after = _worker_metrics(web_port)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()

    latencies = _latency_ms(sent, received)
    first_sent = min(sent.values()) if sent else 0.0
    last_received = max(received.values()) if received else first_sent
    replayed = {name: value - before.get(name, 0.0) for name, value in after.items()}
    processed = int(replayed.get("streamrec_events_total", 0))

    def ratio(name: str, model: str) -> float:
        evaluated = replayed.get(f"streamrec_online_evaluated_total{{model={model}}}", 0.0)
        return round(replayed.get(f"{name}{{model={model}}}", 0.0) / evaluated, 4) if evaluated else 0.0

    summary = DemoSummary(
        history_events=len(caught_up),
        catch_up_seconds=round(catch_up_seconds, 1),
        servers_uptime_s=round(servers_uptime, 1) if servers_uptime is not None else None,
        warm_up_events=len(warm_up),
        warm_up_latency_p99_ms=warm_up_p99,
        events_replayed=len(replay),
        events_processed=processed,
        dead_lettered=int(sum(v for k, v in replayed.items() if k.startswith("streamrec_events_rejected_total"))),
        recommendations_received=recs,
        replay_seconds=round(replay_seconds, 2),
        events_per_second=round(processed / max(1e-9, last_received - first_sent), 1),
        latency_p50_ms=round(float(np.percentile(latencies, 50)), 1),
        latency_p99_ms=round(float(np.percentile(latencies, 99)), 1),
        online_hit_at_10_model=ratio("streamrec_online_hits_total", "encoder"),
        online_hit_at_10_popularity=ratio("streamrec_online_hits_total", "popularity"),
        online_ndcg_at_10_model=ratio("streamrec_online_ndcg_sum_total", "encoder"),
        online_ndcg_at_10_popularity=ratio("streamrec_online_ndcg_sum_total", "popularity"),
        model_version=int(after.get("streamrec_model_version", 0)),
        train_seconds=round(train_seconds, 1),
        offline_test=offline,
    )
    (out_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    _print_summary(summary, settings, out_dir)
    if stop_infra:
        local.down(settings, progress=click.echo)
    else:
        click.echo("Kafka and Cassandra are still running; stop them with `streamrec infra down`.")
    return summary


def _print_summary(s: DemoSummary, settings: Settings, out_dir: Path) -> None:
    click.secho("\n== summary", bold=True)
    rows = [
        ("history caught up (untimed backlog)", f"{s.history_events} events in {s.catch_up_seconds:.1f} s"),
        ("events replayed / processed", f"{s.events_replayed} / {s.events_processed}"),
        ("dead-lettered (bad records injected)", f"{s.dead_lettered}"),
        ("recommendations received", f"{s.recommendations_received}"),
        ("throughput (first send → last recommendation)", f"{s.events_per_second:.0f} events/s"),
        ("end-to-end latency p50 / p99", f"{s.latency_p50_ms:.1f} ms / {s.latency_p99_ms:.1f} ms"),
        ("online hit@10: model vs popularity", f"{s.online_hit_at_10_model:.3f} vs {s.online_hit_at_10_popularity:.3f}"),
        ("online NDCG@10: model vs popularity", f"{s.online_ndcg_at_10_model:.3f} vs {s.online_ndcg_at_10_popularity:.3f}"),
        ("model version served", f"{s.model_version}"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        click.echo(f"  {name:<{width}}  {value}")
    if s.warm_up_events:
        click.echo(f"note: Kafka and Cassandra had run for {s.servers_uptime_s:.0f} s when the replay began; a warm-up "
                   f"of {s.warm_up_events} events went first (p99 {s.warm_up_latency_p99_ms} ms on the servers still "
                   "cold). README: \"The demo on freshly started servers\".")
    elif s.servers_uptime_s is not None and s.servers_uptime_s < RECENTLY_STARTED_S:
        click.echo(f"note: Kafka and Cassandra had run for {s.servers_uptime_s:.0f} s when the replay began. In their "
                   "first minutes under load their JVMs compile hot paths, and on a small box latency runs "
                   "higher; run the demo again for the figures of warmed servers (README: \"The demo on "
                   "freshly started servers\").")
    click.echo(f"summary JSON: {out_dir / 'summary.json'}")
    click.echo(f"look around: STREAMREC_TOPIC_PREFIX={settings.topic_prefix} streamrec tail --from-beginning --max-messages 5")
    click.echo(f"             STREAMREC_CASSANDRA_KEYSPACE={settings.cassandra_keyspace} streamrec inspect user <user_id>")


@click.command()
@click.option("--events-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Replay this JSONL event log instead of the synthetic stream.")
@click.option("--events", "num_events", default=40_000, show_default=True, help="Synthetic events in total.")
@click.option("--train-fraction", default=0.5, show_default=True, help="Share of the stream used to train the first model.")
@click.option("--users", "num_users", default=2_000, show_default=True)
@click.option("--items", "num_items", default=2_000, show_default=True)
@click.option("--rate", type=float, default=1000.0, show_default=True, help="Replay rate, events/s (0 = as fast as possible).")
@click.option("--epochs", default=8, show_default=True, help="Training epochs of the first model.")
@click.option("--seed", default=0, show_default=True)
@click.option("--bad-records", default=20, show_default=True, help="Malformed records mixed into the replay.")
@click.option("--idle-timeout", default=60.0, show_default=True, help="Seconds to wait for the last recommendations.")
@click.option("--stop-infra", is_flag=True, help="Stop Kafka and Cassandra at the end.")
@click.option("--catch-up/--no-catch-up", default=True, show_default=True,
              help="Let the worker process the training part as an untimed backlog before the replay "
                   "(the users' windows then hold their history, as in a deployment).")
@click.option("--warm-up-seconds", default=45.0, show_default=True,
              help="On Kafka and Cassandra started by `streamrec infra` less than 5 minutes ago, replay this long a "
                   "stream of other users before the timed replay, so their JVMs have compiled their hot paths "
                   "(0 = never).")
@click.pass_obj
def demo(settings: Settings, events_file: Path | None, num_events: int, train_fraction: float, num_users: int,
         num_items: int, rate: float, epochs: int, seed: int, bad_records: int, idle_timeout: float,
         stop_infra: bool, catch_up: bool, warm_up_seconds: float) -> None:
    """The main job end to end on the local defaults (see README)."""
    run_demo(settings, events_file=events_file, num_events=num_events, train_fraction=train_fraction,
             num_users=num_users, num_items=num_items, rate=rate or None, epochs=epochs, seed=seed,
             stop_infra=stop_infra, bad_records=bad_records, idle_timeout=idle_timeout, catch_up=catch_up,
             warm_up_seconds=warm_up_seconds)
