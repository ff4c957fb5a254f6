"""`bench e2e`: one real worker versus the passthrough worker on the same pre-produced backlog.

1. A synthetic stream (planted signal; default 1M events, 200k users, 20k
   items) is generated; its first ``train_events`` train a quick model (or
   ``--model``), the next ``events`` are pre-produced once to the run's own
   events topic.
2. The passthrough worker (same Faust path, no state, no model) drains the
   backlog in its own consumer group; then the real worker drains the same
   backlog in another group (a fresh keyspace per repeat). Throughput is the
   committed-offset slope from 10 % to 90 % of the backlog, read from the
   broker — independent of the workers; CPU% and RSS come from psutil.
3. With each worker still running, a short paced phase (``--latency-rate``
   for ``--latency-seconds``) measures event produced → message consumed by
   an independent consumer (a pre-filled backlog has no meaningful latency).

The headline is the worker/passthrough ratio, which survives a noisy box.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

from streamrec.bench import artifacts, isolation, load, phases, processes, profiling, report, stats
from streamrec.bench.passthrough import output_topic
from streamrec.config import Settings
from streamrec.testing.isolation import drop_isolated, drop_keyspace, isolated_settings

log = logging.getLogger(__name__)

TARGET_EVENTS_PER_S = 5000.0
TARGET_RATIO = 0.8  # worker / Faust passthrough on the same backlog (the real-time issue's target)
MEMORY, MEMORY_POPULARITY = processes.MEMORY, processes.MEMORY_POPULARITY
HEADLINE_NAMES = {MEMORY: "without_cassandra", MEMORY_POPULARITY: "without_cassandra_or_model"}


def run_e2e(
    base: Settings,
    *,
    events: int = 1_000_000,
    users: int = 200_000,
    items: int = 20_000,
    train_events: int = 30_000,
    epochs: int = 2,
    model: Path | None = None,
    no_model: bool = False,
    partitions: int = 4,
    repeats: int = 1,
    latency_rate: float = 1000.0,
    latency_seconds: float = 10.0,
    profile_seconds: float = 0.0,
    attribute: bool = False,
    seed: int = 0,
    timeout_s: float = 3600.0,
    keep: bool = False,
    out_dir: Path = report.OUT_DIR,
    progress: Any = print,
) -> dict[str, Any]:
    run_id = isolation.new_run_id()
    settings = isolated_settings(base, "bench-e2e", run_id, topic_partitions=partitions,
                                        model_dir=base.state_dir / "bench" / f"e2e-{run_id}" / "models")
    logs = base.state_dir / "bench" / f"e2e-{run_id}"
    pass_topic = output_topic(settings)
    keyspaces: list[str] = []
    machine = report.machine_info()
    progress(f"e2e run {run_id}: topics {settings.topic_prefix}.*, logs {logs}")
    isolation.create_topics(settings, extra=[pass_topic])
    try:
        stream = load.synthetic_events(train_events + events + 10_000_000, users, items, seed)
        history = [] if (no_model or model is not None) else list(itertools.islice(stream, train_events))
        model_info = artifacts.prepare_model(settings, model, history, epochs, seed) if not no_model else {"source": None}
        progress(f"model: {model_info}")
        count, seconds = load.preproduce(settings.kafka_bootstrap, settings.events_topic,
                                           (load.encode_event(e) for e in itertools.islice(stream, events)))
        progress(f"pre-produced {count} events in {seconds:.1f}s ({count / seconds:,.0f}/s)")

        runs: dict[str, list[dict[str, Any]]] = {"passthrough": [], "worker": []}
        for r in range(repeats):
            # Passthrough first (same backlog, its own group).
            s_pass = settings.with_overrides(consumer_group=f"{settings.consumer_group}-pass-{r}")
            proc = processes.passthrough(s_pass, logs / f"passthrough-{r}.log")
            try:
                res = phases.run_backlog_phase([proc], s_pass, pass_topic, need_model=False, timeout_s=timeout_s)
                progress(f"[{r}] passthrough: {res['events_per_s']} events/s, cpu {res['process']['cpu_mean_pct']}%")
                if latency_seconds > 0:
                    res["latency_phase"] = phases.run_latency_phase(s_pass, pass_topic, stream, rate=latency_rate,
                                                                    seconds=latency_seconds)
            finally:
                proc.stop()
            runs["passthrough"].append(res)

            keyspace = f"{settings.cassandra_keyspace}_{r}"
            keyspaces.append(keyspace)
            s_work = settings.with_overrides(consumer_group=f"{settings.consumer_group}-worker-{r}",
                                             cassandra_keyspace=keyspace)
            isolation.prepare_schema(s_work)
            proc = processes.worker(s_work, logs / f"worker-{r}.log")
            profiler = None
            if profile_seconds > 0 and r == 0:
                profiler = lambda pid: profiling.py_spy_profile(pid, out_dir, profile_seconds, name="profile-e2e")  # noqa: E731
            try:
                res = phases.run_backlog_phase([proc], s_work, s_work.recommendations_topic,
                                               need_model=bool(model_info.get("source")), timeout_s=timeout_s,
                                               profile=profiler)
                progress(f"[{r}] worker: {res['events_per_s']} events/s, cpu {res['process']['cpu_mean_pct']}%")
                if latency_seconds > 0 and res["completed"]:
                    res["latency_phase"] = phases.run_latency_phase(s_work, s_work.recommendations_topic, stream,
                                                                    rate=latency_rate, seconds=latency_seconds)
            finally:
                proc.stop()
            runs["worker"].append(res)

            if attribute:
                # The same worker with windows in process memory, on the same backlog: what Cassandra costs;
                # and without the model too: what the model costs.
                for kind in (MEMORY, MEMORY_POPULARITY):
                    s_mem = settings.with_overrides(consumer_group=f"{settings.consumer_group}-{kind}-{r}")
                    proc = processes.memory_worker(s_mem, logs / f"{kind}-{r}.log", model=kind == MEMORY)
                    try:
                        res = phases.run_backlog_phase([proc], s_mem, s_mem.recommendations_topic, timeout_s=timeout_s,
                                                       need_model=kind == MEMORY and bool(model_info.get("source")))
                        progress(f"[{r}] {kind}: {res['events_per_s']} events/s, cpu {res['process']['cpu_mean_pct']}%")
                    finally:
                        proc.stop()
                    runs.setdefault(kind, []).append(res)
    finally:
        if not keep:
            drop_isolated(settings)
            for keyspace in keyspaces:
                drop_keyspace(settings.with_overrides(cassandra_keyspace=keyspace))

    result = summarise(runs, machine=machine, events=events, users=users, items=items, partitions=partitions,
                       model=model_info, run_id=run_id, latency_rate=latency_rate)
    plots = {f"{kind} #{i}": [(t, c) for t, c in run["progress"]] for kind, rs in runs.items() for i, run in enumerate(rs)}
    png = report.plot_progress(plots, out_dir / "e2e.png", f"e2e: events committed over time ({events:,} event backlog)")
    if png:
        result["plot"] = str(png)
    latency_points = {kind: rs[0].get("latency_phase", {}).get("_points", []) for kind, rs in runs.items() if rs}
    if any(latency_points.values()):
        png = report.plot_latency(latency_points.get("worker", []), out_dir / "e2e-latency.png",
                                  f"e2e paced phase at {latency_rate:g} events/s", target_ms=50,
                                  series={"passthrough": latency_points.get("passthrough", [])})
        if png:
            result["latency_plot"] = str(png)
    for rs in runs.values():
        for run in rs:
            run.get("latency_phase", {}).pop("_points", None)
    return result


def summarise(runs: dict[str, list[dict[str, Any]]], **context: Any) -> dict[str, Any]:
    worker_rate = stats.median([r["events_per_s"] for r in runs["worker"]])
    pass_rate = stats.median([r["events_per_s"] for r in runs["passthrough"]])
    ratio = stats.ratio(worker_rate, pass_rate)
    # Paired ratios (each repeat's worker against the passthrough run just before it).
    paired = [stats.ratio(w["events_per_s"], p["events_per_s"]) for w, p in zip(runs["worker"], runs["passthrough"])]
    worker_latency = (runs["worker"][0].get("latency_phase") or {}).get("latency", {}) if runs["worker"] else {}
    pass_latency = (runs["passthrough"][0].get("latency_phase") or {}).get("latency", {}) if runs["passthrough"] else {}
    headline = {
        "worker_events_per_s": worker_rate,
        "passthrough_events_per_s": pass_rate,
        "worker_to_passthrough": ratio,
        "paired_ratios": paired,
        "worker_cpu_mean_pct": stats.median([r["process"]["cpu_mean_pct"] for r in runs["worker"]]),
        "worker_rss_max_mb": max((r["process"]["rss_max_mb"] or 0 for r in runs["worker"]), default=None),
        "latency_p50_ms": worker_latency.get("p50_ms"),
        "latency_p95_ms": worker_latency.get("p95_ms"),
        "latency_p99_ms": worker_latency.get("p99_ms"),
        "passthrough_latency_p99_ms": pass_latency.get("p99_ms"),
        "target_events_per_s": f"{TARGET_EVENTS_PER_S:g}: {report.target_check(worker_rate, TARGET_EVENTS_PER_S)}",
        "target_ratio": f"{TARGET_RATIO:g}: {report.target_check(ratio, TARGET_RATIO)}",
    }
    for kind, name in HEADLINE_NAMES.items():
        if runs.get(kind):
            rate = stats.median([r["events_per_s"] for r in runs[kind]])
            headline[f"{name}_events_per_s"] = rate
            headline[f"{name}_to_passthrough"] = stats.ratio(rate, pass_rate)
    return {"benchmark": "e2e", "headline": headline, **context, "runs": runs}


def format_result(result: dict[str, Any]) -> str:
    rows = []
    for kind in ("passthrough", MEMORY_POPULARITY, MEMORY, "worker"):
        for i, r in enumerate(result["runs"].get(kind, [])):
            lat = (r.get("latency_phase") or {}).get("latency", {})
            proc = r["process"]
            infra = r.get("kafka_cassandra") or {}
            rows.append((f"{kind} #{i}", r["events"], r["events_per_s"], r["output_messages_per_s"], proc["cpu_mean_pct"],
                         proc["rss_max_mb"], infra.get("cpu_mean_pct"), proc.get("box_cpu_mean_pct"),
                         lat.get("p50_ms"), lat.get("p95_ms"), lat.get("p99_ms")))
    table = report.format_table(rows, ("run", "events", "events/s", "out msg/s", "cpu%", "rss MB", "kafka+cas cpu%",
                                       "box cpu%", "p50 ms", "p95 ms", "p99 ms"))
    h = result["headline"]
    lines = [table, "",
             f"worker / passthrough = {h['worker_to_passthrough']} (paired {h['paired_ratios']}); "
             f"targets: >= {h['target_events_per_s']}, ratio >= {h['target_ratio']}",
             *([f"each / passthrough: without Cassandra or the model {h.get('without_cassandra_or_model_to_passthrough')}; "
                f"without Cassandra {h['without_cassandra_to_passthrough']}; the worker {h['worker_to_passthrough']}"]
               if h.get("without_cassandra_to_passthrough") is not None else []),
             f"latency at {result['latency_rate']:g} ev/s (paced phase): p50 {h['latency_p50_ms']} / p95 {h['latency_p95_ms']} "
             f"/ p99 {h['latency_p99_ms']} ms (passthrough p99 {h['passthrough_latency_p99_ms']} ms)"]
    wm = (result["runs"]["worker"][0].get("worker_metrics") if result["runs"]["worker"] else None) or {}
    if wm:
        lines.append(f"worker's own metrics: batch {wm.get('mean_batch_records')} records, encoder "
                     f"{wm.get('encoder_ms_per_batch')} ms/batch, load_windows {wm.get('cassandra_load_windows_ms')} ms, "
                     f"save {wm.get('cassandra_save_ms')} ms, consume→emit {wm.get('consume_to_emit_ms_per_batch')} ms")
    prof = (result["runs"]["worker"][0].get("profile") if result["runs"]["worker"] else None) or {}
    if prof.get("categories_pct"):
        lines += ["", profiling.profile_table(prof)]
    elif prof.get("error"):
        lines.append(f"profile: {prof['error']}")
    return "\n".join(lines)
