"""Start-up of one worker process: store, topics, model, then the Faust worker loop."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from streamrec.config import Settings
from streamrec.errors import ModelError, StateStoreError
from streamrec.stream.app import create_app, default_worker_id
from streamrec.onnx.registry import ModelRegistry, ShadowPointer
from streamrec.stream.metrics import WorkerMetrics
from streamrec.stream.item_vectors import LiveItems, follow_item_vectors
from streamrec.stream.model_holder import ModelHolder
from streamrec.stream.model_updates import watch_announcements
from streamrec.stream.online_figures import OnlineFiguresStore, OnlineTally
from streamrec.stream.shadow import ShadowScorer, ShadowSlot
from streamrec.stream.state.cassandra import CassandraStore
from streamrec.stream.topics import ensure_topics_sync

log = logging.getLogger(__name__)


def open_store_with_retry(settings: Settings, wait_s: float = 120.0) -> CassandraStore:
    """Connect to Cassandra, waiting for it (it may still be starting)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return CassandraStore.open(settings)
        except StateStoreError as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("Cassandra not reachable yet (%s); retrying", exc)
            time.sleep(2.0)


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


def run_worker(settings: Settings) -> None:
    """Run a worker until SIGINT/SIGTERM."""
    if settings.event_loop == "uvloop":
        import mode.loop

        # libuv's loop: the profile shows a quarter of the worker's CPU in asyncio's own scheduling.
        mode.loop.use("uvloop")
    import faust

    worker_id = default_worker_id(settings)
    store = open_store_with_retry(settings)
    ensure_topics_sync(settings)
    metrics = WorkerMetrics()
    # Items that appear after the served version was trained (multi-view versions rank them from content).
    live_items = LiveItems() if settings.live_items else None
    models = ModelHolder(
        threads=settings.onnx_threads, top_k=settings.top_k,
        on_refused=lambda refusal: metrics.model_refusals.inc(), live_items=live_items,
    )
    path = live_model_path(settings)
    if path is None:
        log.warning("no model under %s: serving the popularity fallback (model_version 0) until one is published",
                    settings.models_path)
    else:
        try:
            models.load_now(path)
        except ModelError:
            log.error("serving the popularity fallback until the live model can be loaded")
    shadow_models = ModelHolder(
        threads=settings.onnx_threads, top_k=settings.top_k,
        on_refused=lambda refusal: metrics.shadow_refusals.inc(),
    )
    slot = ShadowSlot(shadow_models)
    tally = OnlineTally()
    figures = OnlineFiguresStore(settings, store.session)
    try:
        figures.migrate()
    except StateStoreError as exc:  # figures are telemetry: serving starts anyway, flushes retry
        log.error("%s; online figures will not be shared until it exists", exc)
    scorer = ShadowScorer(slot, tally, metrics, top_k=settings.top_k, exclude_seen=settings.exclude_seen,
                          capacity=settings.window_cache_users)
    slot.follow(*shadow_pointer(settings))
    app, processor = create_app(settings, store, models, worker_id=worker_id, metrics=metrics, shadow=scorer)
    # Before the first record: a restarted worker must not take a forgotten user's replayed past
    # for new events (the list is reloaded on every assignment, but a reload there is bounded).
    processor.forgotten.replace_all(asyncio.run(store.load_forgotten()))

    def consider(path: Path | None) -> None:
        if path is not None and models.wants(path):
            models.request(path)  # loads, verifies and warms in the background
        slot.follow(*shadow_pointer(settings))

    @app.task
    async def follow_announcements() -> None:
        async def on_announcement(message: "object") -> None:
            # An announcement only says "look again": the registry's LIVE pointer
            # decides (a replayed announcement may name a rejected or rolled-back version).
            consider(live_model_path(settings))

        await watch_announcements(settings, on_announcement, asyncio.Event())

    if live_items is not None:
        @app.task
        async def follow_new_items() -> None:
            await follow_item_vectors(settings, live_items, asyncio.Event())

    @app.timer(interval=5.0)
    async def poll_registry() -> None:
        # Safety net for a missed announcement: the registry's LIVE pointer is the truth.
        consider(live_model_path(settings))

    @app.timer(interval=1.0)
    async def swap_when_idle() -> None:
        # The agent swaps between batches; this covers a worker with no traffic.
        await models.maybe_swap()
        await shadow_models.maybe_swap()

    @app.timer(interval=1.0)
    async def flush_online_figures() -> None:
        await flush_figures(tally, figures)

    try:
        faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True, redirect_stdouts=False).execute_from_commandline()
    finally:
        models.close()
        shadow_models.close()
