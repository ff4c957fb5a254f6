"""Faust's aiokafka transport, with a short consumer fetch wait, a safe seek and a lean hand-over (used by the worker app).

faust-streaming creates its consumer with ``fetch_max_wait_ms=1500``. When a
busy agent fills the stream buffer, Faust pauses the partitions and resumes
them later; the records that arrive meanwhile then wait for the in-flight
fetch to expire. Measured at 1,000 events/s: fetch gaps of 0.5–1.4 s and a
2 s p99 (`streamrec bench latency`). A 50 ms wait bounds that stall; an idle
worker pays for it with a few more (empty) fetch requests per second.

The consumer's fetch → conductor loop hands most records over without the
four tasks per record Faust spends on them (see
:meth:`Consumer._drain_messages`), and :class:`LeanMonitor` keeps Faust's
per-record statistics out of the path.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Mapping, Optional

from faust.sensors import Monitor
from faust.transport.consumer import CONSUMER_FETCHING
from faust.types import TP

from faust.transport.drivers import aiokafka as faust_aiokafka

log = logging.getLogger(__name__)

FETCH_MAX_WAIT_MS = 50
YIELD_EVERY = 100  # records handed over between two turns of the event loop (as Faust)


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, with a short fetch wait and a seek that never skips unread partitions."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when start() builds its Fetcher; Faust exposes no setting for it.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # noqa: SLF001
        return consumer

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Seek to the committed offsets, and partitions with none (or 0) back to their beginning.

        aiokafka seeks only partitions whose committed offset is above 0 and
        leaves the others where its fetcher already is. Faust seeks after every
        rebalance (and when it pauses the flow), drops the records fetched for
        a partition while it was paused, and relies on this seek to read them
        again; for a partition nobody has committed yet — one just added to the
        topic, or a new group — they were skipped for good (seen: 363 events of
        two new partitions never processed). Rewinding such a partition re-reads
        at most what was never committed, which the idempotent window merge
        absorbs.
        """
        committed = await super().seek_to_committed()
        unread = [tp for tp, offset in committed.items() if not offset]
        if unread:
            await self.seek_to_beginning(*unread)
        return committed


class Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with this module's consumer thread and a lean fetch → conductor loop."""

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's fetch → conductor loop (faust-streaming 0.15.3), with a direct hand-over per record.

        Faust hands each record to the conductor through ``Service.wait_first``
        so that a hand-over blocked on a full stream buffer gives way when the
        flow is suspended (a rebalance) or the consumer stops. That costs four
        tasks and an ``asyncio.wait`` per record: measured, it halved the
        passthrough's throughput (``streamrec bench e2e``). The hand-over can
        only block when the flow is suspended or a stream buffer of the
        record's partition is full; otherwise it completes without
        suspending, and it is awaited directly. When it could block, Faust's
        own ``wait_first`` path runs, so the rebalance behaviour is unchanged.
        """
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        channels_of = self.app.topics._tp_index.get  # noqa: SLF001 - the conductor's partition → channels map
        flow_active = self.app.flow_control.is_active
        suspended = self.suspend_flow.is_set
        since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                records = getmany(timeout=1.0)
                await asyncio.sleep(0)  # as Faust: a busy getmany must not starve the loop
                if not self.should_stop:
                    async for tp, message in records:
                        since_yield += 1
                        if since_yield > YIELD_EVERY:
                            await asyncio.sleep(0)
                            since_yield = 0
                        offset = message.offset
                        read_offset = get_read_offset(tp)
                        if read_offset is not None and offset < read_offset:
                            continue  # already handed over (Faust drops these too)
                        if read_offset and offset - read_offset > 1 and acks_enabled_for(message.topic):
                            await self._add_gap(tp, read_offset + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        if suspended() or not flow_active() or any(c.queue.full() for c in channels_of(tp, ())):
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        else:
                            await callback(message)
                        set_read_offset(tp, offset)
                    unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                log.info("Consumer shutting down for user cancel.")
                return
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)


class Transport(faust_aiokafka.Transport):
    """Kafka through aiokafka, as Faust's ``kafka://`` transport but with the short fetch wait."""

    Consumer = Consumer


class LeanMonitor(Monitor):
    """Faust's main sensor without its per-record statistics (the worker's ``Monitor`` setting).

    Faust calls its monitor four to six times per record (message in, stream
    event in and out, message out, send initiated and completed); each call
    updates counters, a per-stream lookup and timing deques that only
    Faust's own ``/stats`` page reads. The worker publishes its own
    Prometheus metrics instead, so these hooks do nothing here. Offsets,
    commits and rebalances, which Faust's consumer reports through the same
    object, are still tracked.
    """

    def on_message_in(self, tp: TP, offset: int, message: Any) -> None:
        pass

    def on_stream_event_in(self, tp: TP, offset: int, stream: Any, event: Any) -> Optional[dict]:
        return None

    def on_stream_event_out(self, tp: TP, offset: int, stream: Any, event: Any, state: Optional[dict] = None) -> None:
        pass

    def on_message_out(self, tp: TP, offset: int, message: Any) -> None:
        pass

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int, valsize: int) -> Any:
        return None

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        pass
