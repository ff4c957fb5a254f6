"""What a benchmark shows: tables, target checks, the JSON report with the machine it ran on, and plots.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from streamrec.bench.stats import per_second


log = logging.getLogger(__name__)


OUT_DIR = Path("out/bench")


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
