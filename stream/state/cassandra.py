"""The Cassandra state store: one capped window value per user, rewritten by its owner.

Data model (see README, "The window in Cassandra"):

``windows(user_id PRIMARY KEY, events blob, seq bigint, updated_at timestamp)``
    The whole window (at most N entries, in event-time order) is one cell,
    overwritten by the single worker that owns the user's partition. An
    overwrite shadows the previous cell without a tombstone, so sliding the
    window costs no tombstones at all; the only tombstone per user comes from
    the TTL (= the window's age limit) when the user goes idle. Writes carry
    ``USING TIMESTAMP`` from :func:`~streamrec.stream.state.base.next_write_us`
    (the wall clock, and always past the copy being replaced, read back with
    ``WRITETIME``), so a returning user's window is stored again after the
    old one expired or was deleted.

``user_state(user_id PRIMARY KEY, ...)``
    The latest user vector, model version and recommendation message.

Every statement is prepared; values from events are bound, never formatted
into CQL. Identifiers formatted into DDL (the keyspace) are validated. Reads
and writes run at the configured consistency levels (default LOCAL_QUORUM),
so "durable before the offset is committed" means a quorum of replicas, and a
window read after a rebalance sees the previous owner's last write.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import timezone
from typing import Any, Callable, Hashable, Sequence

from cassandra import ConsistencyLevel, DriverException, InvalidRequest, OperationTimedOut, RequestExecutionException
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, Session
from cassandra.policies import ConstantReconnectionPolicy, DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, BatchType, PreparedStatement

from streamrec.config import Settings
from streamrec.errors import ConfigError, StateStoreError
from streamrec.stream.state.base import ForgetMark, ForgetResult, StoredWindow, UserState
from streamrec.stream.window import WindowDecodeError, decode_window, encode_window

log = logging.getLogger(__name__)

# Users per window read request (Cassandra reads the partitions of an IN one after another on
# each replica, so the groups stay small enough to spread over the request concurrency).
READ_GROUP = 32
_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")
# Failures that mean "Cassandra is (temporarily) not there": the caller backs off and retries.
_TRANSIENT = (NoHostAvailable, OperationTimedOut, RequestExecutionException, DriverException, ConnectionError)


@dataclass(frozen=True, slots=True)
class _UserWrite:
    """One user's statements: the window and/or the state, always sent together."""

    user_id: str
    statements: list[tuple[PreparedStatement, tuple]]

    @property
    def size(self) -> int:
        return sum(_values_size(params) for _, params in self.statements)


def _values_size(params: Sequence[Any]) -> int:
    """Bytes a statement's bound values add to a batch: what Cassandra's batch-size thresholds count, plus row overhead."""
    return 32 + sum(len(v) if isinstance(v, (bytes, str)) else 8 for v in params if v is not None)


def _batch_too_large(exc: StateStoreError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, InvalidRequest) and "Batch too large" in str(cause)


def pack_writes(writes: Sequence[tuple[Hashable, int]], cap_bytes: int, max_writes: int) -> list[list[int]]:
    """Indices of ``(owner, size)`` writes packed into groups of one owner, at most ``max_writes`` and ``cap_bytes`` each.

    Order is kept within an owner; a write larger than the cap goes alone
    (a user's statements are never split across requests).
    """
    open_groups: dict[Hashable, tuple[list[int], int]] = {}
    groups: list[list[int]] = []
    for index, (owner, size) in enumerate(writes):
        current = open_groups.get(owner)
        if current is not None and len(current[0]) < max_writes and current[1] + size <= cap_bytes:
            current[0].append(index)
            open_groups[owner] = (current[0], current[1] + size)
            continue
        group = [index]
        groups.append(group)
        open_groups[owner] = (group, size)
    return groups


