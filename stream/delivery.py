"""Making a batch's effects durable: Kafka outputs delivered and store calls retried, never skipped.

Both retry with backoff until they succeed, so a broker or Cassandra outage
holds the batch unacknowledged (it is seen again after a crash) instead of
losing it; while they fail, ``last_ok`` is false and ``/health`` says so.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol, Sequence, TypeVar

from streamrec.errors import StateStoreError
from streamrec.stream.metrics import WorkerMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Output:
    """One record the worker produces (a recommendation, a dead letter, a re-routed event)."""

    topic: str
    key: bytes | None
    value: bytes | None  # None: a tombstone
    partition: int | None = None


# An output and its delivery (the producer's future, or a failed one to re-send).
Pending = tuple[Output, "Awaitable[object]"]


class Sink(Protocol):
    """Where Kafka output goes; ``send`` returns an awaitable delivery."""

    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   partition: int | None = None) -> Awaitable[object]: ...


class Outputs:
    """Kafka output, at least once: handed to the producer, awaited, failed ones re-sent with backoff."""

    def __init__(self, sink: Sink, metrics: WorkerMetrics, max_delay_s: float = 5.0) -> None:
        self._sink = sink
        self._metrics = metrics
        self._max_delay_s = max_delay_s
        self.last_ok = True

    async def send(self, output: Output) -> Pending:
        """Hand ``output`` to the producer; a refusal at send time becomes a failed delivery (re-sent)."""
        try:
            return output, await self._sink.send(output.topic, output.key, output.value, output.partition)
        except Exception as exc:  # noqa: BLE001 - any producer refusal is re-sent by deliver, never skipped
            failed: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return output, failed

    async def deliver(self, pending: Sequence[Pending]) -> None:
        """Wait until every output is delivered, re-sending failed ones with backoff (the batch stays unacked).

        Output is at-least-once, so a re-send is safe.
        """
        delay = 0.1
        failures = 0
        while pending:
            results = await asyncio.gather(*(delivery for _, delivery in pending), return_exceptions=True)
            # BaseException: a cancelled delivery future is not a delivered one.
            failed = [(out, r) for (out, _), r in zip(pending, results) if isinstance(r, BaseException)]
            if not failed:
                self.last_ok = True
                if failures:
                    log.warning("Kafka deliveries succeeded after %d failed attempts", failures)
                return
            failures += 1
            self.last_ok = False
            self._metrics.delivery_errors.inc(len(failed))
            first_output, first_error = failed[0]
            log.warning(
                "%d of %d outputs not delivered (e.g. to %s: %r); re-sending in %.2fs (batch not acknowledged)",
                len(failed), len(pending), first_output.topic, first_error, delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_delay_s)
            pending = [await self.send(out) for out, _ in failed]


class StoreCalls:
    """State-store calls run until they succeed, backing off on :class:`StateStoreError` (never dropping a batch)."""

    def __init__(self, metrics: WorkerMetrics, max_delay_s: float = 5.0) -> None:
        self._metrics = metrics
        self._max_delay_s = max_delay_s
        self.last_ok = True

    async def retry(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` until it succeeds; ``what`` names it in the log."""
        delay = 0.05
        failures = 0
        while True:
            try:
                result = await attempt()
                self.last_ok = True
                if failures:
                    log.warning("%s succeeded after %d failed attempts", what, failures)
                return result
            except StateStoreError as exc:
                failures += 1
                self.last_ok = False
                self._metrics.cassandra_errors.inc()
                log.warning("%s failed (%s); retrying in %.2fs (batch not acknowledged)", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_delay_s)
