"""`bench faults`: the fault scenarios against the local servers, and what each one lost.

Every scenario runs real worker processes on its own topics, keyspace and
consumer group, injects one fault, and then checks every event it produced
against the windows in Cassandra (the windows are sized to hold every event
of every user, so nothing is hidden by the cap):

- **lost**: produced (and valid) but not in any window once the workers settle;
- **duplicated**: window entries beyond one per event id (a sanity check of the
  merge's de-duplication under replay: it should never fire);
- **recovery s**: from the moment the last event was produced (after the fault
  ended) until every event was in state.

A scenario that fails to run is reported as failed, never as clean.

Scenarios that stop a server need the servers started by ``streamrec infra up``
(the bench stops and restarts exactly those processes); elsewhere they are
reported as skipped, with the reason.
"""

from __future__ import annotations

import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from streamrec.bench import isolation, load, processes, report
from streamrec.config import Settings
from streamrec.deploy import infra as local
from streamrec.stream.metrics import metric_values
from streamrec.stream.state.cassandra import connect
from streamrec.stream.window import decode_window
from streamrec.testing.isolation import drop_isolated, isolated_settings
from streamrec.testing.process import ServiceProcess

log = logging.getLogger(__name__)

SCENARIOS = (
    "kill9-1-of-2",
    "cassandra-30s",
    "broker-restart",
    "mixed-partitioners",
    "returning-user",
    "oversized-record",
    "model-fails-to-load",
)
WHOLE = 1000  # window size: larger than any user's events in a scenario


@dataclass
class ScenarioResult:
    """One row of the table."""

    scenario: str
    produced: int = 0
    in_state: int = 0
    lost: int = 0
    duplicated: int = 0
    recovery_s: float | None = None
    workers_alive: bool = True
    note: str = ""
    skipped: str | None = None
    failed: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    """What a scenario has to hand: its settings, its workers and where logs go."""

    settings: Settings
    logs: Path
    workers: list[ServiceProcess] = field(default_factory=list)

    def worker(self, name: str, **overrides: Any) -> ServiceProcess:
        settings = self.settings.with_overrides(**overrides)
        process = processes.worker(settings, self.logs / f"{name}.log", worker_id=name).start()
        self.workers.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.workers:
            if process.alive():
                assert process.proc is not None
                process.proc.kill()
                process.proc.wait(timeout=30)


# --------------------------------------------------------------------------- #
# Producing and checking
# --------------------------------------------------------------------------- #
def events_for(users: int, per_user: int, seed: int, start_ms: int | None = None) -> list[dict[str, Any]]:
    """``users * per_user`` events, interleaved across users, in event-time order."""
    t0 = start_ms if start_ms is not None else int(time.time() * 1000) - 60_000
    return [
        {"event_id": f"f{seed}-{u}-{n}", "user_id": f"u{seed}-{u}", "item_id": f"i{(u * 7 + n * 13) % 300}",
         "event_type": "view", "ts": t0 + n * 1000 + u}
        for n in range(per_user) for u in range(users)
    ]


def produce(settings: Settings, events: Iterable[dict[str, Any]], partitioner: str = "murmur2_random") -> int:
    count, _ = load.preproduce(settings.kafka_bootstrap, settings.events_topic,
                                 (load.encode_event(e) for e in events), partitioner=partitioner)
    return count


def window_ids(settings: Settings, users: Iterable[str]) -> dict[str, list[str]]:
    """Each user's window as event ids, read with a plain driver session."""
    cluster, session = connect(settings, timeout_s=30)
    try:
        statement = session.prepare(f"SELECT events FROM {settings.cassandra_keyspace}.windows WHERE user_id = ?")
        out = {}
        for user in users:
            row = session.execute(statement, (user,)).one()
            out[user] = [e.event_id for e in decode_window(row.events)] if row else []
        return out
    except Exception as exc:  # the keyspace may not exist yet, or Cassandra is down: nothing in state
        log.debug("window read failed: %s", exc)
        return {user: [] for user in users}
    finally:
        cluster.shutdown()


def settle(settings: Settings, events: Sequence[dict[str, Any]], timeout_s: float, result: ScenarioResult) -> None:
    """Poll state until every event is in (or the timeout); record in state, lost, duplicated and the time taken."""
    wanted = {e["event_id"] for e in events}
    users = {e["user_id"] for e in events}
    started = time.monotonic()
    while True:
        ids = [i for w in window_ids(settings, users).values() for i in w]
        found = wanted & set(ids)
        if found == wanted or time.monotonic() - started > timeout_s:
            break
        time.sleep(1.0)
    result.in_state, result.lost, result.duplicated = len(found), len(wanted - found), len(ids) - len(set(ids))
    result.recovery_s = time.monotonic() - started if found == wanted else None


