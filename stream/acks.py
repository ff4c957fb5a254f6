"""Batches in flight, acknowledged in the order they were consumed, each once it is durable.

The worker pipelines micro-batches: batch N+1 is validated, merged and
encoded while batch N's windows are written and its outputs delivered. Acks
must still go in consumption order: faust-streaming commits the first run of
consecutive acknowledged offsets of a partition, and when nothing was
committed yet it does not check that the run starts at the committed offset,
so acking N+1 before N could commit past N's unstored events. Here each
batch's ack waits for its own durability and for the previous batch's ack.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Awaitable, Callable, Generic, TypeVar

B = TypeVar("B")


class InOrderAcks(Generic[B]):
    """At most ``limit`` batches in flight; each acknowledged after it and every earlier batch is.

    ``on_error`` is called once, with the first failure of a batch's
    durability or ack (a bug: the processor retries store and delivery
    failures itself); no later batch is acknowledged after it.
    """

    def __init__(
        self,
        ack: Callable[[B], Awaitable[None]],
        *,
        limit: int,
        on_error: Callable[[BaseException], None],
        on_count: Callable[[int], None] = lambda n: None,
        on_ack_wait: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self._ack = ack
        self._limit = max(1, limit)
        self._on_error = on_error
        self._on_count = on_count
        self._on_ack_wait = on_ack_wait
        self._pending: deque[asyncio.Task[None]] = deque()
        self.error: BaseException | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, durable: Awaitable[object], batch: B) -> None:
        """Acknowledge ``batch`` once ``durable`` has completed and every batch added before is acknowledged."""
        previous = self._pending[-1] if self._pending else None
        task = asyncio.ensure_future(self._ack_after(previous, durable, batch))
        task.add_done_callback(self._done)
        self._pending.append(task)
        self._on_count(len(self._pending))

    async def room(self) -> None:
        """Wait until fewer than ``limit`` batches are in flight; raises the first failure, if any."""
        while len(self._pending) >= self._limit and self.error is None:
            await asyncio.wait({self._pending[0]})
        if self.error is not None:
            raise self.error

    async def finish(self, timeout_s: float) -> bool:
        """Acknowledge what becomes durable within ``timeout_s``; the rest is cancelled (consumed again later)."""
        if not self._pending:
            return True
        last = self._pending[-1]
        await asyncio.wait({last}, timeout=timeout_s)
        if not last.done():
            for task in list(self._pending):
                task.cancel()
            return False
        return not last.cancelled() and last.exception() is None

    async def _ack_after(self, previous: asyncio.Task[None] | None, durable: Awaitable[object], batch: B) -> None:
        await durable
        done = time.perf_counter()
        if previous is not None:
            await previous  # re-raises an earlier failure: nothing after it is acknowledged
        await self._ack(batch)
        self._on_ack_wait(time.perf_counter() - done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._pending.remove(task)
        self._on_count(len(self._pending))
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self.error is None:
            self.error = exc
            self._on_error(exc)
