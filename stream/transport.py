"""Faust's aiokafka transport, with a short consumer fetch wait (used by the worker app).

faust-streaming creates its consumer with ``fetch_max_wait_ms=1500``. When a
busy agent fills the stream buffer, Faust pauses the partitions and resumes
them later; the records that arrive meanwhile then wait for the in-flight
fetch to expire. Measured at 1,000 events/s: fetch gaps of 0.5–1.4 s and a
2 s p99 (`streamrec bench latency`). A 50 ms wait bounds that stall; an idle
worker pays for it with a few more (empty) fetch requests per second.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

FETCH_MAX_WAIT_MS = 50


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread; only the fetch wait of the worker consumer differs."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when start() builds its Fetcher; Faust exposes no setting for it.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # noqa: SLF001
        return consumer


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """Kafka through aiokafka, as Faust's ``kafka://`` transport but with the short fetch wait."""

    Consumer = Consumer
