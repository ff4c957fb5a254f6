"""Stream commands: `worker`, `produce`, `tail`, `inspect`, `forget`, `topics`, `cassandra`, `items`."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
import orjson

from streamrec.config import Settings
from streamrec.stream.generator import SyntheticConfig, generate_events
from streamrec.stream.recommendation import Recommendation

if TYPE_CHECKING:
    from streamrec.models.content import ItemContent

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- #
# worker
# --------------------------------------------------------------------------- #
@click.command()
@click.option("--worker-id", default=None, help="Id in recommendation messages (default host-pid).")
@click.option("--web-port", type=int, default=None, help="Port of /metrics and /health (default 6066).")
@click.option("--partitions", type=int, default=None, help="Partitions for topics created at start-up.")
@click.pass_obj
def worker(settings: Settings, worker_id: str | None, web_port: int | None, partitions: int | None) -> None:
    """Run a stream worker: consume events, update windows, emit recommendations."""
    from streamrec.stream.worker import run_worker  # Faust, ONNX Runtime, Cassandra driver: 0.5-0.7 s

    settings = settings.with_overrides(worker_id=worker_id, web_port=web_port, topic_partitions=partitions)
    run_worker(settings)


# --------------------------------------------------------------------------- #
# produce
# --------------------------------------------------------------------------- #
@click.command()
@click.argument("source", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--synthetic", is_flag=True, help="Use the built-in synthetic generator instead of a file.")
@click.option("--events", "num_events", type=int, default=10_000, show_default=True, help="Synthetic: events.")
@click.option("--users", "num_users", type=int, default=1_000, show_default=True, help="Synthetic: users.")
@click.option("--items", "num_items", type=int, default=5_000, show_default=True, help="Synthetic: items.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--rate", type=float, default=None, help="Events per second (default: as fast as possible).")
@click.option("--now-ts", is_flag=True, help="Stamp events with the current time (replays as live traffic).")
@click.pass_obj
def produce(
    settings: Settings, source: Path | None, synthetic: bool, num_events: int, num_users: int,
    num_items: int, seed: int, rate: float | None, now_ts: bool,
) -> None:
    """Produce events from a JSONL/CSV file or the synthetic generator, keyed by user."""
    from tqdm import tqdm

    from streamrec.stream.producer import EventProducer, paced, read_csv, read_jsonl  # aiokafka: 0.19 s

    if synthetic == (source is not None):
        raise click.UsageError("give either a SOURCE file or --synthetic")
    if synthetic:
        events = generate_events(SyntheticConfig(num_users=num_users, num_items=num_items, num_events=num_events, seed=seed))
        total: int | None = num_events
    else:
        events = read_csv(source) if source.suffix.lower() == ".csv" else read_jsonl(source)
        total = None

    async def run() -> int:
        async with EventProducer(settings) as producer:
            with tqdm(total=total, unit="ev", desc="produce", file=sys.stderr) as bar:
                async for event in paced(events, rate):
                    if now_ts:
                        event["ts"] = int(time.time() * 1000)
                    await producer.send(event)
                    bar.update(1)
                await producer.flush()
            return producer.sent

    sent = asyncio.run(run())
    click.echo(f"produced {sent} events to {settings.events_topic}")


# --------------------------------------------------------------------------- #
# tail
# --------------------------------------------------------------------------- #
@click.command()
@click.option("--user", "user_id", default=None, help="Only this user's recommendations.")
@click.option("--json", "as_json", is_flag=True, help="Print raw JSON lines.")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest message, not the newest.")
@click.option("--max-messages", type=int, default=None, help="Stop after this many messages.")
@click.option("--timeout", type=float, default=None, help="Stop after this many idle seconds.")
@click.option("--dlq", is_flag=True, help="Tail the dead-letter topic instead.")
@click.pass_obj
def tail(
    settings: Settings, user_id: str | None, as_json: bool, from_beginning: bool,
    max_messages: int | None, timeout: float | None, dlq: bool,
) -> None:
    """Subscribe to recommendations (or dead letters) and print them."""
    from aiokafka import AIOKafkaConsumer

    topic = settings.dlq_topic if dlq else settings.recommendations_topic

    async def run() -> None:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
            auto_offset_reset="earliest" if from_beginning else "latest", **settings.kafka_client_kwargs(),
        )
        await consumer.start()
        shown = 0
        idle_since = time.monotonic()
        try:
            while max_messages is None or shown < max_messages:
                batch = await consumer.getmany(timeout_ms=500)
                if not batch:
                    if timeout is not None and time.monotonic() - idle_since > timeout:
                        return
                    continue
                idle_since = time.monotonic()
                for records in batch.values():
                    for record in records:
                        if user_id is not None and record.key != user_id.encode():
                            continue
                        click.echo(record.value.decode(errors="replace") if as_json or dlq else _pretty(Recommendation.from_json(record.value)))
                        shown += 1
                        if max_messages is not None and shown >= max_messages:
                            return
        finally:
            await consumer.stop()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


def _pretty(rec: Recommendation) -> str:
    items = ", ".join(f"{it.item_id}({it.score:.2f})" for it in rec.items)
    hit = ""
    if rec.online is not None:
        hit = f" prev-hit@10={'yes' if rec.online.hit else 'no'}"
    return f"user {rec.user_id} after {rec.event_id} [model v{rec.model_version}]{hit}: {items}"


# --------------------------------------------------------------------------- #
# inspect
# --------------------------------------------------------------------------- #
@click.group()
def inspect() -> None:
    """Look at stored state."""


@inspect.command("user")
@click.argument("user_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def inspect_user(settings: Settings, user_id: str, as_json: bool) -> None:
    """Print a user's window, serving state and latest recommendation."""
    from streamrec.stream.state.cassandra import CassandraStore  # Cassandra driver: 0.1-0.45 s

    async def run() -> dict:
        store = CassandraStore.open(settings, create_schema=False)
        try:
            windows = await store.load_windows([user_id])
            state = await store.load_user_state(user_id)
        finally:
            await store.close()
        window = windows.get(user_id)
        return {
            "user_id": user_id,
            "window": [
                {"event_id": e.event_id, "item_id": e.item_id, "event_type": e.event_type, "ts": e.ts_ms,
                 **({"context": dict(e.context)} if e.context else {})}
                for e in (window.entries if window else ())
            ],
            "window_seq": window.seq if window else 0,
            "model_version": state.model_version if state else None,
            "last_event_id": state.last_event_id if state else None,
            "recommendation": orjson.loads(state.recommendation) if state and state.recommendation else None,
        }

    report = asyncio.run(run())
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"user {user_id}: {len(report['window'])} events in window (seq {report['window_seq']})")
    for e in report["window"]:
        kept = "  " + " ".join(f"{k}={v}" for k, v in e["context"].items()) if "context" in e else ""
        click.echo(f"  {e['ts']}  {e['event_type']:<12} {e['item_id']:<16} {e['event_id']}{kept}")
    rec = report["recommendation"]
    if rec:
        items = ", ".join(f"{i['item_id']}({i['score']:.2f})" for i in rec["items"])
        click.echo(f"latest recommendation (model v{rec['model_version']}, after {rec['event_id']}): {items}")
    else:
        click.echo("no recommendation yet")


