"""`bench catalogue`: the worker's cost per event as the catalogue grows (by default 2k → 20k → 200k items).

For each catalogue size one worker drains the same number of events, drawn
from that catalogue, while serving an untrained model of that size
(:func:`streamrec.testing.artifacts.random_artifact`: the cost of serving does
not depend on training). Each size gets its own topics, keyspace and group, so
each starts from cold windows. Reported per size: events/s, the worker's CPU per
event (process CPU ÷ events/s), and the batch's steps in milliseconds per
event: the encode step (the ONNX graph: user vector, full-catalogue scores,
top-K) apart from the other steps on the way to the user (validate, window
load, produce), with ratios to the smallest catalogue. What grows with the
catalogue should be the encode step only; the other steps should stay flat
(target: the whole per-event cost ≤ 2× from 2k to 200k items). The steps are
wall times, so on a busy machine they include waiting for a core; their
ratios, not their sum against the CPU figure, are what to read.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from streamrec.bench import isolation, load, phases, processes, report, stats
from streamrec.config import Settings
from streamrec.models.config import FIRST_REAL_INDEX, EncoderConfig
from streamrec.testing.artifacts import random_artifact
from streamrec.testing.isolation import drop_isolated, isolated_settings

log = logging.getLogger(__name__)

TARGET_RATIO = 2.0
# The batch's steps on the way to the user besides the encode step (stream.metrics.BatchStage values).
OTHER_STEPS = ("validate", "load", "produce")


def run_catalogue(
    base: Settings,
    *,
    sizes: Sequence[int] = (2_000, 20_000, 200_000),
    events: int = 40_000,
    users: int = 20_000,
    seed: int = 0,
    timeout_s: float = 3600.0,
    keep: bool = False,
    out_dir: Path = report.OUT_DIR,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Drain ``events`` events per catalogue size with one worker; the rows, ratios and a plot."""
    run_id, machine, trials = drain_sizes(
        base, "catalogue", sizes, key="catalogue_items", events=events, users=lambda _: users, items=lambda size: size,
        seed=seed, timeout_s=timeout_s, keep=keep, progress=progress,
    )
    rows = catalogue_rows(trials)
    result: dict[str, Any] = {
        "benchmark": "catalogue",
        "headline": headline(rows),
        "machine": machine,
        "events": events,
        "users": users,
        "run_id": run_id,
        "rows": rows,
        "trials": trials,
    }
    png = plot(rows, out_dir / "catalogue.png")
    if png:
        result["plot"] = str(png)
    return result


def drain_sizes(
    base: Settings,
    bench: str,
    sizes: Sequence[int],
    *,
    key: str,
    events: int,
    users: Callable[[int], int],
    items: Callable[[int], int],
    seed: int,
    timeout_s: float,
    keep: bool,
    progress: Callable[[str], None],
) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """One :func:`drain_one` per size, each isolated; the run id, the machine and the trials (``trial[key]`` = size).

    ``users(size)`` and ``items(size)`` say what the swept size is: the catalogue, the distinct users, ...
    """
    run_id = isolation.new_run_id()
    logs = base.state_dir / "bench" / f"{bench}-{run_id}"
    machine = report.machine_info()
    trials: list[dict[str, Any]] = []
    for number, size in enumerate(sizes):
        settings = isolated_settings(base, f"bench-{bench}", f"{run_id}{number}", model_dir=logs / f"models-{size}")
        progress(f"{key} {size:,}: {users(size):,} users, {items(size):,} items, producing {events:,} events")
        trial = drain_one(settings, logs / f"worker-{size}.log", events=events, users=users(size), items=items(size),
                          seed=seed, timeout_s=timeout_s, keep=keep)
        trial[key] = size
        trials.append(trial)
        progress(f"{key} {size:,}: {trial['events_per_s']} events/s, cpu {trial['process']['cpu_mean_pct']}%")
    return run_id, machine, trials


def drain_one(settings: Settings, log_path: Path, *, events: int, users: int, items: int, seed: int,
              timeout_s: float, keep: bool) -> dict[str, Any]:
    """One worker drains ``events`` synthetic events (``users`` × ``items``) serving an untrained model of ``items``.

    The run's topics and keyspace are ``settings``' own (isolated), so it starts from cold windows; they are
    dropped afterwards unless ``keep``.
    """
    try:
        isolation.create_topics(settings)
        random_artifact(settings.models_path, EncoderConfig(n_items=items + FIRST_REAL_INDEX), item_prefix="i",
                        include_fp16=False)
        stream = load.synthetic_events(events, users, items, seed)
        load.preproduce(settings.kafka_bootstrap, settings.events_topic,
                        (load.encode_event(e) for e in itertools.islice(stream, events)))
        isolation.prepare_schema(settings)
        worker = processes.worker(settings, log_path)
        trial = phases.run_backlog_phase([worker], settings, settings.recommendations_topic, need_model=True,
                                         timeout_s=timeout_s)
        worker.stop()
    finally:
        if not keep:
            drop_isolated(settings)
    return trial


