"""Shared machinery of the streaming benchmarks (e2e, latency, scale, state).

Pure parts (unit-tested): percentiles, rate pacing, sustained-rate fitting,
tables and report assembly. Infrastructure parts: isolated settings per run,
topics and keyspaces, a fast pre-producer (librdkafka), worker and passthrough
subprocesses, psutil sampling, an independent consumer of the output topic,
a committed-offset watcher, and JSON/PNG output.

Everything a run creates is named after its run id (topic prefix, keyspace,
consumer groups, web ports), so benchmarks never collide with each other, with
tests, or with the demo; topics and keyspaces are dropped afterwards unless
``keep`` is asked for.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import orjson

from streamrec.config import Settings
from streamrec.onnx.artifact import MANIFEST, version_dir_name
from streamrec.onnx.registry import ModelRegistry, resolve_artifact_dir
from streamrec.stream.generator import SyntheticConfig, generate_events
from streamrec.stream.metrics import BatchStage, CassandraOp, metric_values
from streamrec.stream.state.cassandra import check_keyspace_name, connect, migrate
from streamrec.stream.topics import ensure_topics_sync

log = logging.getLogger(__name__)

OUT_DIR = Path("out/bench")


# ---------------------------------------------------------------------------
# Pure helpers (unit-tested)
# ---------------------------------------------------------------------------
def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, float | None]:
    """``{"p50": …, "p95": …, "p99": …}`` with linear interpolation (numpy's default); None when empty."""
    data = sorted(float(v) for v in values)
    out: dict[str, float | None] = {}
    for q in qs:
        key = f"p{q:g}"
        if not data:
            out[key] = None
            continue
        pos = (len(data) - 1) * (q / 100.0)
        lo = math.floor(pos)
        hi = min(lo + 1, len(data) - 1)
        out[key] = data[lo] + (data[hi] - data[lo]) * (pos - lo)
    return out


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, Any]:
    """Count, mean, max and p50/p95/p99/p99.9 (ms, rounded) of a latency sample."""
    pct = percentiles(latencies_ms, (50, 95, 99, 99.9))
    return {
        "count": len(latencies_ms),
        "mean_ms": round(sum(latencies_ms) / len(latencies_ms), 2) if latencies_ms else None,
        "max_ms": round(max(latencies_ms), 2) if latencies_ms else None,
        **{f"{k}_ms": (round(v, 2) if v is not None else None) for k, v in pct.items()},
    }


def send_deadline(n: int, rate: float, started: float) -> float:
    """When event ``n`` (0-based) is due under a constant ``rate`` per second starting at ``started``."""
    if rate <= 0:
        return started
    return started + n / rate


def due_count(rate: float, started: float, now: float, total: int) -> int:
    """How many events should have been sent by ``now`` (capped at ``total``); all of them when rate <= 0."""
    if rate <= 0:
        return total
    if now < started:
        return 0
    return min(total, int((now - started) * rate) + 1)


def sustained_rate(samples: Sequence[tuple[float, float]], total: float, lo: float = 0.1, hi: float = 0.9) -> float | None:
    """Rate between the moments a cumulative count first reached ``lo`` and ``hi`` of ``total``.

    ``samples`` are ``(time, cumulative count)`` pairs in time order. Cutting
    the first and last 10 % removes start-up (group join, model warm-up) and
    the tail (commit interval) from a backlog measurement. The crossing times
    are interpolated between samples. None if the count never got past ``hi``.
    """
    if total <= 0 or len(samples) < 2:
        return None

    def crossing(target: float) -> float | None:
        prev_t, prev_c = samples[0]
        if prev_c >= target:
            return prev_t
        for t, c in samples[1:]:
            if c >= target:
                if c == prev_c:
                    return t
                return prev_t + (t - prev_t) * (target - prev_c) / (c - prev_c)
            prev_t, prev_c = t, c
        return None

    t_lo, t_hi = crossing(lo * total), crossing(hi * total)
    if t_lo is None or t_hi is None or t_hi <= t_lo:
        return None
    return (hi - lo) * total / (t_hi - t_lo)