# --------------------------------------------------------------------------- #
# forget
# --------------------------------------------------------------------------- #
@click.group()
def forget() -> None:
    """Forget a user on request (their data removed, their past kept out of training)."""


@forget.command("user")
@click.argument("user_id")
@click.option("--by", "requested_by", default=None, help="Who asks, for the audit record (default user@host).")
@click.option("--reason", default="", help="Free text kept in the request (not in the audit record).")
@click.option("--wait", "wait_s", type=float, default=60.0, show_default=True,
              help="Seconds to wait for a worker to confirm (0: send and return).")
@click.option("--json", "as_json", is_flag=True, help="Print the audit record as JSON.")
@click.pass_obj
def forget_user(settings: Settings, user_id: str, requested_by: str | None, reason: str, wait_s: float,
                as_json: bool) -> None:
    """Ask the workers to forget USER_ID and wait for the audit record that says it was done.

    The worker that owns the user deletes their window, serving state and
    latest recommendation from Cassandra, produces a tombstone for them to
    the recommendations topic, and records the user (as a hash) so that
    their past events stay out of serving and of every retraining round.
    """
    # aiokafka, the processor (numpy, prometheus): 0.3-0.5 s
    from streamrec.stream.forget import default_requester, request_forget
    from streamrec.stream.topics import ensure_topics_sync

    counts = ensure_topics_sync(settings)
    request, audit = asyncio.run(request_forget(
        settings, user_id, requested_by=requested_by or default_requester(), reason=reason, wait_s=wait_s,
        partitions=counts.get(settings.forget_topic),
    ))
    if audit is None:
        message = (f"request {request.request_id} for user {user_id} is on {settings.forget_topic}; no worker confirmed"
                   f" it within {wait_s:g} s. It is carried out when a worker runs: look for its audit record on"
                   f" {settings.forget_audit_topic}.")
        if wait_s > 0:
            raise click.ClickException(message)
        click.echo(message)
        return
    if as_json:
        click.echo(audit.to_json().decode())
        return
    click.echo(f"forgot user {user_id} (request {audit.request_id}, by {audit.requested_by}, worker {audit.worker_id})")
    click.echo(f"  removed: window of {audit.removed.window_events} events, serving state and latest recommendation:"
               f" {'yes' if audit.removed.user_state else 'none stored'}")
    click.echo(f"  tombstone produced to {settings.recommendations_topic}; events stamped up to"
               f" {audit.forgotten_at_ms} left out of serving and retraining; later events: {audit.policy}")


