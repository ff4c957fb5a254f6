"""Online hit@10 / NDCG@10 per model version, shared by every worker through Cassandra counters.

Prometheus counters are per process and die with it; the CLI (`streamrec model
list`) and the retrainer's online gate need the figures of all workers, now.
Each worker adds its tallies to counter columns of
``online_figures(version, role)`` about once a second (NDCG as integer
micro-units: counters are integers). Counter additions are not idempotent: a
batch replayed after a crash is counted again, which weighs live, shadow and
popularity alike (they are scored on the same events), so the comparison
stays fair.

Roles, per version:

``live`` / ``popularity``
    the version while it served everyone, and the popularity baseline on the same events;
``shadow`` / ``shadow_live`` / ``shadow_popularity``
    the version while shadowed, and the live model and popularity on the very
    same events (the sampled users' events) — what the online gate compares.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cassandra.cluster import Cluster, Session
from cassandra.query import SimpleStatement

from streamrec.config import Settings
from streamrec.errors import StateStoreError
from streamrec.stream.state.cassandra import await_response, check_keyspace_name, connect, consistency_level

log = logging.getLogger(__name__)

NDCG_UNIT = 1_000_000  # NDCG sums are stored as integer micro-units (counter columns are integers)


class Role(StrEnum):
    """Whose figures a row holds (see the module docstring)."""

    LIVE = "live"
    POPULARITY = "popularity"
    SHADOW = "shadow"
    SHADOW_LIVE = "shadow_live"
    SHADOW_POPULARITY = "shadow_popularity"


@dataclass(frozen=True)
class Figures:
    """Events scored, hits in the top-10 and the NDCG@10 sum (micro-units) of one (version, role)."""

    evaluated: int = 0
    hits: int = 0
    ndcg_micro: int = 0

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.evaluated if self.evaluated else None

    @property
    def ndcg(self) -> float | None:
        return self.ndcg_micro / NDCG_UNIT / self.evaluated if self.evaluated else None

    def __add__(self, other: "Figures") -> "Figures":
        return Figures(self.evaluated + other.evaluated, self.hits + other.hits, self.ndcg_micro + other.ndcg_micro)

    def __sub__(self, other: "Figures") -> "Figures":
        return Figures(self.evaluated - other.evaluated, self.hits - other.hits, self.ndcg_micro - other.ndcg_micro)

    def describe(self) -> str:
        if not self.evaluated:
            return "no events"
        return f"hit@10 {self.hit_rate:.4f}, NDCG@10 {self.ndcg:.4f} on {self.evaluated} events"


FiguresByKey = dict[tuple[int, Role], Figures]


class OnlineTally:
    """A worker's figures since the last flush; filled by the encoder thread, drained by the event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: FiguresByKey = {}

    def add(self, version: int, role: Role, evaluated: int, hits: int, ndcg: float) -> None:
        if not evaluated or version <= 0:  # version 0 is the popularity fallback: no registry row
            return
        figures = Figures(evaluated, hits, round(ndcg * NDCG_UNIT))
        with self._lock:
            key = (version, role)
            self._pending[key] = self._pending.get(key, Figures()) + figures

    def drain(self) -> FiguresByKey:
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending

    def restore(self, figures: FiguresByKey) -> None:
        """Put back figures whose flush failed (added to what came in meanwhile)."""
        with self._lock:
            for key, value in figures.items():
                self._pending[key] = self._pending.get(key, Figures()) + value


class OnlineFiguresStore:
    """The ``online_figures`` counter table: workers add, the CLI and the retrainer read."""

    def __init__(self, settings: Settings, session: Session, cluster: Cluster | None = None) -> None:
        self._session = session
        self._cluster = cluster  # owned (shut down by close) only when opened here
        self._keyspace = check_keyspace_name(settings.cassandra_keyspace)
        self._write_cl = consistency_level(settings.cassandra_write_consistency)
        self._read_cl = consistency_level(settings.cassandra_read_consistency)
        self._update: Any = None

    @classmethod
    def open(cls, settings: Settings) -> "OnlineFiguresStore":
        """Its own connection (CLI, retrainer); a worker shares its window store's session instead."""
        cluster, session = connect(settings)
        return cls(settings, session, cluster)

    def migrate(self) -> None:
        """Create the table if missing (the keyspace exists: the window store created it)."""
        try:
            self._session.execute(
                f"""CREATE TABLE IF NOT EXISTS {self._keyspace}.online_figures (
                      version int,
                      role text,
                      evaluated counter,
                      hits counter,
                      ndcg_micro counter,
                      PRIMARY KEY (version, role)
                   ) WITH comment = 'online hit@10 / NDCG@10 per model version and role, summed over workers'"""
            )
        except Exception as exc:  # noqa: BLE001 - the driver's errors; the caller decides whether that matters
            raise StateStoreError(f"cannot create {self._keyspace}.online_figures: {exc}") from exc

    async def add(self, figures: FiguresByKey) -> None:
        """Add a worker's tallies (one counter update per (version, role))."""
        if self._update is None:
            self._update = self._session.prepare(
                f"UPDATE {self._keyspace}.online_figures SET evaluated = evaluated + ?, hits = hits + ?, "
                "ndcg_micro = ndcg_micro + ? WHERE version = ? AND role = ?"
            )
            self._update.consistency_level = self._write_cl
        try:
            for (version, role), f in figures.items():
                await await_response(self._session.execute_async(
                    self._update, (f.evaluated, f.hits, f.ndcg_micro, version, str(role))))
        except Exception as exc:  # noqa: BLE001 - the driver's errors: the caller keeps the tallies and retries
            raise StateStoreError(f"cannot add online figures: {type(exc).__name__}: {exc}") from exc

    def read(self) -> dict[int, dict[Role, Figures]]:
        """Every version's figures by role; empty when no worker has written any yet."""
        statement = SimpleStatement(
            f"SELECT version, role, evaluated, hits, ndcg_micro FROM {self._keyspace}.online_figures",
            consistency_level=self._read_cl,
        )
        try:
            rows = self._session.execute(statement)
        except Exception as exc:  # noqa: BLE001 - a missing table (no worker yet) reads as no figures
            if "unconfigured table" in str(exc) or "does not exist" in str(exc):
                return {}
            raise StateStoreError(f"cannot read online figures: {type(exc).__name__}: {exc}") from exc
        figures: dict[int, dict[Role, Figures]] = {}
        for row in rows:
            try:
                role = Role(row.role)
            except ValueError:
                continue  # a role of a newer worker
            figures.setdefault(row.version, {})[role] = Figures(row.evaluated or 0, row.hits or 0, row.ndcg_micro or 0)
        return figures

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.shutdown()
