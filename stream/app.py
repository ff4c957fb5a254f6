"""The Faust app: topics, the ingest and forget agents, rebalance hooks, timers, tasks and web endpoints. Wiring only.

The work is in :class:`streamrec.stream.processor.BatchProcessor`. Records
arrive in micro-batches (:func:`streamrec.stream.batching.micro_batches`) and
acks are manual: an event is acknowledged — and so its offset may be
committed — only after the processor has made its batch durable, and batches
are acknowledged in the order they were consumed
(:class:`streamrec.stream.acks.InOrderAcks`) while up to
``batches_in_flight`` of them overlap. This sidesteps faust-streaming's known
traps: an exception in the agent never acknowledges anything (the process
stops at once, and everything uncommitted is consumed again after restart),
``take()``'s ack-on-exit is not used, acks stay off when the agent ends, and
concurrency is 1 per worker (scale with more workers, not more coroutines).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, NoReturn

import faust
import mode.loop
from faust.web import Request, Response, View

from streamrec.config import Settings
from streamrec.errors import ModelError, StateStoreError
from streamrec.onnx.registry import ModelRegistry, ShadowPointer
from streamrec.stream.acks import InOrderAcks
from streamrec.stream.batching import micro_batches
from streamrec.stream.forget import Forgetter
from streamrec.stream.item_vectors import LiveItems, follow_item_vectors
from streamrec.stream.metrics import BatchStage, WorkerMetrics
from streamrec.stream.model_holder import ModelHolder
from streamrec.stream.model_updates import watch_announcements
from streamrec.stream.online_figures import OnlineFiguresStore, OnlineTally
from streamrec.stream.processor import BatchInFlight, BatchProcessor, ShadowHook, SourceRecord
from streamrec.stream.shadow import ShadowSlot
from streamrec.stream.state.base import StateStore
from streamrec.stream.transport import LeanMonitor, Transport

log = logging.getLogger(__name__)

METADATA_MAX_AGE_MS = 10_000
REFRESH_TIMEOUT_S = 3.0
FORGET_BATCH = 64
FORGOTTEN_RELOAD_S = 60.0


class WorkerApp(faust.App):
    """A Faust app whose consumer uses :class:`streamrec.stream.transport.Transport` (short fetch wait)."""

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)


class FaustSink:
    """Produces through the app's own producer; ``send`` returns the delivery future."""

    def __init__(self, app: faust.App) -> None:
        self._app = app

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> Awaitable[Any]:
        return await self._app.producer.send(topic, key, value, partition=partition, timestamp=None, headers=None)


class PartitionCount:
    """A topic's partition count, as this worker last read it from the cluster (None until known).

    The processor compares each record's partition with its key's owner
    partition under this count. It is refreshed on every assignment (before
    the new partitions are consumed) and every few seconds, so partitions
    added to a live topic are followed within seconds.
    """

    def __init__(self, app: faust.App, topic: str) -> None:
        self._app = app
        self._topic = topic
        self.count: int | None = None

    def __call__(self) -> int | None:
        return self.count

    async def refresh(self) -> None:
        found: int | None = None
        try:
            client = self._app.producer._producer.client  # noqa: SLF001 - faust exposes no metadata call
            # Only the topics this producer tracks (its outputs and this one): a request for every
            # topic of the cluster cost 2-3 % of the worker's CPU on a broker with many topics.
            client.add_topic(self._topic)
            # Bounded: this runs inside the rebalance, which must finish within the session timeout.
            await asyncio.wait_for(client.force_metadata_update(), timeout=REFRESH_TIMEOUT_S)
            partitions = client.cluster.partitions_for_topic(self._topic)
            found = len(partitions) if partitions else None
        except Exception as exc:  # noqa: BLE001 - then the consumer's own view, else the last count
            log.warning("could not read the partition count of %s: %r", self._topic, exc)
        if found is None:
            found = self._app.consumer.topic_partitions(self._topic)  # known on the group leader only
        if found and found != self.count:
            log.info("%s has %d partitions (was %s)", self._topic, found, self.count)
            self.count = found


def broker_credentials(settings: Settings) -> faust.SASLCredentials | faust.SSLCredentials | None:
    """Faust's form of :meth:`Settings.kafka_client_kwargs` (None = plaintext): one translation for both clients."""
    kwargs = settings.kafka_client_kwargs()
    ssl_context = kwargs.get("ssl_context")
    if not isinstance(ssl_context, ssl.SSLContext):
        ssl_context = None
    if "sasl_mechanism" in kwargs:
        return faust.SASLCredentials(
            username=str(kwargs.get("sasl_plain_username") or ""),
            password=str(kwargs.get("sasl_plain_password") or ""),
            mechanism=str(kwargs["sasl_mechanism"]),
            ssl_context=ssl_context,
        )
    if ssl_context is not None:
        return faust.SSLCredentials(context=ssl_context)
    return None