def catalogue_rows(trials: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size: events/s, CPU ms per event, the encode step and the other steps per event; ratios to the first size."""
    rows = []
    for trial in trials:
        rate = trial.get("events_per_s")
        cpu_pct = (trial.get("process") or {}).get("cpu_mean_pct")
        cpu_ms = stats.ratio(cpu_pct * 10.0 if cpu_pct is not None else None, rate)  # % of a core → ms per second
        metrics = trial.get("worker_metrics") or {}
        per_batch, records = metrics.get("encoder_ms_per_batch"), metrics.get("mean_batch_records")
        encode_ms = stats.ratio(per_batch, records)
        stage_ms = metrics.get("stage_ms") or {}
        other = [stage_ms.get(stage) for stage in OTHER_STEPS]
        other_ms = sum(v for v in other if v is not None) if all(v is not None for v in other) else None
        rows.append({
            "catalogue_items": trial["catalogue_items"],
            "events_per_s": rate,
            "cpu_ms_per_event": _round(cpu_ms),
            "encode_ms_per_event": _round(encode_ms),
            "other_steps_ms_per_event": _round(stats.ratio(other_ms, records)),
            "mean_batch_records": records,
        })
    first = rows[0] if rows else {}
    for row in rows:
        for key in ("cpu_ms_per_event", "encode_ms_per_event", "other_steps_ms_per_event"):
            row[f"{key}_ratio"] = stats.ratio(row[key], first.get(key))
    return rows


def headline(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Largest catalogue against the smallest: the per-event cost ratio and the target check."""
    if len(rows) < 2:
        return {"cpu_ratio": None}
    last = rows[-1]
    return {
        "smallest": rows[0]["catalogue_items"],
        "largest": last["catalogue_items"],
        "cpu_ratio": last["cpu_ms_per_event_ratio"],
        "encode_ratio": last["encode_ms_per_event_ratio"],
        "other_steps_ratio": last["other_steps_ms_per_event_ratio"],
        "target": f"<= {TARGET_RATIO:g}x: {report.target_check(last['cpu_ms_per_event_ratio'], TARGET_RATIO, higher_is_better=False)}",
    }


def format_result(result: dict[str, Any]) -> str:
    rows = [(r["catalogue_items"], r["events_per_s"], r["cpu_ms_per_event"], r["cpu_ms_per_event_ratio"],
             r["encode_ms_per_event"], r["encode_ms_per_event_ratio"], r["other_steps_ms_per_event"], r["other_steps_ms_per_event_ratio"],
             r["mean_batch_records"]) for r in result["rows"]]
    table = report.format_table(rows, ("items", "events/s", "cpu ms/event", "ratio", "encode ms/event", "ratio",
                                       "other steps ms/event", "ratio", "batch"))
    return f"{table}\n\nper-event cost, largest / smallest catalogue: {result['headline'].get('target')}"


def plot(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Per catalogue size: the worker's CPU per event, beside the encode step and the other steps (wall ms per event)."""
    series = {"worker CPU": "cpu_ms_per_event", "encode step (ONNX: scores, top-K)": "encode_ms_per_event",
              "validate + load + produce steps": "other_steps_ms_per_event"}
    return bar_plot(rows, "catalogue_items", series, path, xlabel="catalogue items",
                    title="per-event cost as the catalogue grows")


def bar_plot(rows: Sequence[dict[str, Any]], key: str, series: dict[str, str], path: Path, *, xlabel: str,
             title: str) -> Path | None:
    """Grouped bars, ms per event: one group per row (labelled by ``row[key]``), one bar per ``series`` label → row field."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(series)
    for n, (label, field) in enumerate(series.items()):
        ax.bar([i + n * width for i in range(len(rows))], [r[field] or 0.0 for r in rows], width, label=label)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(rows))], [f"{r[key]:,}" for r in rows])
    top = max((r[field] or 0.0 for r in rows for field in series.values()), default=0.0)
    ax.set_ylim(0, top * 1.5 or 1.0)  # room for the legend above the bars
    ax.set_xlabel(xlabel)
    ax.set_ylabel("ms per event")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    return report.save_figure(fig, path)


def _round(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None