def writes_per_request(users: int, concurrency: int) -> int:
    """Users per write request: as few as keep a save within ``concurrency`` requests (so all run at once).

    A small batch (light load) writes one user per request, in parallel:
    packing there made each save wait on a few large requests (the demo's
    p50 went from 28 to 85-96 ms). A large batch (a backlog) packs enough
    users per request to cut the per-request cost, which is what bounds
    throughput there.
    """
    return max(1, -(-users // max(1, concurrency)))


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.cassandra_ssl_cafile is None:
        return None
    context = ssl.create_default_context(cafile=str(settings.cassandra_ssl_cafile))
    return context


def connect(settings: Settings, *, timeout_s: float = 10.0) -> tuple[Cluster, Session]:
    """A driver session for ``settings`` (auth and TLS applied); raises StateStoreError if unreachable."""
    auth = None
    if settings.cassandra_username:
        password = settings.cassandra_password.get_secret_value() if settings.cassandra_password else ""
        auth = PlainTextAuthProvider(username=settings.cassandra_username, password=password)
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
        request_timeout=timeout_s,
    )
    cluster = Cluster(
        settings.cassandra_contact_points,
        port=settings.cassandra_port,
        protocol_version=5,
        auth_provider=auth,
        ssl_context=_ssl_context(settings),
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=timeout_s,
        # Reconnect quickly after an outage; the worker is waiting on us.
        reconnection_policy=ConstantReconnectionPolicy(delay=1.0, max_attempts=None),
    )
    try:
        return cluster, cluster.connect()
    except NoHostAvailable as exc:
        cluster.shutdown()
        # The exception text lists hosts and errors only, never credentials.
        raise StateStoreError(f"cannot reach Cassandra at {settings.cassandra_hosts}:{settings.cassandra_port}: {exc}") from exc


def consistency_level(name: str) -> int:
    """The driver's consistency level for a name such as ``LOCAL_QUORUM``; ConfigError if unknown."""
    try:
        return ConsistencyLevel.name_to_value[name.upper()]
    except KeyError:
        known = ", ".join(sorted(ConsistencyLevel.name_to_value))
        raise ConfigError(f"unknown Cassandra consistency level {name!r} (one of {known})") from None


def check_keyspace_name(name: str) -> str:
    if not _IDENTIFIER.match(name):
        raise ConfigError(f"invalid Cassandra keyspace name {name!r} (letters, digits, underscore; max 48)")
    return name


def migrate(session: Session, settings: Settings) -> None:
    """Create the keyspace and tables if missing (idempotent)."""
    ks = check_keyspace_name(settings.cassandra_keyspace)
    session.execute(f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {settings.cassandra_replication}")
    session.execute(
        f"""CREATE TABLE IF NOT EXISTS {ks}.windows (
              user_id text PRIMARY KEY,
              events blob,
              seq bigint,
              updated_at timestamp
           ) WITH compaction = {{'class': 'LeveledCompactionStrategy'}}
             AND comment = 'per-user rolling window, one capped value rewritten by its partition owner'"""
    )
    session.execute(
        f"""CREATE TABLE IF NOT EXISTS {ks}.user_state (
              user_id text PRIMARY KEY,
              model_version int,
              user_vector blob,
              recommendation blob,
              last_event_id text,
              updated_at timestamp
           ) WITH comment = 'latest user vector and recommendation per user'"""
    )
    session.execute(
        f"""CREATE TABLE IF NOT EXISTS {ks}.forgotten_users (
              user_hash text PRIMARY KEY,
              forgotten_at timestamp,
              deleted_us bigint,
              request_id text
           ) WITH comment = 'suppression list: sha256 of each forgotten user id, never the id itself'"""
    )


class _ChunkWaiter:
    """Completes one asyncio future when every request of a chunk has answered.

    The driver calls back on its I/O thread; waking the event loop once per
    chunk instead of once per request saves a thread hop per statement.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self._loop = loop
        self._left = count
        self._lock = threading.Lock()
        self.results: list[Any] = [None] * count
        self.error: BaseException | None = None
        self.future: asyncio.Future = loop.create_future()

    def callbacks(self, index: int) -> tuple[Callable[[Any], None], Callable[[BaseException], None]]:
        def ok(rows: Any) -> None:
            self.results[index] = rows
            self._done()

        def err(exc: BaseException) -> None:
            self.error = self.error or exc
            self._done()

        return ok, err

    def _done(self) -> None:
        with self._lock:
            self._left -= 1
            finished = self._left == 0
        if finished:
            self._loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


async def await_response(response_future: Any) -> Any:
    """Await one driver ResponseFuture from asyncio (ad-hoc requests; the store batches its own)."""
    waiter = _ChunkWaiter(asyncio.get_running_loop(), 1)
    response_future.add_callbacks(*waiter.callbacks(0))
    await waiter.future
    if waiter.error is not None:
        raise waiter.error
    return waiter.results[0]


def _mark(row: Any) -> ForgetMark:
    forgotten_at = int(row.forgotten_at.replace(tzinfo=timezone.utc).timestamp() * 1000) if row.forgotten_at else 0
    return ForgetMark(row.user_hash, forgotten_at, row.deleted_us or 0, row.request_id or "")


class CassandraStore:
    """:class:`~streamrec.stream.state.base.StateStore` on Cassandra, async with bounded concurrency."""

    def __init__(self, settings: Settings, cluster: Cluster, session: Session) -> None:
        self._settings = settings
        self._cluster = cluster
        self._session = session
        ks = check_keyspace_name(settings.cassandra_keyspace)
        self._read_cl = consistency_level(settings.cassandra_read_consistency)
        self._write_cl = consistency_level(settings.cassandra_write_consistency)

        def prepare(cql: str, level: int) -> PreparedStatement:
            statement = session.prepare(cql)
            statement.consistency_level = level
            return statement

        self._keyspace = ks
        self._write_cap = settings.cassandra_write_batch_kib * 1024  # 0 once Cassandra refused a batch as too large
        # Several users per request: one round trip and one driver request instead of one per
        # user (the driver's per-request Python cost dominated window reads of uncached users).
        self._select_windows = prepare(
            f"SELECT user_id, events, seq, WRITETIME(events) AS written_us FROM {ks}.windows WHERE user_id IN ?",
            self._read_cl,
        )
        self._insert_window = prepare(
            f"INSERT INTO {ks}.windows (user_id, events, seq, updated_at) VALUES (?, ?, ?, ?) USING TIMESTAMP ? AND TTL ?",
            self._write_cl,
        )
        self._insert_state = prepare(
            f"INSERT INTO {ks}.user_state (user_id, model_version, user_vector, recommendation, last_event_id, updated_at)"
            f" VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
            self._write_cl,
        )
        self._select_state = prepare(
            f"SELECT model_version, user_vector, recommendation, last_event_id, updated_at FROM {ks}.user_state WHERE user_id = ?",
            self._read_cl,
        )

        self._select_state_written = prepare(
            f"SELECT WRITETIME(recommendation) AS written_us FROM {ks}.user_state WHERE user_id = ?", self._read_cl
        )
        self._insert_mark = prepare(
            f"INSERT INTO {ks}.forgotten_users (user_hash, forgotten_at, deleted_us, request_id) VALUES (?, ?, ?, ?)",
            self._write_cl,
        )
        self._delete_window = prepare(f"DELETE FROM {ks}.windows USING TIMESTAMP ? WHERE user_id = ?", self._write_cl)
        self._delete_state = prepare(f"DELETE FROM {ks}.user_state USING TIMESTAMP ? WHERE user_id = ?", self._write_cl)
        self._select_mark = prepare(
            f"SELECT user_hash, forgotten_at, deleted_us, request_id FROM {ks}.forgotten_users WHERE user_hash = ?",
            self._read_cl,
        )
        self._select_marks = prepare(
            f"SELECT user_hash, forgotten_at, deleted_us, request_id FROM {ks}.forgotten_users", self._read_cl
        )

    @property
    def session(self) -> Session:
        """The driver session, for tables kept beside the windows (the online figures)."""
        return self._session

    @classmethod
    def open(cls, settings: Settings, *, create_schema: bool = True) -> "CassandraStore":
        """Connect, create the schema if asked, and prepare the statements."""
        cluster, session = connect(settings)
        try:
            if create_schema:
                migrate(session, settings)
            return cls(settings, cluster, session)
        except _TRANSIENT as exc:
            cluster.shutdown()
            raise StateStoreError(f"Cassandra schema set-up failed: {exc}") from exc

    async def _execute_all(self, requests: Sequence[tuple[Any, Sequence[Any] | None]]) -> list[Any]:
        """Run (statement, params) requests, at most ``cassandra_concurrency`` in flight; results in order."""
        loop = asyncio.get_running_loop()
        results: list[Any] = []
        chunk_size = self._settings.cassandra_concurrency
        for start in range(0, len(requests), chunk_size):
            chunk = requests[start : start + chunk_size]
            waiter = _ChunkWaiter(loop, len(chunk))
            try:
                for index, (statement, params) in enumerate(chunk):
                    self._session.execute_async(statement, params).add_callbacks(*waiter.callbacks(index))
            except _TRANSIENT as exc:
                raise StateStoreError(f"Cassandra request failed: {type(exc).__name__}: {exc}") from exc
            await waiter.future
            if waiter.error is not None:
                exc = waiter.error
                raise StateStoreError(f"Cassandra request failed: {type(exc).__name__}: {exc}") from exc
            results.extend(waiter.results)
        return results

    async def load_windows(self, user_ids: Sequence[str]) -> dict[str, StoredWindow]:
        requests = [(self._select_windows, (group,)) for group in self._read_groups(user_ids)]
        windows: dict[str, StoredWindow] = {}
        for result in await self._execute_all(requests):
            for row in result or ():
                try:
                    entries = tuple(decode_window(row.events))
                except WindowDecodeError as exc:
                    # Written by a newer (or older) worker in a format this one cannot read,
                    # e.g. mid-rollout: retried like an outage, never merged over or crashed on.
                    raise StateStoreError(f"window of user {row.user_id!r} cannot be read by this worker: {exc}") from exc
                windows[row.user_id] = StoredWindow(row.user_id, entries, row.seq or 0, row.written_us or 0)
        return windows

    def _read_groups(self, user_ids: Sequence[str]) -> list[list[str]]:
        """Users grouped by the replica that owns them, at most READ_GROUP per group.

        An ``IN`` over partitions on several nodes makes its coordinator fetch
        from the others; grouping by owner keeps each request on a node that
        holds every partition it asks for (on one node: one group).
        """
        groups: dict[object, list[str]] = {}
        for user_id in dict.fromkeys(user_ids):
            groups.setdefault(self._owner(user_id), []).append(user_id)
        return [users[i : i + READ_GROUP] for users in groups.values() for i in range(0, len(users), READ_GROUP)]

    @staticmethod
    def _window_params(w: StoredWindow, now_ms: int, ttl_s: int) -> tuple:
        written_us = w.written_us or now_ms * 1000  # a window never stored: the clock
        return (w.user_id, encode_window(w.entries), w.seq, now_ms, written_us, ttl_s)

    @staticmethod
    def _state_params(s: UserState, now_ms: int) -> tuple:
        written_us = s.written_us or now_ms * 1000
        return (s.user_id, s.model_version, s.user_vector, s.recommendation, s.last_event_id, s.updated_at_ms, written_us)

    async def save_windows(self, windows: Sequence[StoredWindow], ttl_s: int) -> None:
        now = int(time.time() * 1000)
        await self._execute_all([(self._insert_window, self._window_params(w, now, ttl_s)) for w in windows])

    async def save_user_states(self, states: Sequence[UserState]) -> None:
        now = int(time.time() * 1000)
        await self._execute_all([(self._insert_state, self._state_params(s, now)) for s in states])

    async def save(self, windows: Sequence[StoredWindow], states: Sequence[UserState], ttl_s: int) -> None:
        """Users' changed windows and new states, packed into unlogged batches by owning replica.

        A user's window and state always travel in the same request. When a
        save holds more users than ``cassandra_concurrency``, users owned by
        the same replica share a batch, as few per batch as keep the save
        within that many requests and up to ``cassandra_write_batch_kib`` of
        values (0: never packed; see :func:`writes_per_request`). Unlogged,
        so each partition is applied on its own; a failed request is retried
        whole with the same write timestamps, which makes the retry idempotent.
        """
        now = int(time.time() * 1000)
        changed = {w.user_id: w for w in windows}
        writes: list[_UserWrite] = []
        for state in states:
            statements = [(self._insert_state, self._state_params(state, now))]
            window = changed.pop(state.user_id, None)
            if window is not None:
                statements.insert(0, (self._insert_window, self._window_params(window, now, ttl_s)))
            writes.append(_UserWrite(state.user_id, statements))
        writes.extend(
            _UserWrite(w.user_id, [(self._insert_window, self._window_params(w, now, ttl_s))]) for w in changed.values()
        )
        try:
            await self._execute_all(self._write_requests(writes))
        except StateStoreError as exc:
            if not (self._write_cap and _batch_too_large(exc)):
                raise
            # The cluster's batch_size_fail_threshold is below the configured cap: retrying the same
            # batches would stall the worker for good, so fall back to one request per user from now
            # on. Same write timestamps, so what the refused call did write is rewritten idempotently.
            log.error("Cassandra refused a %d KiB write batch as too large (its batch_size_fail_threshold is lower);"
                      " writing one user per request from now on. Lower STREAMREC_CASSANDRA_WRITE_BATCH_KIB or raise"
                      " the threshold.", self._write_cap // 1024)
            self._write_cap = 0
            await self._execute_all(self._write_requests(writes))

    def _write_requests(self, writes: Sequence[_UserWrite]) -> list[tuple[Any, Sequence[Any] | None]]:
        cap = self._write_cap
        per_request = writes_per_request(len(writes), self._settings.cassandra_concurrency)
        if cap and per_request > 1:
            groups = pack_writes([(self._owner(w.user_id), w.size) for w in writes], cap, per_request)
        else:  # a small save: one user per request, all in flight at once (owners and sizes not needed)
            groups = [[i] for i in range(len(writes))]
        requests: list[tuple[Any, Sequence[Any] | None]] = []
        for group in groups:
            statements = [s for i in group for s in writes[i].statements]
            if len(statements) == 1:
                requests.append(statements[0])
                continue
            # The driver routes a batch by its first statement's key: a replica of every user in it.
            batch = BatchStatement(batch_type=BatchType.UNLOGGED, consistency_level=self._write_cl)
            for statement, params in statements:
                batch.add(statement, params)
            requests.append((batch, None))
        return requests

    def _owner(self, user_id: str) -> object:
        replicas = self._cluster.metadata.get_replicas(self._keyspace, user_id.encode())
        return replicas[0].host_id if replicas else None

    async def load_user_state(self, user_id: str) -> UserState | None:
        (result,) = await self._execute_all([(self._select_state, (user_id,))])
        if not result:
            return None
        row = result[0]
        updated = int(row.updated_at.timestamp() * 1000) if row.updated_at else 0
        return UserState(user_id, row.model_version, row.user_vector, row.recommendation, row.last_event_id, updated)

    async def forget_user(self, user_id: str, mark: ForgetMark) -> ForgetResult:
        windows, (state_rows,) = await self.load_windows([user_id]), await self._execute_all(
            [(self._select_state_written, (user_id,))]
        )
        window = windows.get(user_id)
        state_written = state_rows[0].written_us if state_rows else None
        deleted_us = mark.deleted_us
        if window is not None:
            deleted_us = max(deleted_us, window.written_us + 1)
        if state_written is not None:
            deleted_us = max(deleted_us, state_written + 1)
        await self._execute_all([(self._delete_window, (deleted_us, user_id)), (self._delete_state, (deleted_us, user_id))])
        # The mark last: a stored mark says its request was carried out (a replayed request checks it).
        await self._execute_all([(self._insert_mark, (mark.user_hash, mark.forgotten_at_ms, deleted_us, mark.request_id))])
        return ForgetResult(len(window.entries) if window else 0, state_written is not None, deleted_us)

    async def forget_mark(self, user_hash: str) -> ForgetMark | None:
        (rows,) = await self._execute_all([(self._select_mark, (user_hash,))])
        return _mark(rows[0]) if rows else None

    async def load_forgotten(self) -> list[ForgetMark]:
        def read_all() -> list[Any]:
            return list(self._session.execute(self._select_marks))  # iterating pages through the whole table

        try:
            rows = await asyncio.get_running_loop().run_in_executor(None, read_all)
        except _TRANSIENT as exc:
            raise StateStoreError(f"cannot read the forgotten users: {type(exc).__name__}: {exc}") from exc
        return [_mark(r) for r in rows]

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._cluster.shutdown)
