"""Prometheus metrics of one worker, in their own registry (no process-global state)."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class CassandraOp(StrEnum):
    """The ``op`` label of ``streamrec_cassandra_seconds``: what the processor times, and what benchmarks read."""

    LOAD_WINDOWS = "load_windows"
    SAVE = "save"  # a batch's changed windows and user states (several users per request)


class BatchStage(StrEnum):
    """The ``stage`` label of ``streamrec_batch_stage_seconds``: where a micro-batch spends its time, in order.

    ``queued`` runs from the oldest record's Kafka append time to the batch
    reaching the processor (broker, fetch, Faust's buffers and the batch
    wait); the others are the processor's own steps. ``durable`` overlaps the
    next batches (the worker pipelines), so the stages of one batch add up to
    its own latency, not to the worker's cost per batch.
    """

    QUEUED = "queued"  # Kafka append → batch handed to the processor
    VALIDATE = "validate"  # parse, validate, route (dead letters and re-sent records handed to the producer)
    LOAD = "load"  # windows of uncached users read from Cassandra, merged
    ENCODE = "encode"  # model (or popularity) top-K for every user of the batch
    PRODUCE = "produce"  # recommendations handed to the producer: the user can see them once delivered
    DURABLE = "durable"  # produced → windows and states stored and every output delivered
    ACK = "ack"  # durable → offsets acknowledged (waits for earlier batches: acks go in order)


@dataclass
class WorkerMetrics:
    """Everything an operator watches on a worker (`/metrics`)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.events = Counter("streamrec_events", "Valid events consumed", registry=r)
        self.rejected = Counter("streamrec_events_rejected", "Events dead-lettered, by reason", ["reason"], registry=r)
        self.repartitioned = Counter("streamrec_events_repartitioned", "Events re-keyed by user and re-sent", registry=r)
        self.delivery_errors = Counter(
            "streamrec_delivery_errors", "Outputs whose Kafka delivery failed and was retried", registry=r
        )
        self.model_refusals = Counter(
            "streamrec_model_refusals", "Model versions refused at load, verification or warm-up", registry=r
        )
        self.encoder_failures = Counter(
            "streamrec_encoder_failures", "Batches the encoder failed on, served by the popularity fallback", registry=r
        )
        self.rerouted = Counter(
            "streamrec_events_rerouted",
            "Events keyed by user but on another partition than the key's murmur2 owner, moved there",
            registry=r,
        )
        self.duplicates = Counter("streamrec_window_duplicates", "Events already in the window (replays)", registry=r)
        self.forgotten_events = Counter(
            "streamrec_forgotten_events", "Events of forgotten users: dropped (their past) or refused (dead-lettered)",
            ["action"], registry=r,
        )
        self.forget_requests = Counter(
            "streamrec_forget_requests", "Forget requests handled, by outcome", ["outcome"], registry=r
        )
        self.recommendations = Counter("streamrec_recommendations", "Recommendation messages emitted", registry=r)
        self.batch_size = Histogram(
            "streamrec_batch_size", "Records per micro-batch", buckets=(1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096),
            registry=r,
        )
        self.encoder_latency = Histogram(
            "streamrec_encoder_seconds", "Encoder call per micro-batch", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.event_to_emit = Histogram(
            "streamrec_event_to_recommendation_seconds", "Event ts to recommendation emitted",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.append_to_emit = Histogram(
            "streamrec_append_to_recommendation_seconds",
            "Kafka append time (record timestamp) of the triggering event to recommendation emitted",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.consume_to_emit = Histogram(
            "streamrec_consume_to_recommendation_seconds", "Batch consumed to recommendations emitted",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.batch_stage = Histogram(
            "streamrec_batch_stage_seconds", "Time a micro-batch spends in each stage (see BatchStage)", ["stage"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.batches_in_flight = Gauge(
            "streamrec_batches_in_flight", "Batches handed to the processor and not yet acknowledged", registry=r
        )
        self.cassandra_latency = Histogram(
            "streamrec_cassandra_seconds", "Cassandra call latency by operation", ["op"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.cassandra_errors = Counter("streamrec_cassandra_errors", "Failed Cassandra calls (retried)", registry=r)
        self.consumer_lag = Gauge("streamrec_consumer_lag", "Events behind the partition end, summed", registry=r)
        self.online_evaluated = Counter(
            "streamrec_online_evaluated", "Events scored against the previous recommendation", ["model"], registry=r
        )
        self.online_hits = Counter("streamrec_online_hits", "Next item within the previous top-10", ["model"], registry=r)
        self.online_ndcg = Counter("streamrec_online_ndcg_sum", "Sum of NDCG@10 of previous recommendations", ["model"], registry=r)
        # The shadow model and, on the very same events (the sampled users'), live and popularity.
        self.shadow_evaluated = Counter(
            "streamrec_shadow_evaluated", "Sampled users' events scored for shadow, live and popularity", ["model"],
            registry=r,
        )
        self.shadow_hits = Counter(
            "streamrec_shadow_hits", "Sampled events whose next item was in the model's previous top-10", ["model"],
            registry=r,
        )
        self.shadow_ndcg = Counter(
            "streamrec_shadow_ndcg_sum", "Sum of NDCG@10 on the sampled events", ["model"], registry=r
        )
        self.shadow_users = Counter("streamrec_shadow_users", "Users encoded by the shadow model", registry=r)
        self.shadow_encoder_latency = Histogram(
            "streamrec_shadow_encoder_seconds", "Shadow encoder call per micro-batch (sampled users only)",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.shadow_failures = Counter(
            "streamrec_shadow_failures", "Batches the shadow model failed on (serving unaffected)", registry=r
        )
        self.shadow_refusals = Counter(
            "streamrec_shadow_refusals", "Shadow versions refused at load, verification or warm-up", registry=r
        )
        self.shadow_version = Gauge("streamrec_shadow_version", "Shadow model version being scored (0 = none)", registry=r)
        self.model_version = Gauge("streamrec_model_version", "Model version being served (0 = popularity fallback)", registry=r)
        # A full (generation 2) collection walks every tracked object, the window cache's
        # entries included, while every thread that needs the GIL waits: a latency tail of its own.
        self.gc_pause = Histogram(
            "streamrec_gc_pause_seconds", "Python garbage-collector pauses, by generation", ["generation"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )

    def watch_gc(self) -> Callable[[], None]:
        """Time every garbage collection of this process into ``streamrec_gc_pause_seconds``; returns the undo."""
        started = [0.0]
        by_generation = [self.gc_pause.labels(generation=str(g)) for g in range(3)]

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                by_generation[info["generation"]].observe(time.perf_counter() - started[0])

        gc.callbacks.append(on_gc)
        return lambda: gc.callbacks.remove(on_gc)

    def render(self) -> bytes:
        """The Prometheus text exposition of this worker's metrics."""
        return generate_latest(self.registry)


def metric_values(text: str) -> dict[str, float]:
    """Flatten a Prometheus exposition into ``name{label=value,...}`` → value (demo and benchmarks read workers with it)."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values