def cumulative(timestamps: Iterable[float]) -> list[tuple[float, float]]:
    """Sorted timestamps as ``(time, cumulative count)`` samples (for :func:`sustained_rate`)."""
    return [(t, float(i + 1)) for i, t in enumerate(sorted(timestamps))]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)


def median(values: Sequence[float | None]) -> float | None:
    data = sorted(v for v in values if v is not None)
    if not data:
        return None
    mid = len(data) // 2
    return data[mid] if len(data) % 2 else (data[mid - 1] + data[mid]) / 2


def resource_summary(samples: Sequence[dict[str, float]], t0: float | None = None, t1: float | None = None) -> dict[str, Any]:
    """Mean/max CPU% and max RSS of psutil samples, restricted to ``[t0, t1]`` when given."""
    window = [s for s in samples if (t0 is None or s["t"] >= t0) and (t1 is None or s["t"] <= t1)] or list(samples)
    if not window:
        return {"cpu_mean_pct": None, "cpu_max_pct": None, "rss_max_mb": None, "samples": 0}
    cpus = [s["cpu_pct"] for s in window]
    return {
        "cpu_mean_pct": round(sum(cpus) / len(cpus), 1),
        "cpu_max_pct": round(max(cpus), 1),
        "rss_max_mb": round(max(s["rss_mb"] for s in window), 1),
        "samples": len(window),
    }


def per_second(points: Sequence[tuple[float, float]], qs: Sequence[float] = (50, 99)) -> list[dict[str, float]]:
    """Bucket ``(seconds since start, latency ms)`` points by whole second: count and percentiles per bucket."""
    buckets: dict[int, list[float]] = {}
    for t, v in points:
        buckets.setdefault(int(t), []).append(v)
    rows = []
    for second in sorted(buckets):
        pct = percentiles(buckets[second], qs)
        rows.append({"second": second, "count": len(buckets[second]), **{f"{k}_ms": round(v, 2) for k, v in pct.items() if v is not None}})
    return rows


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A fixed-width text table (right-aligned, numbers formatted compactly)."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in text]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in text]
    return "\n".join(lines)


def target_check(value: float | None, target: float, higher_is_better: bool = True) -> str:
    if value is None:
        return "not measured"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "NOT met"


def assemble_report(parts: dict[str, dict[str, Any] | None], machine: dict[str, Any], errors: dict[str, str] | None = None) -> dict[str, Any]:
    """One combined report: each benchmark's result, its headline, the machine, and failures."""
    headlines: dict[str, Any] = {}
    for name, result in parts.items():
        if result is not None:
            headlines[name] = result.get("headline", {})
    return {
        "benchmark": "all",
        "machine": machine,
        "headlines": headlines,
        "results": {k: v for k, v in parts.items() if v is not None},
        "errors": dict(errors or {}),
    }


