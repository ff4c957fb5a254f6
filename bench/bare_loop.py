"""The bare loop: aiokafka consume → produce with no Faust, the floor of what Python costs on this box.

Same input and output as the passthrough worker (each event forwarded as it
is to ``<prefix>.passthrough``) and the same guarantee (acks=all; offsets
committed only after the batch's sends are delivered), with no framework:
``getmany`` with a 5 ms wait, producer linger 1 ms, one commit per batch.
``streamrec bench latency --with-passthrough`` measures it beside the Faust
passthrough and the worker, so each millisecond can be put on Kafka and
Python (this loop), Faust (passthrough − loop) or streamrec (worker −
passthrough).

Run as ``python -m streamrec.bench.bare_loop`` with ``STREAMREC_*`` settings
(the output topic must exist: the benchmark creates it).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streamrec.bench.passthrough import output_topic
from streamrec.config import Settings, load_settings

log = logging.getLogger(__name__)

FETCH_WAIT_MS = 5
LINGER_MS = 1


async def forward(settings: Settings) -> None:
    """Consume the events topic and forward every record unchanged until cancelled."""
    security = settings.kafka_client_kwargs()
    consumer = AIOKafkaConsumer(
        settings.events_topic, bootstrap_servers=settings.kafka_bootstrap, group_id=settings.consumer_group,
        enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=FETCH_WAIT_MS, **security,
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=LINGER_MS, **security)
    out = output_topic(settings)
    health = web.Application()

    async def report(request: web.Request) -> web.Response:
        ok = bool(consumer.assignment())
        return web.json_response({"kafka": ok}, status=200 if ok else 503)

    health.router.add_get("/health", report)
    runner = web.AppRunner(health)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", settings.web_port).start()
    await producer.start()
    await consumer.start()
    try:
        while True:
            fetched = await consumer.getmany(timeout_ms=FETCH_WAIT_MS, max_records=settings.batch_max_events)
            deliveries = [
                await producer.send(out, record.value, key=record.key)
                for records in fetched.values() for record in records
            ]
            if deliveries:
                await asyncio.gather(*deliveries)
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
        await runner.cleanup()


async def main_async() -> None:
    settings = load_settings()
    task = asyncio.ensure_future(forward(settings))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    loop.add_signal_handler(signal.SIGINT, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main_async())


if __name__ == "__main__":
    main()
