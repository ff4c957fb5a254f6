"""Start-up of one worker process: store, topics, model, then the Faust worker loop."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from streamrec.config import Settings
from streamrec.errors import ModelError, StateStoreError
from streamrec.stream.app import create_app, default_worker_id
from streamrec.stream.model_holder import ModelHolder
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


def latest_model_path(settings: Settings) -> Path | None:
    """The newest verifiable model under the model directory, if any."""
    from streamrec.onnx.artifact import latest_artifact

    try:
        return latest_artifact(settings.models_path).path
    except ModelError:
        return None


def run_worker(settings: Settings, *, loglevel: str = "info") -> None:
    """Run a worker until SIGINT/SIGTERM."""
    import faust

    worker_id = default_worker_id(settings)
    store = open_store_with_retry(settings)
    ensure_topics_sync(settings)
    models = ModelHolder(threads=settings.onnx_threads)
    path = latest_model_path(settings)
    if path is None:
        log.warning("no model under %s: serving the popularity fallback (model_version 0) until one is published",
                    settings.models_path)
    else:
        models.load_now(path)
    app, _processor = create_app(settings, store, models, worker_id=worker_id)

    @app.timer(interval=5.0)
    async def watch_models() -> None:
        # New versions appear in the model directory (the registry); load in the background.
        newest = latest_model_path(settings)
        if newest is not None and models.wants(newest):
            models.request(newest)

    faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False).execute_from_commandline()
