"""The passthrough worker: the real worker's Faust/Kafka path with no state and no model.

Same app settings as ``streamrec.stream.app.create_app`` (raw serialisers,
acks=-1, 1 s commit interval, ``stream_wait_empty``), same agent shape
(``micro_batches`` of at most ``batch_max_events``, lingering
``batch_max_wait_ms``, concurrency 1, up to ``batches_in_flight`` batches
delivering at once, each event acknowledged once its batch and every earlier
one are delivered). Each event is forwarded as it is (same key and bytes) to
``<prefix>.passthrough``, so a benchmark consumer can read the ``event_id``
exactly as it reads it from a recommendation. It is the ceiling a real worker
could reach on this box: the ratio worker/passthrough is the benchmark's
machine-independent figure.

Run as ``python -m streamrec.bench.passthrough`` with ``STREAMREC_*`` settings
(the output topic must exist: the benchmark creates it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

import faust
from faust.web import Request, Response, View

from streamrec.config import Settings, load_settings
from streamrec.stream.app import fail_stop, new_worker_app, run_faust_worker, use_event_loop
from streamrec.stream.acks import InOrderAcks
from streamrec.stream.batching import micro_batches

log = logging.getLogger(__name__)


def output_topic(settings: Settings) -> str:
    return settings.topic("passthrough")


def create_passthrough_app(settings: Settings, worker_id: str) -> faust.App:
    app = new_worker_app(settings, settings.state_dir / "bench-passthrough" / worker_id, web_host="127.0.0.1")
    events_topic = app.topic(settings.events_topic, key_type=bytes, value_type=bytes)
    out = output_topic(settings)

    @app.agent(events_topic, concurrency=1)
    async def forward(stream: faust.StreamT) -> None:
        async def ack(batch: list[Any]) -> None:
            for event in batch:
                await stream.ack(event)

        # As the worker: up to ``batches_in_flight`` batches delivered in the background, acked in
        # order; a failure stops the process with nothing more acknowledged, as the worker's does.
        acks: InOrderAcks[list[Any]] = InOrderAcks(ack, limit=settings.batches_in_flight, on_error=fail_stop)
        linger_s = settings.batch_max_wait_ms / 1000.0
        async for batch in micro_batches(stream, settings.batch_max_events, linger_s=linger_s):
            deliveries = []
            for event in batch:
                message = event.message
                deliveries.append(
                    await app.producer.send(out, message.key, message.value, partition=None, timestamp=None, headers=None)
                )
            acks.add(asyncio.gather(*deliveries), batch)
            await acks.room()

    @app.page("/health")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            ok = bool(app.consumer and app.consumer.assignment() is not None)
            return self.json({"kafka": ok, "worker_id": worker_id}, status=200 if ok else 503)

    return app


def main() -> None:
    settings = load_settings()
    use_event_loop(settings)  # the worker's loop: the same Kafka path, the same scheduler
    worker_id = settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    app = create_passthrough_app(settings, worker_id)
    run_faust_worker(app, "warning")


if __name__ == "__main__":
    main()
