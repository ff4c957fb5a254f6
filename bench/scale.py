"""`bench scale`: 1 worker versus N workers (same group) draining the same backlog.

The backlog is pre-produced once to an events topic with ``--partitions``
partitions (default 4: the number of workers a group can use is at most the
partition count, so partitions = ceiling of workers). Each trial uses a fresh
consumer group and a fresh keyspace, so every trial does the same work from
cold windows. Throughput is the committed-offset slope (10 % → 90 %) of the
group, read from the broker.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any, Sequence

from streamrec.bench import artifacts, isolation, load, phases, processes, report, stats
from streamrec.config import Settings
from streamrec.testing.isolation import drop_isolated, drop_keyspace, isolated_settings

log = logging.getLogger(__name__)

TARGET_2X = 1.7


def run_scale(
    base: Settings,
    *,
    workers: Sequence[int] = (1, 2),
    events: int = 200_000,
    users: int = 200_000,
    items: int = 20_000,
    partitions: int = 4,
    train_events: int = 30_000,
    epochs: int = 2,
    model: Path | None = None,
    no_model: bool = False,
    seed: int = 0,
    timeout_s: float = 3600.0,
    keep: bool = False,
    out_dir: Path = report.OUT_DIR,
    progress: Any = print,
) -> dict[str, Any]:
    if max(workers) > partitions:
        progress(f"note: {max(workers)} workers on {partitions} partitions: the extra workers idle")
    run_id = isolation.new_run_id()
    settings = isolated_settings(base, "bench-scale", run_id, topic_partitions=partitions,
                                        model_dir=base.state_dir / "bench" / f"scale-{run_id}" / "models")
    logs = base.state_dir / "bench" / f"scale-{run_id}"
    machine = report.machine_info()
    counts = isolation.create_topics(settings)
    trials: list[dict[str, Any]] = []
    keyspaces: list[str] = []
    try:
        stream = load.synthetic_events(train_events + events, users, items, seed)
        history = [] if (no_model or model is not None) else list(itertools.islice(stream, train_events))
        model_info = artifacts.prepare_model(settings, model, history, epochs, seed) if not no_model else {"source": None}
        n, secs = load.preproduce(settings.kafka_bootstrap, settings.events_topic,
                                    (load.encode_event(e) for e in itertools.islice(stream, events)))
        progress(f"pre-produced {n} events in {secs:.1f}s to {counts.get(settings.events_topic)} partitions")
        for w in workers:
            keyspace = f"{settings.cassandra_keyspace}_{w}w"
            keyspaces.append(keyspace)
            s = settings.with_overrides(consumer_group=f"{settings.consumer_group}-{w}w", cassandra_keyspace=keyspace)
            isolation.prepare_schema(s)
            procs = [processes.worker(s, logs / f"{w}w-{i}.log",
                                                worker_id=f"bench-{w}w-{i}") for i in range(w)]
            try:
                res = phases.run_backlog_phase(procs, s, s.recommendations_topic,
                                               need_model=bool(model_info.get("source")), timeout_s=timeout_s)
            finally:
                for proc in procs:
                    proc.stop()
            progress(f"{w} worker(s): {res['events_per_s']} events/s")
            trials.append(res)
    finally:
        if not keep:
            drop_isolated(settings)
            for keyspace in keyspaces:
                drop_keyspace(settings.with_overrides(cassandra_keyspace=keyspace))
    base_rate = trials[0]["events_per_s"] if trials else None
    for t in trials:
        t["speedup"] = stats.ratio(t["events_per_s"], base_rate)
    two = next((t for t in trials if t["workers"] == 2), None)
    result = {
        "benchmark": "scale",
        "headline": {
            "partitions": counts.get(settings.events_topic),
            "events_per_s_by_workers": {t["workers"]: t["events_per_s"] for t in trials},
            "speedup_2_workers": two["speedup"] if two else None,
            "target_2_workers": f"{TARGET_2X:g}x: {report.target_check(two['speedup'] if two else None, TARGET_2X)}",
        },
        "machine": machine,
        "events": events,
        "users": users,
        "items": items,
        "model": model_info,
        "run_id": run_id,
        "trials": trials,
    }
    png = report.plot_progress({f"{t['workers']} worker(s)": t["progress"] for t in trials}, out_dir / "scale.png",
                               f"scale: {events:,} events, {counts.get(settings.events_topic)} partitions")
    if png:
        result["plot"] = str(png)
    return result


def format_result(result: dict[str, Any]) -> str:
    rows = [(t["workers"], result["headline"]["partitions"], t["events"], t["events_per_s"], t["speedup"],
             t["process"]["cpu_mean_pct"], (t.get("kafka_cassandra") or {}).get("cpu_mean_pct"),
             t["process"].get("box_cpu_mean_pct"))
            for t in result["trials"]]
    table = report.format_table(rows, ("workers", "partitions", "events", "events/s", "speedup", "workers cpu%",
                                       "kafka+cas cpu%", "box cpu%"))
    return f"{table}\n\ntarget 2 workers >= {result['headline']['target_2_workers']}"