def infra_owned(settings: Settings, server: str) -> str | None:
    """None when this bench may stop and restart ``server``; else why not."""
    if local.running_pid(settings, server) is None:
        return f"{server} was not started by `streamrec infra up` (STREAMREC_STATE_DIR={settings.state_dir})"
    return None


# --------------------------------------------------------------------------- #
# Scenarios: each returns its result; the runner handles set-up and clean-up
# --------------------------------------------------------------------------- #
def kill9_one_of_two(run: Run, result: ScenarioResult, timeout_s: float) -> None:
    run.worker("w1")
    run.worker("w2")
    time.sleep(5.0)  # both in the group
    events = events_for(100, 20, seed=1)
    result.produced = produce(run.settings, events[:1000])
    time.sleep(1.0)
    victim = run.workers[0]
    assert victim.proc is not None
    victim.proc.kill()
    victim.proc.wait(timeout=30)
    result.produced += produce(run.settings, events[1000:])
    settle(run.settings, events, timeout_s, result)
    result.workers_alive = run.workers[1].alive()


def cassandra_outage(run: Run, result: ScenarioResult, timeout_s: float) -> None:
    run.worker("w1")
    events = events_for(100, 20, seed=2)
    result.produced = produce(run.settings, events[:1000])
    time.sleep(1.0)
    local.stop(run.settings, "cassandra")
    stopped = time.monotonic()
    try:
        result.produced += produce(run.settings, events[1000:])
        time.sleep(max(0.0, 30.0 - (time.monotonic() - stopped)))
        result.detail["health_during_outage"] = run.workers[0].health()
    finally:
        local.start(run.settings, "cassandra")
    settle(run.settings, events, timeout_s, result)
    result.workers_alive = run.workers[0].alive()


def broker_restart(run: Run, result: ScenarioResult, timeout_s: float) -> None:
    run.worker("w1")
    events = events_for(100, 20, seed=3)
    result.produced = produce(run.settings, events[:1000])
    time.sleep(1.0)
    local.stop(run.settings, "kafka")
    time.sleep(5.0)
    local.start(run.settings, "kafka")
    result.produced += produce(run.settings, events[1000:])
    settle(run.settings, events, timeout_s, result)
    result.workers_alive = run.workers[0].alive()


def mixed_partitioners(run: Run, result: ScenarioResult, timeout_s: float) -> None:
    run.worker("w1")
    run.worker("w2")
    time.sleep(5.0)
    events = events_for(100, 20, seed=4)
    # In rounds, so that both workers hold each user's window in their caches between rounds.
    for start in range(0, len(events), 200):
        round_ = events[start:start + 200]
        with ThreadPoolExecutor(max_workers=2) as pool:  # .result() re-raises a producer's failure
            sent = [pool.submit(produce, run.settings, round_[0::2], "murmur2_random"),
                    pool.submit(produce, run.settings, round_[1::2], "consistent_random")]
            result.produced += sum(future.result() for future in sent)
        time.sleep(0.3)
    settle(run.settings, events, timeout_s, result)
    result.detail["rerouted"] = sum(
        metric_values(w.metrics()).get("streamrec_events_rerouted_total", 0.0) for w in run.workers
    )
    result.note = f"{result.detail['rerouted']:.0f} events re-routed to their key's partition"
    result.workers_alive = all(w.alive() for w in run.workers)


def returning_user(run: Run, result: ScenarioResult, timeout_s: float) -> None:
    # Windows (and their TTL) of three seconds: the users come back after theirs expired,
    # to a restarted worker (no cached windows).
    short = {"window_max_age_days": 3 / 86_400}
    run.worker("w1", **short)
    before = events_for(50, 10, seed=5)
    produce(run.settings, before)
    settle(run.settings, before, timeout_s, ScenarioResult("warm-up"))
    run.stop_all()
    time.sleep(5.0)
    run.worker("w2", **short)
    after = events_for(50, 3, seed=5, start_ms=int(time.time() * 1000))
    for event in after:
        event["event_id"] = "back-" + event["event_id"]
    result.produced = produce(run.settings, after)
    settle(run.settings, after, timeout_s, result)
    result.note = "after the window expired: every new event must be stored again"
    result.workers_alive = run.workers[-1].alive()


def oversized_record(run: Run, result: ScenarioResult, timeout_s: float) -> None:
    from confluent_kafka import Producer

    run.worker("w1")
    producer = Producer({"bootstrap.servers": run.settings.kafka_bootstrap, "acks": "all"})
    huge_key = b"k" * 450_000
    for partition in range(run.settings.topic_partitions):
        producer.produce(run.settings.events_topic, key=huge_key, value=b"{" * 500_000, partition=partition)
    if producer.flush(60):
        raise RuntimeError("could not produce the oversized records")
    events = events_for(100, 20, seed=6)
    result.produced = produce(run.settings, events)
    settle(run.settings, events, timeout_s, result)
    result.detail["dead_lettered"] = metric_values(run.workers[0].metrics()).get(
        "streamrec_events_rejected_total{reason=payload_too_large}", 0.0)
    result.note = f"{run.settings.topic_partitions} records with a 450 KB key and a 500 KB value, one per partition"
    result.workers_alive = run.workers[0].alive()


