"""Start-up of one worker process: store, topics, models, then the Faust worker loop.

What the worker is built from is made here; every Faust hook (agents,
timers, tasks, web pages) is wired in :mod:`streamrec.stream.app`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

from streamrec.config import Settings
from streamrec.errors import ModelError, StateStoreError
from streamrec.stream.app import (
    create_app, default_worker_id, follow_models, follow_new_items, live_model_path, run_faust_worker, shadow_pointer,
    share_online_figures, use_event_loop,
)
from streamrec.stream.item_vectors import LiveItems
from streamrec.stream.metrics import WorkerMetrics
from streamrec.stream.model_holder import ModelHolder
from streamrec.stream.online_figures import OnlineFiguresStore, OnlineTally
from streamrec.stream.shadow import ShadowScorer, ShadowSlot
from streamrec.stream.state.base import StateStore
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


def run_worker(settings: Settings, *, windows: StateStore | None = None) -> None:
    """Run a worker until SIGINT/SIGTERM.

    Windows and user states live in Cassandra. ``windows`` replaces it with
    another store: the benchmarks' attribution phase passes an in-memory one to
    measure the worker less Cassandra (online figures, shared through
    Cassandra, are then not kept).
    """
    use_event_loop(settings)

    worker_id = default_worker_id(settings)
    cassandra: CassandraStore | None = None
    store: StateStore
    if windows is None:
        cassandra = store = open_store_with_retry(settings)
    else:
        store = windows
    ensure_topics_sync(settings)
    metrics = WorkerMetrics()
    metrics.watch_gc()
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
    figures = OnlineFiguresStore(settings, cassandra.session) if cassandra is not None else None
    if figures is not None:
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

    follow_models(app, settings, models, shadow_models, slot)
    if figures is not None:
        share_online_figures(app, tally, figures)
    if live_items is not None:
        follow_new_items(app, settings, live_items)

    # Everything built so far (modules, the model and its vocabulary, the app) lives as long as
    # the process: out of the collector's sight, so a full collection walks only what serving
    # allocates (measured: 4 full collections in a 20 s latency run took 668 ms in all, up to 250 ms each).
    gc.collect()
    gc.freeze()
    try:
        run_faust_worker(app, settings.log_level)
    finally:
        models.close()
        shadow_models.close()
