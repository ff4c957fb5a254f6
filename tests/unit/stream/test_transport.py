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


def test_the_worker_app_keeps_offsets_but_no_per_record_statistics(tmp_path) -> None:  # noqa: ANN001
    from faust.types import TP

    from streamrec.config import Settings
    from streamrec.stream.app import new_worker_app
    from streamrec.stream.transport import LeanMonitor

    app = new_worker_app(Settings(), tmp_path, web_host="127.0.0.1")
    monitor = app.monitor
    assert isinstance(monitor, LeanMonitor)
    tp = TP("streamrec.events", 0)
    # The hooks Faust calls for every record and every send do nothing...
    monitor.on_message_in(tp, 5, object())
    assert monitor.on_stream_event_in(tp, 5, object(), object()) is None
    monitor.on_send_initiated(object(), "t", object(), 1, 1)
    assert monitor.messages_received_total == 0 and monitor.events_total == 0 and monitor.messages_sent == 0
    # ...while what Faust's consumer reports about offsets is still tracked.
    monitor.track_tp_end_offset(tp, 42)
    monitor.on_tp_commit({tp: 40})
    assert monitor.tp_end_offsets[tp] == 42 and monitor.tp_committed_offsets[tp] == 40