def model_fails_to_load(run: Run, result: ScenarioResult, timeout_s: float) -> None:
    models = run.settings.models_path
    broken = models / "v000001"
    broken.mkdir(parents=True, exist_ok=True)
    (broken / "manifest.json").write_text('{"format": "not a streamrec artifact"}')
    (broken / "model.onnx").write_bytes(b"\x08\x07garbage")
    (models / "LIVE").write_text("1\n")
    worker = run.worker("w1")
    events = events_for(100, 20, seed=7)
    result.produced = produce(run.settings, events)
    settle(run.settings, events, timeout_s, result)
    health = worker.health()
    refused = health.get("model_refused") or {}
    reason = str(refused.get("reason", "none")).rsplit(": ", 1)[-1]  # the reason, without the long path
    result.note = f"refused ({reason[:60]}); serving model_version {health.get('model_version')}"
    result.detail["health"] = health
    result.workers_alive = worker.alive()


RUNNERS: dict[str, Callable[[Run, ScenarioResult, float], None]] = {
    "kill9-1-of-2": kill9_one_of_two,
    "cassandra-30s": cassandra_outage,
    "broker-restart": broker_restart,
    "mixed-partitioners": mixed_partitioners,
    "returning-user": returning_user,
    "oversized-record": oversized_record,
    "model-fails-to-load": model_fails_to_load,
}
NEEDS_SERVER = {"cassandra-30s": "cassandra", "broker-restart": "kafka"}


def run_faults(
    base: Settings,
    *,
    scenarios: Sequence[str] = SCENARIOS,
    timeout_s: float = 180.0,
    keep: bool = False,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run each scenario on fresh topics and keyspace; returns the report (rows + machine)."""
    run_id = isolation.new_run_id()
    out_logs = base.state_dir / "bench" / f"faults-{run_id}"
    rows: list[ScenarioResult] = []
    for number, name in enumerate(scenarios, 1):
        result = ScenarioResult(name)
        server = NEEDS_SERVER.get(name)
        result.skipped = infra_owned(base, server) if server else None
        if result.skipped:
            progress(f"[{number}/{len(scenarios)}] {name}: skipped ({result.skipped})")
            rows.append(result)
            continue
        settings = isolated_settings(
            base, "bench-faults", f"{run_id}{number}", window_size=WHOLE, topic_partitions=4,
            model_dir=out_logs / name / "models",
        )
        run = Run(settings, out_logs / name)
        progress(f"[{number}/{len(scenarios)}] {name} ...")
        started = time.monotonic()
        try:
            isolation.create_topics(settings)
            RUNNERS[name](run, result, timeout_s)
        except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the others' results
            result.failed = f"{type(exc).__name__}: {exc}"[:300]
            log.exception("scenario %s failed", name)
        finally:
            run.stop_all()
            if not keep:
                drop_isolated(settings)
                shutil.rmtree(out_logs / name / "models", ignore_errors=True)
        result.detail["seconds"] = round(time.monotonic() - started, 1)
        progress(f"    produced {result.produced}, in state {result.in_state}, lost {result.lost}, "
                 f"duplicated {result.duplicated}, recovery {result.recovery_s and round(result.recovery_s, 1)} s")
        rows.append(result)
    return {
        "bench": "faults",
        "machine": report.machine_info(),
        "logs": str(out_logs),
        "scenarios": [asdict(r) for r in rows],
        "all_clean": all(r.skipped or (not r.failed and r.lost == 0 and r.duplicated == 0 and r.workers_alive
                                        and r.produced > 0) for r in rows),
    }


def format_result(result: dict[str, Any]) -> str:
    rows = []
    for r in result["scenarios"]:
        if r["skipped"] or r["failed"]:
            why = f"skipped: {r['skipped']}" if r["skipped"] else f"FAILED TO RUN: {r['failed']}"
            rows.append([r["scenario"], "-", "-", "-", "-", "-", "-", why])
            continue
        recovery = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.1f}"
        rows.append([r["scenario"], r["produced"], r["in_state"], r["lost"], r["duplicated"], recovery,
                     "yes" if r["workers_alive"] else "NO", r["note"]])
    table = report.format_table(rows, ["scenario", "produced", "in state", "lost", "duplicated", "recovery s",
                                       "worker alive", "note"])
    verdict = "every scenario: 0 lost, 0 duplicated" if result["all_clean"] else "LOSS OR DUPLICATION FOUND"
    return f"{table}\n{verdict}"

