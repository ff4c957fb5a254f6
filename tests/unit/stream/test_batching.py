"""micro_batches on a real Faust agent (Faust's own test context: an in-memory channel, no broker)."""

from __future__ import annotations

import asyncio

import faust

from streamrec.stream.batching import micro_batches

HOUR = 3600.0


def run_agent(
    values: list[int], *, max_events: int, linger_s: float, busy_s: float, gap_s: float = 0.0, start_behind: bool = False
) -> list[list[int]]:
    """Feed ``values`` to an agent that takes micro-batches and works ``busy_s`` on each; the batches it saw.

    ``start_behind``: the agent starts taking batches only once every value waits in its channel.
    """
    app = faust.App("test-batching", broker="kafka://localhost:1", store="memory://")
    batches: list[list[int]] = []
    acks_on: list[bool] = []
    all_put = asyncio.Event()

    @app.agent()
    async def agent(stream: faust.StreamT) -> None:
        if start_behind:
            await all_put.wait()
        async for batch in micro_batches(stream, max_events, linger_s=linger_s):
            batches.append([event.value for event in batch])
            acks_on.append(stream.enable_acks)
            await asyncio.sleep(busy_s)

    async def main() -> None:
        async with agent.test_context() as ctx:
            for value in values:
                await ctx.put(value, wait=not start_behind)
                if gap_s:
                    await asyncio.sleep(gap_s)
            all_put.set()
            while sum(map(len, batches)) < len(values):
                await asyncio.sleep(0.01)

    # Bounded: a generator that waited for its linger while records were buffered would hang here.
    asyncio.run(asyncio.wait_for(main(), timeout=30))
    assert not any(acks_on), "Faust's auto-acks must stay off while batches are handed over"
    return batches


def test_buffered_records_are_handed_over_at_once_not_after_the_linger() -> None:
    # 0-2 fill the first batch; 3-4 are buffered while the agent works on it. With an hour of
    # linger, only a generator that hands buffered records over at once can finish in time.
    batches = run_agent([0, 1, 2, 3, 4], max_events=3, linger_s=HOUR, busy_s=0.2)
    assert batches == [[0, 1, 2], [3, 4]]


def test_a_batch_takes_everything_buffered_up_to_the_maximum_in_order() -> None:
    batches = run_agent(list(range(10)), max_events=4, linger_s=0.01, busy_s=0.1, gap_s=0.005)
    assert [v for batch in batches for v in batch] == list(range(10))  # nothing lost or reordered
    assert all(1 <= len(batch) <= 4 for batch in batches)
    assert len(batches[1]) == 4  # filled while the agent worked on the first batch


def test_records_buffered_during_a_long_batch_come_out_together_not_one_linger_apart() -> None:
    # The agent works 0.3 s on the first batch while 5 more records arrive one by one: the next
    # batch holds all of them (the buffer kept filling while the agent worked).
    batches = run_agent(list(range(6)), max_events=100, linger_s=0.0, busy_s=0.3, gap_s=0.02)
    assert batches[0] == [0]
    assert batches[1] == [1, 2, 3, 4, 5]


def test_a_backlog_is_worked_off_in_full_batches() -> None:
    # All twelve records are waiting before the agent asks for its first batch (a worker that
    # starts behind, or comes back from a pause): every batch is topped up to the maximum.
    batches = run_agent(list(range(12)), max_events=4, linger_s=0.0, busy_s=0.05, start_behind=True)
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