def new_worker_app(settings: Settings, datadir: Path, *, web_host: str) -> WorkerApp:
    """The Faust app every worker runs (the benchmark's passthrough too, so both share one Kafka path)."""
    datadir.mkdir(parents=True, exist_ok=True)
    return WorkerApp(
        settings.consumer_group,
        broker=[f"kafka://{hp.strip()}" for hp in settings.kafka_bootstrap.split(",")],
        broker_credentials=broker_credentials(settings),
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_request_timeout=settings.kafka_delivery_timeout_s,
        broker_commit_interval=settings.kafka_commit_interval_s,
        # New partitions of a live topic are assigned once the consumer's metadata
        # sees them; aiokafka's default refresh is every 5 minutes.
        consumer_metadata_max_age_ms=METADATA_MAX_AGE_MS,
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.kafka_session_timeout_s / 3),
        stream_wait_empty=True,
        web_port=settings.web_port,
        web_host=web_host,
        datadir=str(datadir),
        # No Faust tables: all state is in Cassandra, so no changelog topics.
        store="memory://",
        Monitor=LeanMonitor,
    )


def live_model_path(settings: Settings) -> Path | None:
    """The registry's live version, if any."""
    try:
        return ModelRegistry.at(settings.models_path).live_path()
    except (ModelError, OSError) as exc:
        log.error("cannot read the model registry at %s: %s", settings.models_path, exc)
        return None


def shadow_pointer(settings: Settings) -> tuple[ShadowPointer | None, Path | None]:
    """The registry's shadow version and its artifact path, if any (an unreadable pointer: none, logged)."""
    try:
        registry = ModelRegistry.at(settings.models_path)
        pointer = registry.shadow()
    except (ModelError, OSError) as exc:
        log.error("cannot read the shadow pointer under %s: %s (no shadow)", settings.models_path, exc)
        return None, None
    return (pointer, registry.storage.artifact_path(pointer.version)) if pointer else (None, None)


def follow_models(
    app: faust.App, settings: Settings, models: ModelHolder, shadow_models: ModelHolder, shadow_slot: ShadowSlot
) -> None:
    """The hooks that keep the live and shadow models current: announcements, a registry poll, an idle swap."""

    def consider(path: Path | None) -> None:
        if path is not None and models.wants(path):
            models.request(path)  # loads, verifies and warms in the background
        shadow_slot.follow(*shadow_pointer(settings))

    @app.task
    async def follow_announcements() -> None:
        async def on_announcement(message: object) -> None:
            # An announcement only says "look again": the registry's LIVE pointer
            # decides (a replayed announcement may name a rejected or rolled-back version).
            consider(live_model_path(settings))

        await watch_announcements(settings, on_announcement, asyncio.Event())

    @app.timer(interval=5.0)
    async def poll_registry() -> None:
        # Safety net for a missed announcement: the registry's LIVE pointer is the truth.
        consider(live_model_path(settings))

    @app.timer(interval=1.0)
    async def swap_when_idle() -> None:
        # The agent swaps between batches; this covers a worker with no traffic.
        await models.maybe_swap()
        await shadow_models.maybe_swap()


def follow_new_items(app: faust.App, settings: Settings, live_items: LiveItems) -> None:
    """The hook that keeps ``live_items`` in step with the item-vectors topic (new items served without a retrain)."""

    @app.task
    async def follow_item_vectors_task() -> None:
        await follow_item_vectors(settings, live_items, asyncio.Event())


async def flush_figures(tally: OnlineTally, figures: OnlineFiguresStore) -> None:
    """Add this worker's online figures to the shared counters; kept for the next try if Cassandra fails."""
    pending = tally.drain()
    if not pending:
        return
    try:
        await figures.add(pending)
    except StateStoreError as exc:
        tally.restore(pending)
        log.warning("online figures not flushed (%s); kept for the next flush", exc)


def share_online_figures(app: faust.App, tally: OnlineTally, figures: OnlineFiguresStore) -> None:
    """The hook that adds this worker's online figures to the shared counters about once a second."""

    @app.timer(interval=1.0)
    async def flush_online_figures() -> None:
        await flush_figures(tally, figures)


def use_event_loop(settings: Settings) -> None:
    """Select the event loop Faust will create (call before the app is built): libuv's by default.

    The profile showed a quarter of the worker's CPU in asyncio's own scheduling.
    """
    if settings.event_loop == "uvloop":
        mode.loop.use("uvloop")


