"""The measured phases shared by e2e, latency and scale: draining a backlog, a paced stream, the worker's own metrics.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Sequence

from streamrec.bench.isolation import topic_size
from streamrec.bench.load import answered_times, produce_paced
from streamrec.bench.observe import OffsetWatcher, OutputCollector, ResourceSampler, infra_pids
from streamrec.testing.process import ServiceProcess
from streamrec.bench.stats import cumulative, histogram_mean, latency_summary, per_second, sustained_rate
from streamrec.config import Settings
from streamrec.stream.metrics import BatchStage, CassandraOp, metric_values


def run_backlog_phase(
    procs: Sequence[ServiceProcess], settings: Settings, output_topic: str, *, need_model: bool, timeout_s: float,
    profile: Callable[[int], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Start ``procs`` (one consumer group) on the events backlog; measure until every event is committed.

    Throughput is the committed-offset slope between 10 % and 90 % of the
    backlog (independent of the workers: read from the broker), cross-checked
    by the output messages' CreateTime slope seen by an independent consumer.
    """
    total = topic_size(settings.kafka_bootstrap, settings.events_topic)
    collector = OutputCollector(settings.kafka_bootstrap, [output_topic])
    collector.start()
    watcher = OffsetWatcher(settings.kafka_bootstrap, settings.consumer_group, settings.events_topic)
    started = time.time()
    for proc in procs:
        proc.start(need_model=need_model)
    ready = time.time()
    sampler = ResourceSampler([p.pid for p in procs])
    infra = infra_pids()
    infra_sampler = ResourceSampler(list(infra.values())) if infra else None
    sampler.start()
    if infra_sampler:
        infra_sampler.start()
    watcher.start()
    profile_result: dict[str, Any] | None = None
    try:
        if profile is not None:
            # Profile the steady state: from 10 % of the backlog on.
            watcher.wait_for(int(total * 0.1), timeout_s, alive=lambda: all(p.alive() for p in procs))
            profile_result = profile(procs[0].pid)
        done = watcher.wait_for(total, timeout_s, alive=lambda: all(p.alive() for p in procs))
        finished = time.time()
        worker_metrics = [metric_values(p.metrics()) for p in procs if p.name == "worker"]
    finally:
        watcher.stop()
        sampler.stop()
        if infra_sampler:
            infra_sampler.stop()
    collector.wait_for(collector.snapshot_count() + 1, timeout=3, idle=2)
    collector.stop()
    samples = watcher.samples
    rate = sustained_rate(samples, total)
    lo_t = next((t for t, c in samples if c >= 0.1 * total), None)
    hi_t = next((t for t, c in samples if c >= 0.9 * total), None)
    out_rate = sustained_rate(cumulative(collector.create_ts), len(collector.create_ts))
    result: dict[str, Any] = {
        "kind": procs[0].name,
        "workers": len(procs),
        "events": total,
        "completed": done,
        "committed": int(watcher.latest()),
        "events_per_s": round(rate, 1) if rate else None,
        "events_per_s_overall": round(watcher.latest() / max(1e-9, finished - ready), 1),
        "output_messages": collector.count,
        "output_messages_per_s": round(out_rate, 1) if out_rate else None,
        "startup_s": round(ready - started, 2),
        "drain_s": round(finished - ready, 2),
        "process": sampler.summary(lo_t, hi_t),
        "kafka_cassandra": infra_sampler.summary(lo_t, hi_t) if infra_sampler else None,
        "progress": [(round(t - started, 2), int(c)) for t, c in samples],
    }
    if worker_metrics:
        result["worker_metrics"] = summarise_worker_metrics(worker_metrics)
    if profile_result is not None:
        result["profile"] = profile_result
    if not done:
        result["error"] = "backlog not fully committed (timeout, stall or a dead worker); see the worker log"
        for proc in procs:
            result.setdefault("log_tail", {})[proc.worker_id] = proc.log_tail(15)
    return result


def _largest_bucket(merged: dict[str, float], name: str, labels: str) -> float | None:
    """Upper bound (ms) of the highest histogram bucket that holds an observation: the longest pause, to a bucket."""
    previous = 0.0
    largest = None
    buckets = sorted(
        (float(k.split("le=")[1].rstrip("}")), v) for k, v in merged.items()
        if k.startswith(f"{name}_bucket{{") and labels in k and "+Inf" not in k
    )
    for bound, cumulative in buckets:
        if cumulative > previous:
            largest = bound * 1000
        previous = cumulative
    return largest


