"""Numbers of a benchmark run: percentiles, pacing, sustained rates, ratios, resource summaries (pure, unit-tested).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence


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


def histogram_mean(values: dict[str, float], name: str, labels: str = "") -> float | None:
    """Mean of a Prometheus histogram from its _sum and _count (seconds)."""
    suffix = f"{{{labels}}}" if labels else ""
    count = values.get(f"{name}_count{suffix}")
    total = values.get(f"{name}_sum{suffix}")
    return total / count if count else None
