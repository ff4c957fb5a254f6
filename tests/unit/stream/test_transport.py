"""The worker's Kafka transport: the lean hand-over still matches the Faust loop it replaces."""

from __future__ import annotations

import inspect

from faust.transport.consumer import Consumer as FaustConsumer

from streamrec.stream.transport import Consumer


def test_faust_loop_the_lean_hand_over_copies_is_unchanged() -> None:
    # stream/transport.Consumer._drain_messages is faust-streaming 0.15.3's loop with one change
    # (the per-record hand-over). A Faust release that changes its loop must be read again before
    # the copy is trusted: this fails until then.
    source = inspect.getsource(FaustConsumer._drain_messages)
    for line in (
        "ait = cast(AsyncIterator, getmany(timeout=1.0))",
        "if r_offset is None or offset >= r_offset:",
        "await self._add_gap(tp, r_offset + 1, offset)",
        "if self._n_acked >= commit_every:",
        "callback(message), self.suspend_flow.wait()",
        "set_read_offset(tp, offset)",
    ):
        assert line in source, f"faust's Consumer._drain_messages changed: {line!r} is gone"


def test_the_worker_consumer_replaces_the_loop() -> None:
    assert Consumer._drain_messages is not FaustConsumer._drain_messages
    assert "wait_first" in inspect.getsource(Consumer._drain_messages)  # the blocking case keeps Faust's path
