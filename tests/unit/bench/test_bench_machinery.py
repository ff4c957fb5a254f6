"""Pure parts of the streaming benchmarks: percentiles, pacing, rates, latency attribution, reports."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamrec.bench import load, profiling, report, stats


def test_percentiles_match_numpy_linear_interpolation() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0, 100.0, 7.5]
    got = stats.percentiles(values, (50, 95, 99))
    for q in (50, 95, 99):
        assert got[f"p{q}"] == pytest.approx(float(np.percentile(values, q)))


def test_percentiles_of_nothing_are_none_and_single_value_is_itself() -> None:
    assert stats.percentiles([], (50, 99)) == {"p50": None, "p99": None}
    assert stats.percentiles([7.0], (50, 99.9)) == {"p50": 7.0, "p99.9": 7.0}


def test_latency_summary_rounds_and_counts() -> None:
    summary = stats.latency_summary([1.0, 2.0, 3.0, 4.0])
    assert summary["count"] == 4 and summary["max_ms"] == 4.0 and summary["mean_ms"] == 2.5
    assert summary["p50_ms"] == 2.5
    assert stats.latency_summary([])["p99_ms"] is None


def test_pacing_deadlines_and_due_counts() -> None:
    assert stats.send_deadline(0, 1000.0, 10.0) == 10.0
    assert stats.send_deadline(500, 1000.0, 10.0) == pytest.approx(10.5)
    assert stats.due_count(1000.0, 10.0, 9.0, 5000) == 0  # not started
    assert stats.due_count(1000.0, 10.0, 10.0, 5000) == 1  # event 0 is due at the start
    assert stats.due_count(1000.0, 10.0, 10.2505, 5000) == 251
    assert stats.due_count(1000.0, 10.0, 100.0, 5000) == 5000  # capped
    assert stats.due_count(0.0, 10.0, 10.0, 42) == 42  # rate 0 = as fast as possible


def test_sustained_rate_ignores_startup_and_tail() -> None:
    # 5 s of start-up with nothing, then 1,000 events/s for 10 s, then a slow tail.
    samples = [(float(t), 0.0) for t in range(6)] + [(5.0 + s, 1000.0 * s) for s in range(1, 11)] + [(30.0, 10_000.0)]
    assert stats.sustained_rate(samples, 10_000) == pytest.approx(1000.0)


def test_sustained_rate_interpolates_and_reports_unfinished_runs() -> None:
    samples = [(0.0, 0.0), (1.0, 50.0), (2.0, 100.0)]
    assert stats.sustained_rate(samples, 100) == pytest.approx(50.0)
    assert stats.sustained_rate([(0.0, 0.0), (1.0, 10.0)], 100) is None
    assert stats.sustained_rate([], 100) is None


def test_cumulative_sorts_times() -> None:
    assert stats.cumulative([3.0, 1.0, 2.0]) == [(1.0, 1.0), (2.0, 2.0), (3.0, 3.0)]


def test_answered_times_credit_a_users_earlier_events_of_the_batch() -> None:
    sent = {"a1": 1.0, "a2": 1.1, "b1": 1.2, "a3": 2.0}
    users = {"a1": "a", "a2": "a", "b1": "b", "a3": "a"}
    arrivals = {"a2": 1.5, "a3": 2.4}  # one message for a1+a2 (carries a2), one for a3; b1 never answered
    answered = load.answered_times(sent, users, arrivals)
    assert answered == {"a1": 1.5, "a2": 1.5, "a3": 2.4}


def test_answered_times_take_the_earliest_covering_arrival() -> None:
    # A replayed/late message for a1 must not make a1 look slower than a2's earlier answer.
    answered = load.answered_times({"a1": 1.0, "a2": 1.1}, {"a1": "a", "a2": "a"}, {"a1": 9.0, "a2": 1.3})
    assert answered["a1"] == 1.3


def test_per_second_buckets() -> None:
    rows = stats.per_second([(0.1, 10.0), (0.9, 20.0), (1.5, 5.0)], qs=(50,))
    assert rows == [{"second": 0, "count": 2, "p50_ms": 15.0}, {"second": 1, "count": 1, "p50_ms": 5.0}]


def test_resource_summary_window_and_fallback() -> None:
    samples = [{"t": 1.0, "cpu_pct": 50.0, "rss_mb": 100.0}, {"t": 2.0, "cpu_pct": 150.0, "rss_mb": 120.0},
               {"t": 3.0, "cpu_pct": 10.0, "rss_mb": 90.0}]
    s = stats.resource_summary(samples, 1.5, 2.5)
    assert s == {"cpu_mean_pct": 150.0, "cpu_max_pct": 150.0, "rss_max_mb": 120.0, "samples": 1}
    assert stats.resource_summary(samples, 10.0, 11.0)["samples"] == 3  # empty window: all samples
    assert stats.resource_summary([])["cpu_mean_pct"] is None


def test_ratio_median_and_target_check() -> None:
    assert stats.ratio(2500.0, 5000.0) == 0.5
    assert stats.ratio(None, 5000.0) is None and stats.ratio(1.0, 0.0) is None
    assert stats.median([3.0, None, 1.0, 2.0]) == 2.0
    assert stats.median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert stats.median([None]) is None
    assert report.target_check(5200.0, 5000.0) == "met"
    assert report.target_check(60.0, 50.0, higher_is_better=False) == "NOT met"
    assert report.target_check(None, 1.0) == "not measured"


def test_format_table_aligns_columns() -> None:
    text = report.format_table([("worker", 5123.4, None), ("passthrough", 9.87, 3)], ("run", "events/s", "n"))
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert "5,123" in lines[2] and "9.87" in lines[3] and lines[2].rstrip().endswith("-")


def test_assemble_report_collects_headlines_and_errors() -> None:
    combined = report.assemble_report(
        {"e2e": {"headline": {"worker_events_per_s": 1.0}, "x": 1}, "scale": None},
        {"cpus": 2}, errors={"scale": "boom"},
    )
    assert combined["headlines"] == {"e2e": {"worker_events_per_s": 1.0}}
    assert set(combined["results"]) == {"e2e"}
    assert combined["errors"] == {"scale": "boom"} and combined["machine"] == {"cpus": 2}


def test_summarise_collapsed_categories() -> None:
    lines = [
        "<module> (streamrec/__main__.py:1);run (faust/worker.py:10);run (onnxruntime/capi/session.py:200) 60",
        "<module> (streamrec/__main__.py:1);send (aiokafka/producer.py:5) 30",
        "<module> (streamrec/__main__.py:1);decode (json/decoder.py:1) 10",
    ]
    summary = profiling.summarise_collapsed(lines)
    assert summary["samples"] == 100
    assert summary["categories_pct"]["ONNX Runtime (encoder run)"] == 60.0
    assert summary["categories_pct"]["Kafka client (aiokafka)"] == 30.0
    assert summary["categories_pct"]["other (interpreter, stdlib)"] == 10.0
    assert not math.isnan(sum(summary["top_self_pct"].values()))


def test_the_bench_reads_the_cassandra_labels_the_processor_emits() -> None:
    """The bench once averaged op labels the processor never emits: its save figure was always null."""
    import asyncio

    import orjson

    from streamrec.bench.phases import summarise_worker_metrics
    from streamrec.config import Settings
    from streamrec.stream.metrics import metric_values
    from streamrec.stream.processor import BatchProcessor, SourceRecord
    from streamrec.stream.state.memory import InMemoryStore

    class Sink:
        async def send(self, topic, key, value, partition=None):  # noqa: ANN001, ANN201
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future

    processor = BatchProcessor(Settings(), InMemoryStore(), Sink())
    event = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": "view", "ts": 1_700_000_000_000}
    asyncio.run(processor.process([SourceRecord("t", 0, 0, b"u1", orjson.dumps(event))]))
    summary = summarise_worker_metrics([metric_values(processor.metrics.render().decode())])
    assert summary["cassandra_load_windows_ms"] is not None and summary["cassandra_save_ms"] is not None


def test_the_catalogue_rows_put_the_encode_step_beside_the_other_steps() -> None:
    from streamrec.bench.catalogue import catalogue_rows, headline

    def trial(items: int, rate: float, cpu_pct: float, encoder_ms: float) -> dict:
        return {"catalogue_items": items, "events_per_s": rate, "process": {"cpu_mean_pct": cpu_pct},
                "worker_metrics": {"encoder_ms_per_batch": encoder_ms, "mean_batch_records": 100.0,
                                   "stage_ms": {"queued": 500.0, "validate": 2.0, "load": 5.0, "encode": encoder_ms,
                                                "produce": 3.0, "durable": 40.0}}}

    rows = catalogue_rows([trial(2_000, 2_000.0, 80.0, 10.0), trial(200_000, 1_000.0, 90.0, 60.0)])
    small, large = rows
    assert small["cpu_ms_per_event"] == 0.4 and small["encode_ms_per_event"] == 0.1
    assert small["other_steps_ms_per_event"] == 0.1  # validate + load + produce; not queueing, not the store
    assert large["cpu_ms_per_event"] == 0.9 and large["encode_ms_per_event"] == 0.6
    assert large["cpu_ms_per_event_ratio"] == 2.25 and large["encode_ms_per_event_ratio"] == 6.0
    assert large["other_steps_ms_per_event_ratio"] == 1.0  # only the model grew with the catalogue
    assert headline(rows)["target"] == "<= 2x: NOT met"


def test_the_users_rows_put_the_cassandra_steps_per_event_beside_the_cpu() -> None:
    from streamrec.bench.users import users_rows

    def trial(users: int, rate: float, cpu_pct: float, load_ms: float, save_ms: float) -> dict:
        return {"users": users, "events_per_s": rate, "process": {"cpu_mean_pct": cpu_pct},
                "worker_metrics": {"mean_batch_records": 500.0, "cassandra_load_windows_ms": load_ms,
                                   "cassandra_save_ms": save_ms, "encoder_ms_per_batch": 20.0}}

    rows = users_rows([trial(20_000, 4_000.0, 80.0, 10.0, 50.0), trial(1_000_000, 1_000.0, 80.0, 60.0, 150.0)])
    small, large = rows
    assert small["cpu_ms_per_event"] == 0.2 and large["cpu_ms_per_event"] == 0.8
    assert large["cpu_ms_per_event_ratio"] == 4.0
    assert (large["load_ms_per_event"], large["save_ms_per_event"]) == (0.12, 0.3)
    assert large["load_ms_per_event_ratio"] == 6.0 and large["encode_ms_per_event_ratio"] == 1.0


def test_latency_attribution_charges_each_component_the_step_it_adds() -> None:
    from streamrec.bench import latency

    kinds = latency.phase_kinds(with_passthrough=False, attribute=True)
    assert kinds == ["bare", "passthrough", latency.MEMORY_POPULARITY, latency.MEMORY, "worker"]  # floors first
    p99 = {"bare": 56.5, "passthrough": 53.5, latency.MEMORY_POPULARITY: 55.2, latency.MEMORY: 59.7, "worker": 145.5}
    rows = {row["component"].split(" ")[0]: row["adds_ms"] for row in latency.attribution(p99)}
    assert rows == {"Kafka": 56.5, "Faust": -3.0, "streamrec's": 1.7, "the": 4.5, "Cassandra": 85.8}
    assert sum(rows.values()) == pytest.approx(p99["worker"])  # the steps add up to the worker's figure
    missing = latency.attribution({"bare": 56.5, "worker": 145.5})
    assert [row["adds_ms"] for row in missing] == [56.5, None, None, None, None]  # no guess where a phase is missing