def machine_info() -> dict[str, Any]:
    """Where and when a benchmark ran, with the load (others share this box)."""
    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    try:
        info["loadavg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:  # psutil missing is not a reason to fail a report
        pass
    return info


def write_json(result: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    return path


# ---------------------------------------------------------------------------
# Isolation: settings, topics, keyspaces
# ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def new_run_id() -> str:
    return f"{int(time.time()) % 10_000_000}{os.getpid() % 1000:03d}"


def isolated_settings(base: Settings, bench: str, run_id: str, **overrides: Any) -> Settings:
    """Settings with this run's own topic prefix, keyspace, consumer group and web port."""
    return base.with_overrides(
        topic_prefix=f"bench-{bench}-{run_id}",
        cassandra_keyspace=f"bench_{bench}_{run_id}",
        consumer_group=f"bench-{bench}-{run_id}",
        web_port=free_port(),
        **overrides,
    )


def create_topics(settings: Settings, extra: Sequence[str] = (), partitions: int | None = None) -> dict[str, int]:
    """The streamrec topics of ``settings`` plus ``extra`` ones (same partition count)."""
    from confluent_kafka.admin import AdminClient, NewTopic


    if partitions is not None and partitions != settings.topic_partitions:
        settings = settings.with_overrides(topic_partitions=partitions)
    counts = ensure_topics_sync(settings)
    if extra:
        admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
        futures = admin.create_topics([NewTopic(t, settings.topic_partitions, settings.topic_replication) for t in extra])
        for topic, fut in futures.items():
            try:
                fut.result(30)
            except Exception as exc:  # TOPIC_ALREADY_EXISTS is fine
                if "exists" not in str(exc).lower():
                    raise
            counts[topic] = settings.topic_partitions
    return counts


def delete_topics(settings: Settings, topics: Sequence[str]) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for topic, fut in admin.delete_topics(list(topics), operation_timeout=30).items():
        try:
            fut.result(30)
        except Exception as exc:  # best-effort clean-up
            log.info("could not delete topic %s: %s", topic, exc)


def all_topics(settings: Settings, extra: Sequence[str] = ()) -> list[str]:
    return [settings.events_topic, settings.recommendations_topic, settings.dlq_topic, settings.model_updates_topic, *extra]


def prepare_schema(settings: Settings) -> None:
    """Create the run's keyspace and tables before any worker starts (no concurrent DDL from workers)."""

    cluster, session = connect(settings)
    try:
        migrate(session, settings)
    finally:
        cluster.shutdown()


def drop_keyspace(settings: Settings, keyspace: str | None = None) -> None:

    cluster, session = connect(settings, timeout_s=60)
    try:
        session.execute(f"DROP KEYSPACE IF EXISTS {check_keyspace_name(keyspace or settings.cassandra_keyspace)}", timeout=60)
    except Exception as exc:  # best-effort clean-up
        log.info("could not drop keyspace: %s", exc)
    finally:
        cluster.shutdown()


# ---------------------------------------------------------------------------
# Input: synthetic events, pre-production, paced production
# ---------------------------------------------------------------------------
def synthetic_events(events: int, users: int, items: int, seed: int = 0) -> Iterator[dict[str, Any]]:

    return generate_events(SyntheticConfig(num_users=users, num_items=items, num_events=events, seed=seed))


def encode_event(event: dict[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) as the producer helper writes them: key = user id, value = the JSON event."""
    return str(event["user_id"]).encode(), orjson.dumps(event)


def _producer(bootstrap: str, *, latency: bool, partitioner: str = "murmur2_random") -> Any:
    from confluent_kafka import Producer

    # murmur2 as the Java client: records land on their key's owner partition (librdkafka's
    # CRC32 default would make the worker re-route most of them, a second trip through Kafka).
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                            "compression.type": "none", "partitioner": partitioner}
    if latency:
        conf.update({"linger.ms": 0, "batch.size": 64 * 1024})
    else:
        conf.update({"linger.ms": 50, "batch.size": 1024 * 1024, "queue.buffering.max.messages": 500_000,
                     "queue.buffering.max.kbytes": 512 * 1024})
    return Producer(conf)


def preproduce(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]],
               partitioner: str = "murmur2_random") -> tuple[int, float]:
    """Produce (key, value) records as fast as possible (librdkafka, big batches); returns (count, seconds)."""
    producer = _producer(bootstrap, latency=False, partitioner=partitioner)
    started = time.perf_counter()
    count = 0
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
        count += 1
        if count % 10_000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left:
        raise RuntimeError(f"{left} records not delivered to {topic}")
    return count, time.perf_counter() - started


@dataclass
class PacedResult:
    sent_at: dict[str, float]
    started: float
    finished: float
    behind_max_s: float
    users: dict[str, str] = field(default_factory=dict)


def answered_times(sent_at: dict[str, float], users: dict[str, str], arrivals: dict[str, float]) -> dict[str, float]:
    """When each sent event was answered: by its own recommendation or by a later one of the same user.

    A worker emits one recommendation per user per micro-batch, carrying the
    user's last event of the batch; that message also answers the user's
    earlier events (sent before it). Walks each user's events from the last
    sent, keeping the earliest arrival seen so far.
    """
    by_user: dict[str, list[str]] = {}
    for event_id in sorted(sent_at, key=sent_at.__getitem__):
        by_user.setdefault(users.get(event_id, event_id), []).append(event_id)
    answered: dict[str, float] = {}
    for ids in by_user.values():
        best: float | None = None
        for event_id in reversed(ids):
            own = arrivals.get(event_id)
            if own is not None and (best is None or own < best):
                best = own
            if best is not None:
                answered[event_id] = best
    return answered


def produce_paced(bootstrap: str, topic: str, events: Iterable[dict[str, Any]], rate: float, seconds: float,
                  clock: Callable[[], float] = time.time) -> PacedResult:
    """Send events at ``rate``/s for ``seconds``; records each event's send time (wall clock) by event_id."""
    producer = _producer(bootstrap, latency=True)
    total = int(rate * seconds)
    sent_at: dict[str, float] = {}
    users: dict[str, str] = {}
    it = iter(events)
    started = clock() + 0.05
    sent = 0
    behind = 0.0
    while sent < total:
        now = clock()
        due = due_count(rate, started, now, total)
        if due <= sent:
            time.sleep(max(0.0, min(0.005, send_deadline(sent, rate, started) - now)))
            continue
        behind = max(behind, now - send_deadline(sent, rate, started))
        while sent < due:
            event = next(it, None)
            if event is None:
                total = sent
                break
            key, value = encode_event(event)
            sent_at[event["event_id"]] = clock()
            users[event["event_id"]] = str(event["user_id"])
            while True:
                try:
                    producer.produce(topic, value=value, key=key)
                    break
                except BufferError:
                    producer.poll(0.01)
            sent += 1
        producer.poll(0)
    producer.flush(60)
    return PacedResult(sent_at, started, clock(), round(behind, 4), users)


# ---------------------------------------------------------------------------
# Observation: output consumer, committed offsets, process resources
# ---------------------------------------------------------------------------
class OutputCollector(threading.Thread):
    """An independent consumer (librdkafka) of output topics, started at their end.

    Records the arrival wall-clock time and the producer's CreateTime of every
    message; with ``parse_ids`` also the triggering ``event_id`` (the field
    both a recommendation and a forwarded event carry) → first arrival time.
    """

    def __init__(self, bootstrap: str, topics: Sequence[str], *, parse_ids: bool = False) -> None:
        super().__init__(daemon=True, name="bench-output-collector")
        from confluent_kafka import Consumer, TopicPartition

        self.parse_ids = parse_ids
        self.count = 0
        self.create_ts: list[float] = []
        self.arrivals: dict[str, float] = {}
        self.emitted: dict[str, float] = {}
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-collector-{time.time_ns()}",
                                   "enable.auto.commit": False, "auto.offset.reset": "latest",
                                   "fetch.wait.max.ms": 5, "fetch.min.bytes": 1})
        meta = self._consumer.list_topics(timeout=10)
        tps = []
        for topic in topics:
            parts = meta.topics[topic].partitions if topic in meta.topics else {}
            if not parts:
                raise RuntimeError(f"topic {topic} does not exist")
            for p in parts:
                low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                tps.append(TopicPartition(topic, p, high))
        self._consumer.assign(tps)

    def run(self) -> None:
        consumer = self._consumer
        try:
            while not self._halt.is_set():
                msgs = consumer.consume(num_messages=2000, timeout=0.05)
                if not msgs:
                    continue
                now = time.time()
                with self._lock:
                    for msg in msgs:
                        if msg.error():
                            continue
                        self.count += 1
                        self.create_ts.append(msg.timestamp()[1] / 1000.0)
                        if self.parse_ids:
                            try:
                                event_id = orjson.loads(msg.value()).get("event_id")
                            except (orjson.JSONDecodeError, AttributeError):
                                continue
                            if event_id is not None and event_id not in self.arrivals:
                                self.arrivals[event_id] = now
                                self.emitted[event_id] = msg.timestamp()[1] / 1000.0
        finally:
            consumer.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def snapshot_count(self) -> int:
        with self._lock:
            return self.count

    def wait_for(self, n: int, timeout: float, idle: float = 5.0) -> bool:
        """Until ``n`` messages arrived, or nothing new for ``idle`` seconds, or ``timeout``."""
        deadline = time.monotonic() + timeout
        last_count, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            count = self.snapshot_count()
            if count >= n:
                return True
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > idle:
                return False
            time.sleep(0.1)
        return False


class OffsetWatcher(threading.Thread):
    """Samples a consumer group's committed offsets on a topic: ``(wall time, events committed)``."""

    def __init__(self, bootstrap: str, group: str, topic: str, interval: float = 0.5) -> None:
        super().__init__(daemon=True, name="bench-offset-watcher")
        from confluent_kafka import Consumer, TopicPartition

        self.samples: list[tuple[float, float]] = []
        self.interval = interval
        self._halt = threading.Event()
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        meta = self._consumer.list_topics(topic, timeout=10)
        self._tps = [TopicPartition(topic, p) for p in meta.topics[topic].partitions]
        self._low = {}
        for tp in self._tps:
            low, _high = self._consumer.get_watermark_offsets(tp, timeout=10)
            self._low[tp.partition] = low

    def committed(self) -> int:
        total = 0
        for tp in self._consumer.committed(self._tps, timeout=10):
            if tp.offset >= 0:
                total += tp.offset - self._low[tp.partition]
        return total

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                try:
                    self.samples.append((time.time(), float(self.committed())))
                except Exception as exc:  # a slow broker answer: skip the sample
                    log.debug("offset sample failed: %s", exc)
                self._halt.wait(self.interval)
        finally:
            self._consumer.close()

    def latest(self) -> float:
        return self.samples[-1][1] if self.samples else 0.0

    def wait_for(self, total: int, timeout: float, alive: Callable[[], bool] = lambda: True, stall_s: float = 120.0) -> bool:
        """Until ``total`` events are committed; False on timeout, a dead worker or no progress for ``stall_s``."""
        deadline = time.monotonic() + timeout
        last, last_change = -1.0, time.monotonic()
        while time.monotonic() < deadline:
            now_count = self.latest()
            if now_count >= total:
                return True
            if now_count != last:
                last, last_change = now_count, time.monotonic()
            elif time.monotonic() - last_change > stall_s:
                return False
            if not alive():
                return False
            time.sleep(0.25)
        return False

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


class ResourceSampler(threading.Thread):
    """psutil samples of some processes (summed): CPU% (100 = one core) and RSS, plus the whole box's CPU%."""

    def __init__(self, pids: Sequence[int], interval: float = 0.5) -> None:
        super().__init__(daemon=True, name="bench-resource-sampler")
        import psutil

        self._procs = [psutil.Process(p) for p in pids]
        for proc in self._procs:
            proc.cpu_percent(None)
        psutil.cpu_percent(None)
        self.interval = interval
        self.samples: list[dict[str, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        import psutil

        while not self._halt.wait(self.interval):
            cpu = rss = 0.0
            for proc in self._procs:
                try:
                    cpu += proc.cpu_percent(None)
                    rss += proc.memory_info().rss / 2**20
                except psutil.Error:
                    continue
            self.samples.append({"t": time.time(), "cpu_pct": cpu, "rss_mb": rss, "box_cpu_pct": psutil.cpu_percent(None)})

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def summary(self, t0: float | None = None, t1: float | None = None) -> dict[str, Any]:
        out = resource_summary(self.samples, t0, t1)
        window = [s for s in self.samples if (t0 is None or s["t"] >= t0) and (t1 is None or s["t"] <= t1)] or self.samples
        out["box_cpu_mean_pct"] = round(sum(s["box_cpu_pct"] for s in window) / len(window), 1) if window else None
        return out


def infra_pids() -> dict[str, int]:
    """Pids of the local Kafka and Cassandra JVMs (to sample their CPU beside the worker's)."""
    import psutil

    found: dict[str, int] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if "kafka.Kafka" in cmd and "kafka" not in found:
            found["kafka"] = proc.info["pid"]
        elif "CassandraDaemon" in cmd and "cassandra" not in found:
            found["cassandra"] = proc.info["pid"]
    return found


# ---------------------------------------------------------------------------
# Subprocesses: the real worker and the passthrough worker
# ---------------------------------------------------------------------------
@dataclass
class BenchProcess:
    """A worker-like subprocess with a Faust web server (``/health``)."""

    name: str
    argv: list[str]
    settings: Settings
    log_path: Path
    worker_id: str
    proc: subprocess.Popen | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def worker(cls, settings: Settings, log_path: Path, worker_id: str = "bench-w1") -> "BenchProcess":
        return cls("worker", [sys.executable, "-m", "streamrec", "--log-level", "warning", "worker"], settings, log_path, worker_id)

    @classmethod
    def passthrough(cls, settings: Settings, log_path: Path, worker_id: str = "bench-pass") -> "BenchProcess":
        return cls("passthrough", [sys.executable, "-m", "streamrec.bench.passthrough"], settings, log_path, worker_id)

    @classmethod
    def bare_loop(cls, settings: Settings, log_path: Path, worker_id: str = "bench-bare") -> "BenchProcess":
        return cls("bare", [sys.executable, "-m", "streamrec.bench.bare_loop"], settings, log_path, worker_id)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, *, need_model: bool = False, wait_s: float = 180.0) -> "BenchProcess":
        env = {**os.environ, **self.settings.to_env(), "STREAMREC_WORKER_ID": self.worker_id, **self.extra_env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as handle:
            self.proc = subprocess.Popen(self.argv, env=env, stdout=handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            health = self.health()
            if health.get("kafka") and (not need_model or health.get("model")):
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} not healthy after {wait_s:.0f}s:\n{self.log_tail()}")

    def health(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.settings.web_port}/health", timeout=2) as resp:
                return orjson.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                return orjson.loads(exc.read())
            except orjson.JSONDecodeError:
                return {}
        except (OSError, orjson.JSONDecodeError):
            return {}

    def metrics_text(self) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.settings.web_port}/metrics", timeout=5) as resp:
                return resp.read().decode()
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def histogram_mean(values: dict[str, float], name: str, labels: str = "") -> float | None:
    """Mean of a Prometheus histogram from its _sum and _count (seconds)."""
    suffix = f"{{{labels}}}" if labels else ""
    count = values.get(f"{name}_count{suffix}")
    total = values.get(f"{name}_sum{suffix}")
    return total / count if count else None


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
def prepare_model(settings: Settings, model: Path | None, train_events: Sequence[dict[str, Any]], epochs: int,
                  seed: int = 0) -> dict[str, Any]:
    """Make ``settings.models_path`` a registry with a live model: copy ``model`` in or train one quickly.

    ``model`` is a model directory (its live version is copied, as a worker
    would serve it) or one artifact directory; None trains on ``train_events``. An empty
    ``train_events`` with no ``model`` leaves the registry empty (popularity fallback).
    """
    import shutil


    target = settings.models_path
    target.mkdir(parents=True, exist_ok=True)
    if model is not None:
        model = Path(model)
        source = resolve_artifact_dir(model)
        name = source.name if source != model else version_dir_name(1)
        shutil.copytree(source, target / name, dirs_exist_ok=True)
        return {"source": str(model), "trained": False}
    if not train_events:
        return {"source": None, "trained": False, "note": "no model: popularity fallback"}
    from streamrec.onnx.writer import train_from_events  # torch: 3-6.5 s, only when a bench trains

    t0 = time.monotonic()
    artifact = train_from_events(train_events, target, epochs=epochs, seed=seed)
    info: dict[str, Any] = {"source": str(artifact), "trained": True, "train_events": len(train_events),
                            "epochs": epochs, "train_seconds": round(time.monotonic() - t0, 1)}
    metrics = artifact / "metrics.json"
    if metrics.exists():
        info["offline_test"] = json.loads(metrics.read_text()).get("test", {})
    return info


def prepare_shadow(settings: Settings, model: Path, fraction: float) -> dict[str, Any]:
    """Copy ``model`` into the run's registry as the next version and make it the shadow on ``fraction`` of users.

    The live version is pinned first; the copy's manifest gets its new
    version number (workers check that the loaded shadow is the one pointed at).
    """
    import shutil

    registry = ModelRegistry.at(settings.models_path)
    registry.pin_live()
    source = resolve_artifact_dir(Path(model))
    version = max(registry.storage.versions(), default=0) + 1
    target = registry.storage.artifact_path(version)
    shutil.copytree(source, target)
    manifest = json.loads((target / MANIFEST).read_text())
    manifest["version"] = version
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2))
    pointer = registry.start_shadow(version, fraction, reason="bench latency")
    return {"source": str(model), "version": pointer.version, "fraction": pointer.fraction}


