"""`bench latency`: a fixed offered load through one real worker; latency percentiles and a plot.

Events are sent at a constant rate (default 1,000/s for 60 s) by a paced
librdkafka producer that records each event's send time; an independent
consumer of the recommendations topic records arrival times. A recommendation
answers its triggering ``event_id`` and the same user's earlier events of the
micro-batch (one message per user per batch, by contract), so each event's
latency is send → arrival of the first recommendation that covers it. Before
the clock starts, a warm-up burst makes sure the group is assigned and the
model is warm. ``--with-passthrough`` first measures, the same way, a bare
aiokafka consume → produce loop (the floor for Python on this box) and the
Faust passthrough worker (the floor for a Faust app), so the worker's
latency splits into Kafka + Python, Faust, and streamrec. The worker's own
per-stage histograms (``streamrec_batch_stage_seconds``) say where its share
goes: a breakdown table and a stacked plot.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

from streamrec.bench import artifacts, isolation, load, observe, phases, processes, report, stats
from streamrec.bench.passthrough import output_topic
from streamrec.config import Settings
from streamrec.stream.metrics import BatchStage
from streamrec.stream.metrics import metric_values
from streamrec.testing.isolation import drop_isolated, isolated_settings

log = logging.getLogger(__name__)

TARGET_P99_MS = 50.0

# The attribution phases: the real worker with windows in process memory (no Cassandra), with and
# without the model. Side by side with the bare loop, the passthrough and the worker, each step
# adds one component: Kafka + Python, Faust, streamrec's own code, the model, Cassandra.
MEMORY, MEMORY_POPULARITY = processes.MEMORY, processes.MEMORY_POPULARITY
WORKER_KINDS = (MEMORY_POPULARITY, MEMORY, "worker")
COMPONENTS = (
    ("Kafka + Python (bare aiokafka loop)", None, "bare"),
    ("Faust", "bare", "passthrough"),
    ("streamrec's code (validate, window merge, popularity, emit)", "passthrough", MEMORY_POPULARITY),
    ("the model (encode, rank)", MEMORY_POPULARITY, MEMORY),
    ("Cassandra (reads on the path, writes beside it, its server on this box)", MEMORY, "worker"),
)


def phase_kinds(*, with_passthrough: bool, attribute: bool) -> list[str]:
    """The consumers to measure, one after another: every floor first, the worker last."""
    kinds = ["bare", "passthrough"] if (with_passthrough or attribute) else []
    if attribute:
        kinds += [MEMORY_POPULARITY, MEMORY]
    return kinds + ["worker"]


def attribution(by_kind: dict[str, float | None]) -> list[dict[str, object]]:
    """What each component adds to a latency percentile: the step from the run without it to the run with it.

    ``by_kind`` holds the percentile of each phase. A difference of two
    percentiles is not the percentile of a difference: read it as "this much
    more at that percentile once the component is in", from one run.
    """
    rows: list[dict[str, object]] = []
    for component, without, with_ in COMPONENTS:
        base = 0.0 if without is None else by_kind.get(without)
        value = by_kind.get(with_)
        rows.append({"component": component, "adds_ms": None if base is None or value is None else round(value - base, 1)})
    return rows


def run_latency(
    base: Settings,
    *,
    rate: float = 1000.0,
    seconds: float = 60.0,
    users: int = 200_000,
    items: int = 20_000,
    train_events: int = 30_000,
    epochs: int = 2,
    model: Path | None = None,
    no_model: bool = False,
    partitions: int = 4,
    with_passthrough: bool = False,
    attribute: bool = False,
    seed: int = 0,
    keep: bool = False,
    explain: bool = False,
    shadow_model: Path | None = None,
    shadow_fraction: float = 1.0,
    out_dir: Path = report.OUT_DIR,
    progress: Any = print,
) -> dict[str, Any]:
    run_id = isolation.new_run_id()
    settings = isolated_settings(base, "bench-lat", run_id, topic_partitions=partitions,
                                        model_dir=base.state_dir / "bench" / f"lat-{run_id}" / "models", explain=explain)
    logs = base.state_dir / "bench" / f"lat-{run_id}"
    pass_topic = output_topic(settings)
    machine = report.machine_info()
    isolation.create_topics(settings, extra=[pass_topic])
    by_kind: dict[str, dict[str, Any]] = {}
    try:
        stream = load.synthetic_events(train_events + 10_000_000, users, items, seed)
        history = [] if (no_model or model is not None) else list(itertools.islice(stream, train_events))
        model_info = artifacts.prepare_model(settings, model, history, epochs, seed) if not no_model else {"source": None}
        progress(f"model: {model_info}")
        shadow_info = artifacts.prepare_shadow(settings, shadow_model, shadow_fraction) if shadow_model else None
        if shadow_info:
            progress(f"shadow: {shadow_info}")
        isolation.prepare_schema(settings)
        kinds = phase_kinds(with_passthrough=with_passthrough, attribute=attribute)
        for kind in kinds:
            s = settings.with_overrides(consumer_group=f"{settings.consumer_group}-{kind}")
            if kind == "worker":
                proc, topic = processes.worker(s, logs / "worker.log"), s.recommendations_topic
            elif kind in (MEMORY, MEMORY_POPULARITY):
                proc, topic = processes.memory_worker(s, logs / f"{kind}.log", model=kind == MEMORY), s.recommendations_topic
            elif kind == "bare":
                proc, topic = processes.bare_loop(s, logs / "bare.log"), pass_topic
            else:
                proc, topic = processes.passthrough(s, logs / "passthrough.log"), pass_topic
            # Start from the end: nothing sent before this phase is this phase's work.
            isolation.skip_to_end(s)
            proc.start(need_model=kind in (MEMORY, "worker") and bool(model_info.get("source")))
            sampler = observe.ResourceSampler([proc.pid])
            sampler.start()
            try:
                phase = phases.run_latency_phase(s, topic, stream, rate=rate, seconds=seconds)
                if kind in WORKER_KINDS:
                    phase["worker_metrics"] = phases.summarise_worker_metrics([metric_values(proc.metrics())])
            finally:
                sampler.stop()
                proc.stop()
            phase["process"] = sampler.summary()
            by_kind[kind] = phase
            lat = phase["latency"]
            progress(f"{kind}: p50 {lat['p50_ms']} p99 {lat['p99_ms']} ms over {lat['count']} events")
    finally:
        if not keep:
            drop_isolated(settings)

    worker = by_kind.get("worker", {}).get("latency", {})
    p99 = {kind: phase.get("latency", {}).get("p99_ms") for kind, phase in by_kind.items()}
    result: dict[str, Any] = {
        "benchmark": "latency",
        "headline": {
            "offered_rate": rate,
            "p50_ms": worker.get("p50_ms"),
            "p95_ms": worker.get("p95_ms"),
            "p99_ms": worker.get("p99_ms"),
            "answered_fraction": by_kind.get("worker", {}).get("matched_fraction"),
            "passthrough_p99_ms": p99.get("passthrough"),
            "bare_loop_p99_ms": p99.get("bare"),
            # Targets: worker <= 1.5x the passthrough, passthrough <= 2x the bare loop (same run).
            "worker_over_passthrough_p99": stats.ratio(p99.get("worker"), p99.get("passthrough")),
            "passthrough_over_bare_p99": stats.ratio(p99.get("passthrough"), p99.get("bare")),
            "target_p99_ms": f"{TARGET_P99_MS:g}: {report.target_check(worker.get('p99_ms'), TARGET_P99_MS, higher_is_better=False)}",
        },
        "machine": machine,
        "model": model_info,
        "shadow": shadow_info,
        "users": users,
        "items": items,
        "partitions": partitions,
        "explain": explain,
        "run_id": run_id,
        "phases": by_kind,
    }
    if attribute:
        result["attribution"] = {
            q: attribution({kind: phase.get("latency", {}).get(q) for kind, phase in by_kind.items()})
            for q in ("p50_ms", "p99_ms")
        }
    points = by_kind.get("worker", {}).get("_points", [])
    png = report.plot_latency(points, out_dir / "latency.png", f"latency at {rate:g} events/s offered (one worker)",
                              target_ms=TARGET_P99_MS,
                              series={kind: by_kind.get(kind, {}).get("_points", []) for kind in ("bare", "passthrough")})
    if png:
        result["plot"] = str(png)
    stages = by_kind.get("worker", {}).get("worker_metrics", {}).get("stage_ms") or {}
    stages_png = plot_stages(stages, out_dir / "latency-stages.png",
                             f"one micro-batch, mean ms per stage at {rate:g} events/s offered")
    if stages_png:
        result["stages_plot"] = str(stages_png)
    for phase in by_kind.values():
        phase.pop("_points", None)
    return result


def format_result(result: dict[str, Any]) -> str:
    rows = []
    for kind, phase in result["phases"].items():
        lat, proc = phase["latency"], phase["process"]
        rows.append((kind, phase["offered_rate"], phase["achieved_send_rate"], phase["sent"], phase["matched_fraction"],
                     lat["p50_ms"], lat["p95_ms"], lat["p99_ms"], lat["p99.9_ms"], lat["max_ms"], proc["cpu_mean_pct"],
                     proc.get("box_cpu_mean_pct")))
    table = report.format_table(rows, ("run", "offered/s", "sent/s", "events", "answered", "p50 ms", "p95 ms", "p99 ms",
                                       "p99.9 ms", "max ms", "cpu%", "box cpu%"))
    h = result["headline"]
    lines = [table, "", f"target p99 <= {h['target_p99_ms']}"]
    if h.get("passthrough_over_bare_p99") is not None:
        lines.append(f"p99 ratios (same run): worker / passthrough {h['worker_over_passthrough_p99']} (target <= 1.5), "
                     f"passthrough / bare loop {h['passthrough_over_bare_p99']} (target <= 2)")
    wm = result["phases"].get("worker", {}).get("worker_metrics") or {}
    if wm:
        lines.append(f"worker's own metrics: batch {wm.get('mean_batch_records')} records, encoder {wm.get('encoder_ms_per_batch')} "
                     f"ms, load_windows {wm.get('cassandra_load_windows_ms')} ms, save {wm.get('cassandra_save_ms')} ms, consume→emit "
                     f"{wm.get('consume_to_emit_ms_per_batch')} ms")
        lines.append(f"full garbage collections: {wm.get('gc_full_collections')}, {wm.get('gc_full_ms_total')} ms in all, "
                     f"longest <= {wm.get('gc_full_ms_max_bucket')} ms (every thread of the worker waits)")
    if wm.get("shadow_version"):
        lines.append(f"shadow: version {wm['shadow_version']}, encoder {wm.get('shadow_encoder_ms_per_batch')} ms per "
                     f"batch, {wm.get('shadow_users')} users encoded")
    stages = wm.get("stage_ms") or {}
    if stages:
        lines.append("")
        lines.append(stage_table(stages))
    if result.get("attribution"):
        lines.append("")
        lines.append(attribution_table(result["attribution"]))
    return "\n".join(lines)


def attribution_table(by_percentile: dict[str, list[dict[str, object]]]) -> str:
    """Each component's share of the worker's latency, at p50 and p99 (one run, phases side by side)."""
    p50, p99 = by_percentile["p50_ms"], by_percentile["p99_ms"]
    rows = [(a["component"], a["adds_ms"], b["adds_ms"]) for a, b in zip(p50, p99)]
    return report.format_table(rows, ("component (each run adds it to the one before)", "adds to p50 ms", "adds to p99 ms"))


# Until the user can see the recommendation; the rest overlaps the next batches.
CRITICAL_STAGES = (BatchStage.QUEUED, BatchStage.VALIDATE, BatchStage.LOAD, BatchStage.ENCODE, BatchStage.PRODUCE)


def stage_table(stages: dict[str, float | None]) -> str:
    """The worker's mean ms per batch in each stage, and which of them a user waits for."""
    rows = [(stage, stages.get(stage), "yes" if stage in CRITICAL_STAGES else "no (overlaps the next batches)")
            for stage in BatchStage]
    return report.format_table(rows, ("stage", "mean ms per batch", "before the user sees it"))


def plot_stages(stages: dict[str, float | None], path: Path, title: str) -> Path | None:
    """One stacked bar of the stages a user waits for, one of those that overlap the next batches."""
    if not any(stages.values()):
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(9, 2.8))
    bars = {"until the user sees it": CRITICAL_STAGES,
            "after (overlapped)": tuple(s for s in BatchStage if s not in CRITICAL_STAGES)}
    for row, (label, group) in enumerate(bars.items()):
        left = 0.0
        for stage in group:
            width = stages.get(stage) or 0.0
            ax.barh(row, width, left=left, label=stage)
            if width:
                ax.text(left + width / 2, row, f"{stage}\n{width:.0f}", ha="center", va="center", fontsize=7)
            left += width
    ax.set_yticks(range(len(bars)), list(bars))
    ax.set_xlabel("ms (mean per micro-batch)")
    ax.set_title(title)
    return report.save_figure(fig, path)