# --------------------------------------------------------------------------- #
# topics / cassandra
# --------------------------------------------------------------------------- #
@click.group()
def topics() -> None:
    """Kafka topics."""


@topics.command("create")
@click.option("--partitions", type=int, default=None, help="Partitions (bounds the number of useful workers).")
@click.pass_obj
def topics_create(settings: Settings, partitions: int | None) -> None:
    """Create the events, recommendations, dead-letter and model-updates topics (idempotent)."""
    from streamrec.stream.topics import ensure_topics_sync  # aiokafka: 0.1-0.2 s

    counts = ensure_topics_sync(settings.with_overrides(topic_partitions=partitions))
    for name, count in sorted(counts.items()):
        click.echo(f"{name}: {count} partitions")


@click.group()
def cassandra() -> None:
    """Cassandra schema."""


@cassandra.command("migrate")
@click.pass_obj
def cassandra_migrate(settings: Settings) -> None:
    """Create the keyspace and tables (idempotent)."""
    from streamrec.stream.state.cassandra import connect, migrate  # Cassandra driver: 0.1-0.45 s

    cluster, session = connect(settings)
    try:
        migrate(session, settings)
    finally:
        cluster.shutdown()
    click.echo(f"keyspace {settings.cassandra_keyspace} ready")


# --------------------------------------------------------------------------- #
# items (the catalogue)
# --------------------------------------------------------------------------- #
@click.group()
def items() -> None:
    """The item catalogue: what each item is (title, description, categories, attributes)."""


@items.command("load")
@click.argument("source")
@click.option("--format", "fmt", type=click.Choice(["auto", "jsonl", "csv", "recbole"]), default="auto",
              show_default=True, help="auto: by suffix (.csv, .item = RecBole, else JSONL).")
@click.pass_obj
def items_load(settings: Settings, source: str, fmt: str) -> None:
    """Produce item records from SOURCE (JSONL, CSV, RecBole .item, or 'ml-100k') to the compacted items topic.

    Records are keyed by item id (the latest record of an item wins); a bad
    record is dead-lettered with its reason and file location, and the load
    goes on.
    """
    from streamrec.models.data import fetch_ml100k_items, load_recbole_items
    from streamrec.stream.items import load_items, read_item_file, records_from_dicts
    from streamrec.stream.topics import ensure_topics_sync  # aiokafka: 0.1-0.2 s

    if source.lower() in {"ml-100k", "ml100k", "movielens-100k"}:
        path, fmt = fetch_ml100k_items(settings.state_dir / "data"), "recbole"
    else:
        path = Path(source)
    if fmt == "recbole" or (fmt == "auto" and path.suffix.lower() == ".item"):
        records = records_from_dicts(load_recbole_items(path), str(path))
    else:
        records = read_item_file(path, fmt)
    ensure_topics_sync(settings)
    report = asyncio.run(load_items(settings, records))
    click.echo(f"produced {report.produced} items to {settings.items_topic}")
    if report.dead_lettered:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(report.reasons.items()))
        click.echo(f"dead-lettered {report.dead_lettered} bad records to {settings.dlq_topic} ({reasons})")


@items.command("embedder")
@click.option("--worker-id", default="item-embedder", show_default=True, help="Id in the dead letters it writes.")
@click.pass_obj
def items_embedder(settings: Settings, worker_id: str) -> None:
    """Compute each item record's text vector once and publish it for the workers (needs streamrec[content]).

    Reads the items topic in its own consumer group, dead-letters bad records,
    and writes the compacted item-vectors topic that every worker follows, so
    a new item is recommendable without a retrain. Runs until SIGINT/SIGTERM.
    """
    import signal

    from streamrec.stream.item_embedder import run_embedder  # torch + transformers: 2-4 s
    from streamrec.stream.topics import ensure_topics_sync

    ensure_topics_sync(settings)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_embedder(settings, stop, worker_id=worker_id)

    asyncio.run(main())


def read_item_content(settings: Settings, source: str) -> "ItemContent":
    """Item content for ``streamrec train --items SOURCE`` (installed into the onnx room's command by the root CLI)."""
    from streamrec.stream.catalogue_content import catalogue_content, items_from_source  # torch + transformers: 3-6.5 s

    items = items_from_source(settings, source)
    click.echo(f"{len(items)} item records from {source}; encoding their text (cached by content)", err=True)
    return catalogue_content(items, settings.state_dir / "text-encoder", progress=True)