# ---------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------
def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write as PNG (creating the folder) and close a matplotlib figure; returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_latency(points: Sequence[tuple[float, float]], path: Path, title: str, target_ms: float | None = None,
                 series: dict[str, Sequence[tuple[float, float]]] | None = None) -> Path | None:
    """Latency-over-time scatter with per-second p50/p99 lines; ``series`` adds more runs (e.g. passthrough)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib missing: no plot")
        return None
    all_series = {"worker": points, **(series or {})}
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for label, pts in all_series.items():
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax.scatter(xs, ys, s=2, alpha=0.25, label=f"{label}: each event")
        rows = per_second(pts)
        ax.plot([r["second"] + 0.5 for r in rows], [r.get("p99_ms") for r in rows], label=f"{label}: p99 per second")
        ax.plot([r["second"] + 0.5 for r in rows], [r.get("p50_ms") for r in rows], label=f"{label}: p50 per second")
    if target_ms:
        ax.axhline(target_ms, color="red", linestyle="--", linewidth=1, label=f"target p99 {target_ms:g} ms")
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the first event was sent")
    ax.set_ylabel("event produced → recommendation consumed (ms)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper right")
    return save_figure(fig, path)


def plot_progress(runs: dict[str, Sequence[tuple[float, float]]], path: Path, title: str) -> Path | None:
    """Committed events over time for several runs (throughput curves)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(9, 4))
    for label, samples in runs.items():
        if samples:
            t0 = samples[0][0]
            ax.plot([t - t0 for t, _ in samples], [c for _, c in samples], label=label)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("events committed")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_bars(values: dict[str, float], path: Path, title: str, xlabel: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(values) + 1.2))
    names = list(values)[::-1]
    ax.barh(names, [values[n] for n in names])
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------
# Phases shared by e2e, latency and scale
# ---------------------------------------------------------------------------
def topic_size(bootstrap: str, topic: str) -> int:
    """Records currently in ``topic`` (high − low watermark, summed over partitions)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-size-{time.time_ns()}"})
    try:
        meta = consumer.list_topics(topic, timeout=10)
        total = 0
        for p in meta.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def run_backlog_phase(
    procs: Sequence[BenchProcess], settings: Settings, output_topic: str, *, need_model: bool, timeout_s: float,
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
        worker_metrics = [metric_values(p.metrics_text()) for p in procs if p.name == "worker"]
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


# ---------------------------------------------------------------------------
# Profiling (py-spy)
# ---------------------------------------------------------------------------
PROFILE_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # py-spy shortens paths (``stream/state/cassandra.py``, ``runtime.py``); Cython-compiled driver
    # code (cassandra.cluster) has no frames of its own: its cost shows in the calling line.
    ("ONNX Runtime (encoder run)", ("onnxruntime/",)),
    ("encoder wrapper / features", ("onnx/runtime.py", "(runtime.py:", "models/features.py", "numpy/")),
    ("Cassandra driver (IO thread)", ("cassandra/",)),
    ("Cassandra store calls (ours + driver's Cython request path)", ("stream/state/",)),
    ("event parsing / validation", ("stream/events.py",)),
    ("recommendation build / JSON", ("stream/recommendation.py",)),
    ("window merge / encode", ("stream/window.py",)),
    ("processor logic", ("stream/processor.py",)),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("Kafka client (aiokafka)", ("aiokafka/", "kafka/")),
    ("Faust / mode", ("faust/", "mode/")),
    ("asyncio event loop (scheduling, self-pipe wake-ups, epoll)", ("asyncio/", "uvloop/", "selectors.py")),
    ("threading / concurrent", ("threading.py", "concurrent/", "queue.py")),
)


def classify_frame(frame: str) -> str | None:
    for name, patterns in PROFILE_CATEGORIES:
        if any(p in frame for p in patterns):
            return name
    return None


def summarise_collapsed(lines: Iterable[str], top: int = 15) -> dict[str, Any]:
    """Category shares (leaf-most classified frame) and top self/inclusive functions of py-spy raw output."""
    categories: dict[str, int] = {}
    self_time: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in lines:
        line = line.rstrip("\n")
        if not line or " " not in line:
            continue
        stack, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = stack.split(";")
        total += count
        category = next((c for c in (classify_frame(f) for f in reversed(frames)) if c), "other (interpreter, stdlib)")
        categories[category] = categories.get(category, 0) + count
        leaf = frames[-1]
        self_time[leaf] = self_time.get(leaf, 0) + count
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + count

    def pct(n: int) -> float:
        return round(100.0 * n / total, 1) if total else 0.0

    return {
        "samples": total,
        "categories_pct": {k: pct(v) for k, v in sorted(categories.items(), key=lambda kv: -kv[1])},
        "top_self_pct": {k: pct(v) for k, v in sorted(self_time.items(), key=lambda kv: -kv[1])[:top]},
        "top_inclusive_pct": {k: pct(v) for k, v in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top * 2]},
    }


def py_spy_profile(pid: int, out_dir: Path, seconds: float, name: str = "profile", rate: int = 100) -> dict[str, Any]:
    """Record ``pid`` with py-spy (non-blocking): collapsed stacks → categories, then a flame graph SVG."""
    import shutil

    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        return {"error": "py-spy is not installed (pip install py-spy)"}
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"{name}.txt"
    svg = out_dir / f"{name}.svg"
    base = [exe, "record", "--pid", str(pid), "--nonblocking", "--rate", str(rate)]
    proc = subprocess.run([*base, "--duration", str(int(seconds)), "--format", "raw", "-o", str(raw)],
                          capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode != 0 or not raw.exists():
        return {"error": f"py-spy failed: {proc.stderr.strip()[-500:]}"}
    result = summarise_collapsed(raw.read_text().splitlines())
    result["raw"] = str(raw)
    svg_proc = subprocess.run([*base, "--duration", str(max(3, int(seconds // 2))), "--format", "flamegraph", "-o", str(svg)],
                              capture_output=True, text=True, timeout=seconds + 60)
    if svg_proc.returncode == 0 and svg.exists():
        result["flamegraph"] = str(svg)
    return result


def profile_table(profile: dict[str, Any]) -> str:
    rows = [(k, v) for k, v in profile.get("categories_pct", {}).items()]
    return format_table(rows, ("where the worker's CPU samples are (leaf-most known frame)", "%"))


def skip_to_end(settings: Settings) -> None:
    """Commit the events topic's end offsets for ``settings.consumer_group`` (a fresh group starts there)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.consumer_group,
                         "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(settings.events_topic, timeout=10)
        tps = []
        for p in meta.topics[settings.events_topic].partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(settings.events_topic, p), timeout=10)
            tps.append(TopicPartition(settings.events_topic, p, high))
        consumer.commit(offsets=tps, asynchronous=False)
    finally:
        consumer.close()
