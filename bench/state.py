"""`bench state`: the Cassandra window store alone — the chosen data model versus the rejected one.

Chosen (``stream/state/cassandra.py``): one capped blob per user, rewritten
whole by the partition's single owner (``USING TIMESTAMP seq AND TTL``).
Rejected (implemented here only): one row per event,
``PRIMARY KEY (user_id, ts, event_id) WITH CLUSTERING ORDER BY (ts DESC)``,
read with ``LIMIT N``, expired by the table's TTL.

Per model: a prefill gives every user a full window; then micro-batches of
distinct users each get one new event, timed as the worker does it —
cold (read every window, then write) and warm (the worker-local cache hit:
write only; the rows model must still read N rows to encode the user unless
it keeps the same cache, so its warm path is the insert alone). Also
single-request read/write latency (sequential, no queueing) and what
Cassandra itself reports per table (``system_views``: rows and tombstones
per read, partition size, disk usage), plus a TTL-expiry probe that shows the
tombstones each model reads for a user whose events all expired.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, Sequence

from streamrec.bench import isolation, report, stats
from streamrec.config import Settings
from streamrec.stream.state.base import StoredWindow
from streamrec.stream.state.cassandra import CassandraStore, await_response, check_keyspace_name
from streamrec.stream.window import WindowEntry, encode_window, merge_window
from streamrec.testing.isolation import drop_keyspace, isolated_settings

log = logging.getLogger(__name__)


def _entry(user: int, n: int, ts: int, items: int, rnd: random.Random) -> WindowEntry:
    return WindowEntry(f"u{user}-e{n}", f"i{rnd.randrange(items)}", "view", ts)


class RowsModel:
    """The rejected model: rows clustered by time DESC, LIMIT N reads, TTL expiry."""

    def __init__(self, store: CassandraStore, keyspace: str, table: str = "window_rows", ttl_s: int = 30 * 86400) -> None:
        self.session = store._session  # noqa: SLF001 - same driver session and settings as the chosen model
        self.limit = asyncio.Semaphore(store._settings.cassandra_concurrency)  # noqa: SLF001
        ks = check_keyspace_name(keyspace)
        self.table = table
        self.session.execute(
            f"""CREATE TABLE IF NOT EXISTS {ks}.{table} (
                  user_id text, ts bigint, event_id text, item_id text, event_type text,
                  PRIMARY KEY (user_id, ts, event_id)
               ) WITH CLUSTERING ORDER BY (ts DESC, event_id ASC)
                 AND default_time_to_live = {int(ttl_s)}
                 AND compaction = {{'class': 'TimeWindowCompactionStrategy'}}"""
        )
        self.insert = self.session.prepare(
            f"INSERT INTO {ks}.{table} (user_id, ts, event_id, item_id, event_type) VALUES (?, ?, ?, ?, ?)")
        self.select = self.session.prepare(
            f"SELECT ts, event_id, item_id, event_type FROM {ks}.{table} WHERE user_id = ? LIMIT ?")

    async def _run(self, stmt: Any, params: Sequence[Any]) -> Any:
        async with self.limit:
            return await await_response(self.session.execute_async(stmt, params))

    async def append(self, events: Sequence[tuple[str, WindowEntry]]) -> None:
        await asyncio.gather(*(self._run(self.insert, (u, e.ts_ms, e.event_id, e.item_id, e.event_type)) for u, e in events))

    async def read(self, users: Sequence[str], n: int) -> dict[str, list[WindowEntry]]:
        results = await asyncio.gather(*(self._run(self.select, (u, n)) for u in users))
        out = {}
        for user, rows in zip(users, results):
            out[user] = [WindowEntry(r.event_id, r.item_id, r.event_type, r.ts) for r in reversed(list(rows))]
        return out


async def _bench(settings: Settings, *, users: int, updates: int, batch: int, window: int, items: int,
                 single: int, ttl_probe_users: int, seed: int, progress: Any) -> dict[str, Any]:
    rnd = random.Random(seed)
    store = CassandraStore.open(settings)
    ks = settings.cassandra_keyspace
    rows = RowsModel(store, ks)
    ttl_s = int(settings.window_max_age_days * 86400)
    base_ts = int(time.time() * 1000) - 3_600_000
    counters = {u: 0 for u in range(users)}
    results: dict[str, Any] = {"blob": {}, "rows": {}}
    try:
        # ---- prefill: every user gets a full window (N events) in both models
        t0 = time.perf_counter()
        windows: dict[str, StoredWindow] = {}
        for start in range(0, users, batch):
            chunk = range(start, min(users, start + batch))
            ws = []
            for u in chunk:
                entries = tuple(_entry(u, n, base_ts + n * 1000, items, rnd) for n in range(window))
                counters[u] = window
                ws.append(StoredWindow(f"u{u}", entries, window))
            await store.save_windows(ws, ttl_s)
            windows.update({w.user_id: w for w in ws})
        results["blob"]["prefill_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        for start in range(0, users, max(1, batch // window)):
            chunk = range(start, min(users, start + max(1, batch // window)))
            await rows.append([(f"u{u}", e) for u in chunk for e in windows[f"u{u}"].entries])
        results["rows"]["prefill_s"] = round(time.perf_counter() - t0, 2)
        progress(f"prefill: blob {results['blob']['prefill_s']} s, rows {results['rows']['prefill_s']} s ({users} users x {window})")

        def next_batch() -> tuple[list[int], list[WindowEntry]]:
            picked = rnd.sample(range(users), min(batch, users))
            new = []
            for u in picked:
                counters[u] += 1
                new.append(_entry(u, counters[u], base_ts + counters[u] * 1000, items, rnd))
            return picked, new

        n_batches = max(1, updates // batch)
        # ---- blob, cold (read + merge + write) and warm (merge + write; the cache has the window)
        for mode in ("cold", "warm"):
            reads, writes = [], []
            t0 = time.perf_counter()
            for _ in range(n_batches):
                picked, new = next_batch()
                ids = [f"u{u}" for u in picked]
                if mode == "cold":
                    r0 = time.perf_counter()
                    loaded = await store.load_windows(ids)
                    reads.append((time.perf_counter() - r0) * 1000)
                else:
                    loaded = {i: windows[i] for i in ids}
                changed = []
                for uid, entry in zip(ids, new):
                    current = loaded.get(uid) or StoredWindow(uid)
                    merged, _ = merge_window(current.entries, [entry], max_events=window, max_age_ms=ttl_s * 1000)
                    w = StoredWindow(uid, tuple(merged), current.seq + 1)
                    changed.append(w)
                    windows[uid] = w
                w0 = time.perf_counter()
                await store.save_windows(changed, ttl_s)
                writes.append((time.perf_counter() - w0) * 1000)
            elapsed = time.perf_counter() - t0
            results["blob"][mode] = {"updates_per_s": round(n_batches * batch / elapsed, 1),
                                     "batch_read_ms": stats.latency_summary(reads) if reads else None,
                                     "batch_write_ms": stats.latency_summary(writes)}
            progress(f"blob {mode}: {results['blob'][mode]['updates_per_s']} updates/s")
        # ---- rows, cold (insert + read LIMIT N to encode) and warm (insert only)
        for mode in ("cold", "warm"):
            reads, writes = [], []
            t0 = time.perf_counter()
            for _ in range(n_batches):
                picked, new = next_batch()
                ids = [f"u{u}" for u in picked]
                w0 = time.perf_counter()
                await rows.append(list(zip(ids, new)))
                writes.append((time.perf_counter() - w0) * 1000)
                if mode == "cold":
                    r0 = time.perf_counter()
                    await rows.read(ids, window)
                    reads.append((time.perf_counter() - r0) * 1000)
            elapsed = time.perf_counter() - t0
            results["rows"][mode] = {"updates_per_s": round(n_batches * batch / elapsed, 1),
                                     "batch_read_ms": stats.latency_summary(reads) if reads else None,
                                     "batch_write_ms": stats.latency_summary(writes)}
            progress(f"rows {mode}: {results['rows'][mode]['updates_per_s']} updates/s")
        # ---- single-request latency, sequential (no queueing in our semaphore)
        for name in ("blob", "rows"):
            r_lat, w_lat = [], []
            for _ in range(single):
                u = rnd.randrange(users)
                uid = f"u{u}"
                counters[u] += 1
                entry = _entry(u, counters[u], base_ts + counters[u] * 1000, items, rnd)
                t = time.perf_counter()
                if name == "blob":
                    await store.load_windows([uid])
                else:
                    await rows.read([uid], window)
                r_lat.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                if name == "blob":
                    current = windows[uid]
                    merged, _ = merge_window(current.entries, [entry], max_events=window, max_age_ms=ttl_s * 1000)
                    windows[uid] = StoredWindow(uid, tuple(merged), current.seq + 1)
                    await store.save_windows([windows[uid]], ttl_s)
                else:
                    await rows.append([(uid, entry)])
                w_lat.append((time.perf_counter() - t) * 1000)
            results[name]["single_read_ms"] = stats.latency_summary(r_lat)
            results[name]["single_write_ms"] = stats.latency_summary(w_lat)
        results["blob"]["cells_per_user"] = 1
        results["rows"]["rows_per_user_mean"] = round(sum(counters.values()) / users, 1)
        # ---- TTL probe: all of a user's events expired, then the user is read
        if ttl_probe_users:
            results["ttl_probe"] = await _ttl_probe(store, rows, ks, ttl_probe_users, window, items, rnd)
        results["system_views"] = _system_views(store, ks)
    finally:
        await store.close()
    return results


async def _ttl_probe(store: CassandraStore, rows: RowsModel, ks: str, users: int, window: int, items: int,
                     rnd: random.Random) -> dict[str, Any]:
    """Short-TTL copies of both models: write, let everything expire, read; tombstones come from system_views."""
    probe_rows = RowsModel(store, ks, table="window_rows_ttl", ttl_s=2)
    session = store._session  # noqa: SLF001
    session.execute(f"CREATE TABLE IF NOT EXISTS {ks}.windows_ttl (user_id text PRIMARY KEY, events blob, seq bigint)")
    insert = session.prepare(f"INSERT INTO {ks}.windows_ttl (user_id, events, seq) VALUES (?, ?, ?) USING TTL 2")
    select = session.prepare(f"SELECT events, seq FROM {ks}.windows_ttl WHERE user_id = ?")
    now = int(time.time() * 1000)
    for u in range(users):
        entries = [_entry(u, n, now + n, items, rnd) for n in range(window * 2)]
        await probe_rows.append([(f"u{u}", e) for e in entries])
        await await_response(session.execute_async(insert, (f"u{u}", encode_window(entries[-window:]), 1)))
    await asyncio.sleep(3.0)
    for u in range(users):
        await probe_rows.read([f"u{u}"], window)
        await await_response(session.execute_async(select, (f"u{u}",)))
    views = _system_views(store, ks)
    return {"users": users, "events_per_user": window * 2, "ttl_s": 2,
            "rows_model": views.get("window_rows_ttl", {}), "blob_model": views.get("windows_ttl", {})}


def _system_views(store: CassandraStore, ks: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    session = store._session  # noqa: SLF001
    for view, cols in (("rows_per_read", ("p50th", "p99th", "max")), ("tombstones_per_read", ("p50th", "p99th", "max")),
                       ("max_partition_size", ("mebibytes",)), ("disk_usage", ("mebibytes",))):
        try:
            for r in session.execute(f"SELECT * FROM system_views.{view} WHERE keyspace_name = %s", (ks,)):
                out.setdefault(r.table_name, {})[view] = {c: getattr(r, c) for c in cols}
        except Exception as exc:  # virtual tables differ between Cassandra versions
            log.info("system_views.%s unavailable: %s", view, exc)
    return out


def run_state(base: Settings, *, users: int = 5000, updates: int = 50_000, batch: int = 256, window: int | None = None,
              items: int = 20_000, single: int = 300, ttl_probe_users: int = 200, seed: int = 0, keep: bool = False,
              progress: Any = print) -> dict[str, Any]:
    run_id = isolation.new_run_id()
    settings = isolated_settings(base, "bench-state", run_id)
    n = window or settings.window_size
    machine = report.machine_info()
    try:
        results = asyncio.run(_bench(settings, users=users, updates=updates, batch=batch, window=n, items=items,
                                     single=single, ttl_probe_users=ttl_probe_users, seed=seed, progress=progress))
    finally:
        if not keep:
            drop_keyspace(settings)
    blob, rows = results["blob"], results["rows"]
    headline = {
        "blob_cold_updates_per_s": blob["cold"]["updates_per_s"],
        "blob_warm_updates_per_s": blob["warm"]["updates_per_s"],
        "rows_cold_updates_per_s": rows["cold"]["updates_per_s"],
        "rows_warm_updates_per_s": rows["warm"]["updates_per_s"],
        "blob_read_p99_ms": blob["single_read_ms"]["p99_ms"],
        "rows_read_p99_ms": rows["single_read_ms"]["p99_ms"],
        "blob_write_p99_ms": blob["single_write_ms"]["p99_ms"],
        "rows_write_p99_ms": rows["single_write_ms"]["p99_ms"],
    }
    return {"benchmark": "state", "headline": headline, "machine": machine, "users": users, "updates": updates,
            "batch": batch, "window": n, "run_id": run_id, **results}


def format_result(result: dict[str, Any]) -> str:
    lines = []
    rows = []
    for name, label in (("blob", "one capped blob per user (chosen)"), ("rows", "rows by ts DESC + LIMIT + TTL (rejected)")):
        r = result[name]
        rows.append((label, r["cold"]["updates_per_s"], r["warm"]["updates_per_s"],
                     (r["cold"]["batch_read_ms"] or {}).get("p50_ms"), r["cold"]["batch_write_ms"]["p50_ms"],
                     r["single_read_ms"]["p50_ms"], r["single_read_ms"]["p99_ms"],
                     r["single_write_ms"]["p50_ms"], r["single_write_ms"]["p99_ms"]))
    lines.append(report.format_table(rows, ("model", "cold upd/s", "warm upd/s", f"batch({result['batch']}) read ms",
                                            "batch write ms", "read p50", "read p99", "write p50", "write p99")))
    lines.append(f"\nstored per user after the run: blob 1 cell (<= {result['window']} entries); rows "
                 f"{result['rows']['rows_per_user_mean']} rows (every event until its TTL expires)")
    sv = result.get("system_views", {})
    for table in ("windows", "window_rows"):
        if table in sv:
            lines.append(f"system_views {table}: {sv[table]}")
    probe = result.get("ttl_probe")
    if probe:
        lines.append(f"TTL probe ({probe['users']} users, {probe['events_per_user']} events each, all expired): "
                     f"rows model tombstones/read {probe['rows_model'].get('tombstones_per_read')}, "
                     f"blob model {probe['blob_model'].get('tombstones_per_read')}")
    return "\n".join(lines)