def run_faust_worker(app: faust.App, log_level: str) -> None:
    """Run ``app`` in this process until it stops (the worker and the benchmark's passthrough alike).

    faust's ``Worker`` draws a progress spinner and, for a level of WARNING
    or above, sets the root logger to DEBUG so that the spinner sees every
    record: every debug call of aiokafka, faust, mode and the Cassandra
    driver (several per Kafka message) then builds a log record that no
    handler prints. Without the spinner the root logger keeps ``log_level``.
    """
    worker = faust.Worker(app, loglevel=log_level.lower(), quiet=True, redirect_stdouts=False)
    worker.spinner = None
    worker.execute_from_commandline()


FAIL_STOP_EXIT_CODE = 70  # EX_SOFTWARE: the supervisor (Kubernetes, systemd) restarts the worker


def fail_stop(exc: BaseException) -> NoReturn:
    """End the process now: no further ack, no commit, no flush (everything uncommitted is consumed again)."""
    log.critical("batch processing failed; stopping the worker without acknowledging anything more: %r", exc,
                 exc_info=exc)
    logging.shutdown()
    os._exit(FAIL_STOP_EXIT_CODE)


def default_worker_id(settings: Settings) -> str:
    return settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"


def create_app(
    settings: Settings,
    store: StateStore,
    models: ModelHolder,
    *,
    worker_id: str,
    metrics: WorkerMetrics | None = None,
    on_fatal: Callable[[BaseException], None] | None = None,
    shadow: ShadowHook | None = None,
) -> tuple[faust.App, BatchProcessor]:
    """Build the worker's Faust app around a processor; returns both (tests drive the processor).

    ``on_fatal`` is called when the agent fails; the default, :func:`fail_stop`,
    ends the process at once so that nothing more is acknowledged.
    """
    on_fatal = on_fatal or fail_stop
    metrics = metrics or WorkerMetrics()
    app = new_worker_app(settings, settings.state_dir / "worker" / worker_id, web_host="0.0.0.0")
    events_topic = app.topic(settings.events_topic, key_type=bytes, value_type=bytes)
    sink = FaustSink(app)
    partitions = PartitionCount(app, settings.events_topic)
    processor = BatchProcessor(
        settings, store, sink, model=lambda: models.current, metrics=metrics, worker_id=worker_id,
        cache_capacity=settings.window_cache_users, partition_count=partitions, shadow=shadow,
    )
    forget_topic = app.topic(settings.forget_topic, key_type=bytes, value_type=bytes)
    forget_partitions = PartitionCount(app, settings.forget_topic)
    forgetter = Forgetter(settings, processor, partition_count=forget_partitions, worker_id=worker_id)

    @app.agent(events_topic, concurrency=1)
    async def ingest(stream: faust.StreamT) -> None:

        async def ack(batch: list[Any]) -> None:
            for event in batch:
                await stream.ack(event)

        def failed(exc: BaseException) -> None:
            on_fatal(exc)
            asyncio.ensure_future(app.crash(exc))  # only when on_fatal returned (tests)

        acks: InOrderAcks[list[Any]] = InOrderAcks(
            ack, limit=settings.batches_in_flight, on_error=failed, on_count=metrics.batches_in_flight.set,
            on_ack_wait=metrics.batch_stage.labels(BatchStage.ACK).observe,
        )
        started: asyncio.Future[BatchInFlight] | None = None
        batch: list[Any] = []
        # Held here so that only this function closes it (see the ``finally``).
        batches = micro_batches(stream, settings.batch_max_events, linger_s=settings.batch_max_wait_ms / 1000.0)
        try:
            async for batch in batches:
                fetched_ms = int(time.time() * 1000)
                records = [source_record(e) for e in batch]
                # Shielded: a SIGTERM lets the batch reach the producer, then it is finished below.
                started = asyncio.ensure_future(processor.begin(records, fetched_ms=fetched_ms))
                in_flight = await asyncio.shield(started)
                started = None
                acks.add(in_flight.durable, batch)
                await acks.room()  # back-pressure: at most batches_in_flight unacknowledged
                await models.maybe_swap()
        except asyncio.CancelledError:
            # Shutting down (SIGTERM): finish the batches in flight, bounded, and acknowledge
            # them in order so their offsets are committed on the way out.
            grace = settings.shutdown_grace_s
            if started is not None:
                await asyncio.wait({started}, timeout=grace)
                if started.done() and not started.cancelled() and started.exception() is None:
                    acks.add(started.result().durable, batch)
                else:
                    started.cancel()  # not acknowledged: consumed again after restart
            if await acks.finish(grace):
                log.info("finished the batches in flight before stopping")
            raise
        except Exception as exc:
            # A bug, not bad input (the processor never raises for input and retries
            # store and delivery failures). Faust would restart the agent and ack
            # whatever it reads next, unprocessed: stop the process instead.
            await acks.finish(0)
            if acks.error is None:
                on_fatal(exc)
                await app.crash(exc)  # only when on_fatal returned (tests)
        finally:
            # Faust's auto-acks must stay off: its drainer would otherwise ack (and the
            # commit timer commit) every record it reads, unprocessed. Close the
            # generator and pin acks off in one step, with no await in between.
            await batches.aclose()
            stream.enable_acks = False

    @app.agent(forget_topic, concurrency=1)
    async def forget(stream: faust.StreamT) -> None:
        # One request at a time, each acknowledged only once carried out (see stream/forget.py).
        requests = micro_batches(stream, FORGET_BATCH, linger_s=0.0)
        try:
            async for batch in requests:
                for event in batch:
                    await forgetter.handle(source_record(event))
                    await stream.ack(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, not input: stop as the ingest agent does, with nothing more acked
            on_fatal(exc)
            await app.crash(exc)
        finally:
            await requests.aclose()
            stream.enable_acks = False

    async def reload_forgotten() -> None:
        # The suppression list as stored: a user this worker now owns may have been forgotten by
        # its previous owner, and that user's past events can still be replayed here.
        try:
            marks = await asyncio.wait_for(store.load_forgotten(), timeout=REFRESH_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - kept as it was; the timer tries again
            log.warning("could not read the forgotten users: %r", exc)
            return
        processor.forgotten.replace_all(marks)

    assignment = {"settled": False}  # the group has given this worker its partitions (none while rebalancing)

    @app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: Any, **kwargs: Any) -> None:
        assignment["settled"] = False
        processor.on_rebalance()

    @app.on_partitions_assigned.connect
    async def on_assigned(app: faust.App, assigned: Any, **kwargs: Any) -> None:
        processor.on_rebalance()
        await partitions.refresh()
        await forget_partitions.refresh()
        await reload_forgotten()
        assignment["settled"] = True

    @app.timer(interval=METADATA_MAX_AGE_MS / 1000.0)
    async def refresh_partition_count() -> None:
        await partitions.refresh()
        await forget_partitions.refresh()

    @app.timer(interval=FORGOTTEN_RELOAD_S)
    async def refresh_forgotten() -> None:
        await reload_forgotten()

    @app.timer(interval=5.0)
    async def report_lag() -> None:
        metrics.consumer_lag.set(consumer_lag(app))

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(metrics.render(), content_type="text/plain; version=0.0.4")

    @app.page("/health")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            report = {
                "kafka": kafka_connected(app),
                "cassandra": store_healthy(processor),
                "delivery": processor.outputs.last_ok,
                "model": models.current is not None,
                "model_version": models.version,
                # Degraded but serving (popularity fallback or the previous version): not a 503.
                "model_error": processor.encoder_error,
                "model_refused": models.refusal_report(),
                "worker_id": worker_id,
                "partitions": assigned_partitions(app, settings.events_topic),
            }
            ok = report["kafka"] and report["cassandra"] and report["delivery"]
            # Ready: healthy, in the group with its partitions assigned, and the live model
            # loaded (or refused, with popularity serving): what a replay should wait for.
            report["ready"] = bool(ok and assignment["settled"] and models.decided)
            return self.json(report, status=200 if ok else 503)

    return app, processor


def source_record(event: Any) -> SourceRecord:
    """The processor's view of a consumed Faust event."""
    message = event.message
    return SourceRecord(
        message.topic, message.partition, message.offset, message.key, message.value,
        int(message.timestamp * 1000) if message.timestamp else None,
    )


def kafka_connected(app: faust.App) -> bool:
    """True while the worker's producer holds at least one live broker connection."""
    try:
        client = app.producer._producer.client  # noqa: SLF001 - faust exposes no connection state
        return any(conn.connected() for conn in client._conns.values())  # noqa: SLF001
    except AttributeError:
        return False


def assigned_partitions(app: faust.App, topic: str) -> list[int]:
    """The partitions of ``topic`` this worker owns now (empty before the group assigned any)."""
    try:
        return sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == topic)
    except Exception:  # no consumer yet
        return []


def store_healthy(processor: BatchProcessor) -> bool:
    """Cassandra is considered healthy unless the last store call failed."""
    return processor.store_calls.last_ok


def consumer_lag(app: faust.App) -> int:
    """Sum over assigned partitions of (high-water mark − position)."""
    try:
        consumer = app.consumer
        total = 0
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            committed = consumer._committed_offset.get(tp)  # noqa: SLF001 - faust exposes no public getter
            if highwater is not None and committed is not None:
                total += max(0, highwater - committed - 1)
        return total
    except Exception:  # lag is best-effort telemetry; never fail the timer
        return 0