def summarise_worker_metrics(per_worker: Sequence[dict[str, float]]) -> dict[str, Any]:
    """The worker's own view (its Prometheus metrics): batch size, encoder and Cassandra call means."""
    merged: dict[str, float] = {}
    for values in per_worker:
        for k, v in values.items():
            merged[k] = merged.get(k, 0.0) + v

    def mean_ms(name: str, labels: str = "") -> float | None:
        value = histogram_mean(merged, name, labels)
        return round(value * 1000, 3) if value is not None else None

    batches = merged.get("streamrec_batch_size_count", 0.0)
    return {
        "batches": int(batches),
        "mean_batch_records": round(merged.get("streamrec_batch_size_sum", 0.0) / batches, 1) if batches else None,
        "encoder_ms_per_batch": mean_ms("streamrec_encoder_seconds"),
        "consume_to_emit_ms_per_batch": mean_ms("streamrec_consume_to_recommendation_seconds"),
        # Labels from the processor's own enumeration (a bench that averaged labels the
        # processor never emits reported null for the save step).
        "cassandra_load_windows_ms": mean_ms("streamrec_cassandra_seconds", f"op={CassandraOp.LOAD_WINDOWS}"),
        "cassandra_save_ms": mean_ms("streamrec_cassandra_seconds", f"op={CassandraOp.SAVE}"),
        "events": int(merged.get("streamrec_events_total", 0)),
        "recommendations": int(merged.get("streamrec_recommendations_total", 0)),
        "rejected": int(sum(v for k, v in merged.items() if k.startswith("streamrec_events_rejected_total"))),
        "model_version": int(merged.get("streamrec_model_version", 0)),
        # The shadow's cost, paid for the sampled users only (see stream/shadow.py).
        "shadow_version": int(merged.get("streamrec_shadow_version", 0)),
        "shadow_encoder_ms_per_batch": mean_ms("streamrec_shadow_encoder_seconds"),
        "shadow_encoder_ms_total": round(merged.get("streamrec_shadow_encoder_seconds_sum", 0.0) * 1000, 1),
        "encoder_ms_total": round(merged.get("streamrec_encoder_seconds_sum", 0.0) * 1000, 1),
        "shadow_users": int(merged.get("streamrec_shadow_users_total", 0)),
        # Mean ms per batch in each stage, in the batch's own order (see stream.metrics.BatchStage).
        "stage_ms": {stage.value: mean_ms("streamrec_batch_stage_seconds", f"stage={stage}") for stage in BatchStage},
        # Full collections stop every thread of the worker: how many, and how long in all.
        "gc_full_collections": int(merged.get('streamrec_gc_pause_seconds_count{generation=2}', 0)),
        "gc_full_ms_total": round(merged.get('streamrec_gc_pause_seconds_sum{generation=2}', 0.0) * 1000, 1),
        "gc_full_ms_max_bucket": _largest_bucket(merged, "streamrec_gc_pause_seconds", "generation=2"),
    }


def run_latency_phase(settings: Settings, output_topic: str, events: Iterator[dict[str, Any]], *, rate: float,
                      seconds: float, warmup_events: int = 200, settle_s: float = 5.0) -> dict[str, Any]:
    """Offer ``rate`` events/s for ``seconds`` to a running worker; latency = send → arrival at our consumer."""
    collector = OutputCollector(settings.kafka_bootstrap, [output_topic], parse_ids=True)
    collector.start()
    try:
        # Warm-up: the group is assigned and the model/caches are hot before the clock starts.
        warm = produce_paced(settings.kafka_bootstrap, settings.events_topic, events, rate=max(rate, 200.0),
                             seconds=warmup_events / max(rate, 200.0))
        collector.wait_for(1, timeout=60, idle=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(e in collector.arrivals for e in list(warm.sent_at)[-20:]):
            time.sleep(0.1)
        paced = produce_paced(settings.kafka_bootstrap, settings.events_topic, events, rate=rate, seconds=seconds)
        # Drain: until every event is answered, or no new answer for ``settle_s``.
        last, last_change = -1, time.monotonic()
        while time.monotonic() - last_change < settle_s:
            with collector._lock:
                arrivals = dict(collector.arrivals)
            matched = len(answered_times(paced.sent_at, paced.users, arrivals))
            if matched >= len(paced.sent_at):
                break
            if matched != last:
                last, last_change = matched, time.monotonic()
            time.sleep(0.25)
    finally:
        collector.stop()
    answered = answered_times(paced.sent_at, paced.users, collector.arrivals)
    points: list[tuple[float, float]] = []
    own: list[float] = []
    for event_id, sent in paced.sent_at.items():
        arrived = answered.get(event_id)
        if arrived is None:
            continue
        points.append((sent - paced.started, (arrived - sent) * 1000.0))
        if event_id in collector.arrivals:
            own.append((collector.arrivals[event_id] - sent) * 1000.0)
    latencies = [p[1] for p in points]
    sent_n = len(paced.sent_at)
    return {
        "offered_rate": rate,
        "seconds": seconds,
        "sent": sent_n,
        "achieved_send_rate": round(sent_n / max(1e-9, paced.finished - paced.started), 1),
        "producer_behind_max_s": paced.behind_max_s,
        "matched": len(points),
        "matched_fraction": round(len(points) / sent_n, 4) if sent_n else None,
        "latency": latency_summary(latencies),
        "own_message_fraction": round(len(own) / sent_n, 4) if sent_n else None,
        "own_message_latency": latency_summary(own),
        "per_second": per_second(points),
        "_points": points,
    }
