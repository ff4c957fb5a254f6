"""Watching a run from outside: an independent consumer of the output, the committed offsets, process resources.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Sequence

import orjson

from streamrec.bench.stats import resource_summary


log = logging.getLogger(__name__)


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
