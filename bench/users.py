"""`bench users`: the worker's cost per event as the number of distinct users grows (by default 20k → 200k → 1M).

Same method as ``bench catalogue`` (:func:`streamrec.bench.catalogue.drain_one`:
one worker drains the same number of events from cold windows, serving an
untrained model of a fixed catalogue), but the events are spread over more
and more users. More users means fewer events per user within a batch and
more users outside the worker's window cache, so what should grow is the
Cassandra work per event: window reads (one request per 32 uncached users)
and user writes (every user of a batch once). Reported per size: events/s,
CPU per event, the window-load and save calls and the encode step in
milliseconds per event, with ratios to the smallest size. The steps are wall
times (on a busy machine they include waiting for a core); read their ratios.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from streamrec.bench import report, stats
from streamrec.bench.catalogue import bar_plot, drain_sizes
from streamrec.config import Settings

log = logging.getLogger(__name__)

# What the rows report per event, from the worker's own metrics (bench.phases.summarise_worker_metrics).
PER_BATCH = {
    "load_ms_per_event": "cassandra_load_windows_ms",
    "save_ms_per_event": "cassandra_save_ms",
    "encode_ms_per_event": "encoder_ms_per_batch",
}


def run_users(
    base: Settings,
    *,
    sizes: Sequence[int] = (20_000, 200_000, 1_000_000),
    events: int = 40_000,
    items: int = 2_000,
    seed: int = 0,
    timeout_s: float = 3600.0,
    keep: bool = False,
    out_dir: Path = report.OUT_DIR,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Drain ``events`` events per user count with one worker; the rows, ratios and a plot."""
    run_id, machine, trials = drain_sizes(
        base, "users", sizes, key="users", events=events, users=lambda size: size, items=lambda _: items,
        seed=seed, timeout_s=timeout_s, keep=keep, progress=progress,
    )
    rows = users_rows(trials)
    result: dict[str, Any] = {
        "benchmark": "users",
        "machine": machine,
        "events": events,
        "items": items,
        "run_id": run_id,
        "rows": rows,
        "trials": trials,
    }
    png = plot(rows, out_dir / "users.png")
    if png:
        result["plot"] = str(png)
    return result


def users_rows(trials: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per user count: events/s, CPU ms per event, window load / save / encode ms per event; ratios to the first."""
    rows = []
    for trial in trials:
        rate = trial.get("events_per_s")
        cpu_pct = (trial.get("process") or {}).get("cpu_mean_pct")
        metrics = trial.get("worker_metrics") or {}
        records = metrics.get("mean_batch_records")
        row = {
            "users": trial["users"],
            "events_per_s": rate,
            "cpu_ms_per_event": _round(stats.ratio(cpu_pct * 10.0 if cpu_pct is not None else None, rate)),
            "mean_batch_records": records,
        }
        for key, metric in PER_BATCH.items():
            row[key] = _round(stats.ratio(metrics.get(metric), records))
        rows.append(row)
    first = rows[0] if rows else {}
    for row in rows:
        for key in ("cpu_ms_per_event", *PER_BATCH):
            row[f"{key}_ratio"] = stats.ratio(row[key], first.get(key))
    return rows


def format_result(result: dict[str, Any]) -> str:
    rows = [(r["users"], r["events_per_s"], r["cpu_ms_per_event"], r["cpu_ms_per_event_ratio"],
             r["load_ms_per_event"], r["save_ms_per_event"], r["encode_ms_per_event"], r["mean_batch_records"])
            for r in result["rows"]]
    return report.format_table(rows, ("users", "events/s", "cpu ms/event", "ratio", "window load ms/event",
                                      "save ms/event", "encode ms/event", "batch"))


def plot(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Per user count: the worker's CPU per event beside the window-load, save and encode steps (ms per event)."""
    series = {"worker CPU": "cpu_ms_per_event", "window load (Cassandra reads)": "load_ms_per_event",
              "save (Cassandra writes, overlaps)": "save_ms_per_event", "encode (ONNX)": "encode_ms_per_event"}
    return bar_plot(rows, "users", series, path, xlabel="distinct users", title="per-event cost as the users grow")


def _round(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None
