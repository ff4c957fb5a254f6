"""Micro-batches from a Faust stream that keep filling while the agent works, handed over without acks.

faust-streaming's ``Stream.noack_take(max, within)`` blocks its buffer while
the agent holds a batch, and after the agent asks for the next one it waits
the full ``within`` before yielding. Records that arrive meanwhile wait in the
stream's channel and reach the buffer only during that wait, so every batch
pays the agent's processing time plus ``within`` in queueing, however little
is buffered (measured: the "queued" stage of a batch was 206 ms at 1,000
events/s with a 20 ms ``within``; a 2 ms ``within`` collapsed the worker to
batches of 5 records that could not keep up).

:func:`micro_batches` keeps the same contract (events, not values; acks left
to the caller; at most ``max_events`` per batch) with two changes: the buffer
is swapped, not blocked, when a batch is handed over, so records keep
arriving in the next buffer while the agent works; and a batch is handed over
at once when records are already buffered — topped up to ``max_events`` from
records still waiting in the stream's channel, if any. Only when the buffer is
empty does it wait — for the first record, then up to ``linger_s`` for more.
Batches are therefore small at light load and grow with the load, up to full
batches under a backlog, which is what keeps latency flat.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import faust


BACKLOG_POLL_S = 0.001


def _backlog(stream: faust.StreamT) -> int:
    """Records consumed from Kafka that wait in the stream's channel, not yet in a batch."""
    try:
        return stream.channel.queue.qsize()  # type: ignore[attr-defined]
    except AttributeError:
        return 0


async def micro_batches(stream: faust.StreamT, max_events: int, linger_s: float) -> AsyncIterator[list[Any]]:
    """Yield lists of at most ``max_events`` unacknowledged events; acks stay off for the stream.

    The caller acknowledges each event itself once it is handled. Acks are
    not turned back on when the generator ends (unlike ``noack_take``): a
    stream that is stopping must not acknowledge what it reads next.
    """
    buffered: list[list[Any]] = [[]]  # one slot, swapped for an empty list on hand-over
    has_events = asyncio.Event()
    full = asyncio.Event()
    room = asyncio.Event()

    async def add_to_buffer(value: Any) -> Any:
        # Back-pressure: a full buffer waits for the agent to take it (then Faust's own
        # flow control pauses the partitions once the stream's channel fills up).
        while len(buffered[0]) >= max_events and not stream.should_stop:
            room.clear()
            await stream.wait(room)  # type: ignore[arg-type]  # mode accepts any awaitable event
        event = stream.current_event
        if event is None:
            raise RuntimeError("micro_batches: a record reached the buffer without its event")
        buffered[0].append(event)
        has_events.set()
        if len(buffered[0]) >= max_events:
            full.set()
        return value

    stream.enable_acks = False
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter(stream.channel))  # type: ignore[attr-defined]  # noqa: SLF001 - as noack_take does
    try:
        while not stream.should_stop:
            if not buffered[0]:
                await stream.wait_for_stopped(has_events)  # type: ignore[arg-type]
                if not buffered[0]:
                    continue  # stopping
                if linger_s > 0:
                    # Light load: give the batch a moment to gather the records right behind the first.
                    await stream.wait_for_stopped(full, timeout=linger_s)  # type: ignore[arg-type]
            # Behind (records still wait in the stream's channel): let them into this batch, up
            # to the maximum, so a backlog is worked off in large batches, not in many small ones.
            # A plain sleep: ``wait_for_stopped`` costs four tasks per call, and this loop may turn
            # many times per batch under a backlog.
            while len(buffered[0]) < max_events and _backlog(stream) and not stream.should_stop:
                await asyncio.sleep(BACKLOG_POLL_S)
            batch, buffered[0] = buffered[0], []
            has_events.clear()
            full.clear()
            room.set()
            yield batch
    finally:
        stream._processors.remove(add_to_buffer)  # noqa: SLF001
