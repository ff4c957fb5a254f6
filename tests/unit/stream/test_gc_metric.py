"""The worker reports its garbage-collector pauses (an operator's view of a latency tail)."""

import gc

from streamrec.stream.metrics import WorkerMetrics, metric_values


def test_full_collections_are_counted_and_timed_and_the_undo_stops_it() -> None:
    metrics = WorkerMetrics()
    undo = metrics.watch_gc()
    try:
        gc.collect()
    finally:
        undo()
    values = metric_values(metrics.render().decode())
    assert values["streamrec_gc_pause_seconds_count{generation=2}"] >= 1
    assert values["streamrec_gc_pause_seconds_sum{generation=2}"] > 0
    counted = values["streamrec_gc_pause_seconds_count{generation=2}"]
    gc.collect()
    after = metric_values(metrics.render().decode())
    assert after["streamrec_gc_pause_seconds_count{generation=2}"] == counted
