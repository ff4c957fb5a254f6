"""InOrderAcks: batches overlap, acks never overtake an earlier batch, a failure acks nothing after it."""

from __future__ import annotations

import asyncio

import pytest

from streamrec.stream.acks import InOrderAcks


class Recorder:
    def __init__(self) -> None:
        self.acked: list[str] = []
        self.errors: list[BaseException] = []

    async def ack(self, batch: str) -> None:
        self.acked.append(batch)


def new_acks(recorder: Recorder, limit: int = 4) -> InOrderAcks[str]:
    return InOrderAcks(recorder.ack, limit=limit, on_error=recorder.errors.append)


def test_a_later_batch_durable_first_waits_for_the_earlier_one() -> None:
    async def main() -> list[str]:
        recorder = Recorder()
        acks = new_acks(recorder)
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        acks.add(first, "first")
        acks.add(second, "second")
        second.set_result(None)  # the second batch's writes land first
        await asyncio.sleep(0.01)
        assert recorder.acked == [], "acking the second batch first could commit past the first one's events"
        first.set_result(None)
        assert await acks.finish(1.0)
        return recorder.acked

    assert asyncio.run(main()) == ["first", "second"]


def test_a_failed_batch_stops_every_later_ack_and_is_reported_once() -> None:
    async def main() -> Recorder:
        recorder = Recorder()
        acks = new_acks(recorder)
        loop = asyncio.get_running_loop()
        durable = [loop.create_future() for _ in range(3)]
        for name, future in zip("abc", durable):
            acks.add(future, name)
        durable[2].set_result(None)
        durable[1].set_exception(RuntimeError("bug in batch b"))
        durable[0].set_result(None)
        assert not await acks.finish(1.0)
        with pytest.raises(RuntimeError, match="bug in batch b"):
            await acks.room()
        return recorder

    recorder = asyncio.run(main())
    assert recorder.acked == ["a"]
    assert [str(e) for e in recorder.errors] == ["bug in batch b"]


def test_room_waits_while_the_limit_of_batches_is_in_flight() -> None:
    async def main() -> None:
        recorder = Recorder()
        acks = new_acks(recorder, limit=2)
        loop = asyncio.get_running_loop()
        durable = [loop.create_future() for _ in range(2)]
        acks.add(durable[0], "a")
        acks.add(durable[1], "b")
        waiting = asyncio.ensure_future(acks.room())
        await asyncio.sleep(0.01)
        assert not waiting.done()  # two in flight: the agent takes no third batch
        durable[0].set_result(None)
        await asyncio.wait_for(waiting, 1.0)
        assert recorder.acked == ["a"] and len(acks) == 1

    asyncio.run(main())


def test_finish_acknowledges_what_is_durable_and_cancels_the_rest() -> None:
    async def main() -> None:
        recorder = Recorder()
        acks = new_acks(recorder)
        loop = asyncio.get_running_loop()
        done, stuck = loop.create_future(), loop.create_future()
        done.set_result(None)
        acks.add(done, "done")
        acks.add(stuck, "stuck")  # e.g. Cassandra down at SIGTERM
        assert not await acks.finish(0.05)
        await asyncio.sleep(0)
        assert recorder.acked == ["done"]
        assert stuck.cancelled() and not recorder.errors

    asyncio.run(main())
