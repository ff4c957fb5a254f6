"""In-memory twin of the Cassandra store, for unit tests of pure logic."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Generic, Sequence, TypeVar

from streamrec.errors import StateStoreError
from streamrec.stream.state.base import ForgetMark, ForgetResult, StoredWindow, UserState

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class _Cell(Generic[V]):
    """A stored value as Cassandra keeps it: its write timestamp outlives expiry and deletion."""

    value: V | None  # None: deleted
    written_us: int
    expires_at_s: float | None = None

    def live(self, now_s: float) -> V | None:
        if self.expires_at_s is not None and now_s >= self.expires_at_s:
            return None
        return self.value


class InMemoryStore:
    """Dict-backed :class:`~streamrec.stream.state.base.StateStore` that models what Cassandra does.

    What matters for correctness is modelled: last write wins by write
    timestamp (a write whose timestamp is not greater than the stored one is
    silently ignored, even after that cell expired or was deleted, as in
    Cassandra), TTLs expire windows, and :meth:`delete_user` is an operator's
    ``DELETE`` at the wall clock. ``fail_next`` makes the next N calls raise
    StateStoreError, to exercise the worker's retry path without a real outage.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._windows: dict[str, _Cell[StoredWindow]] = {}
        self._states: dict[str, _Cell[UserState]] = {}
        self._forgotten: dict[str, ForgetMark] = {}
        self.fail_next = 0
        self.calls = 0

    # -- views for tests ----------------------------------------------------
    @property
    def windows(self) -> dict[str, StoredWindow]:
        """The live (not expired, not deleted) windows."""
        now = self._clock()
        return {u: w for u, c in self._windows.items() if (w := c.live(now)) is not None}

    @property
    def states(self) -> dict[str, UserState]:
        now = self._clock()
        return {u: s for u, s_cell in self._states.items() if (s := s_cell.live(now)) is not None}

    def delete_user(self, user_id: str, at_us: int | None = None) -> None:
        """An operator's ``DELETE`` of the user's rows (timestamp: the wall clock)."""
        at = self._now_us() if at_us is None else at_us
        for cells in (self._windows, self._states):
            cell = cells.get(user_id)
            if cell is None or at > cell.written_us:
                cells[user_id] = _Cell(None, at)

    # -- the store contract ---------------------------------------------------
    def _now_us(self) -> int:
        return int(self._clock() * 1_000_000)

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            raise StateStoreError("injected store failure")

    def _put(self, cells: dict[str, _Cell[V]], user_id: str, value: V, written_us: int, ttl_s: int | None) -> None:
        ts = written_us or self._now_us()
        current = cells.get(user_id)
        if current is not None and ts <= current.written_us:
            # Cassandra hides an older write and says nothing. (On a tie it keeps the greater
            # value, and a delete wins; the worker's writes never tie: next_write_us.)
            return
        expires = self._clock() + ttl_s if ttl_s else None
        cells[user_id] = _Cell(value, ts, expires)

    def _put_windows(self, windows: Sequence[StoredWindow], ttl_s: int) -> None:
        for window in windows:
            self._put(self._windows, window.user_id, window, window.written_us, ttl_s)

    def _put_states(self, states: Sequence[UserState]) -> None:
        for state in states:
            self._put(self._states, state.user_id, state, state.written_us, None)

    async def load_windows(self, user_ids: Sequence[str]) -> dict[str, StoredWindow]:
        self._maybe_fail()
        now = self._clock()
        loaded = {}
        for user_id in user_ids:
            cell = self._windows.get(user_id)
            window = cell.live(now) if cell else None
            if cell is not None and window is not None:
                loaded[user_id] = replace(window, written_us=cell.written_us)
        return loaded

    async def save_windows(self, windows: Sequence[StoredWindow], ttl_s: int) -> None:
        self._maybe_fail()
        self._put_windows(windows, ttl_s)

    async def save_user_states(self, states: Sequence[UserState]) -> None:
        self._maybe_fail()
        self._put_states(states)

    async def save(self, windows: Sequence[StoredWindow], states: Sequence[UserState], ttl_s: int) -> None:
        self._maybe_fail()
        self._put_windows(windows, ttl_s)
        self._put_states(states)

    async def load_user_state(self, user_id: str) -> UserState | None:
        self._maybe_fail()
        cell = self._states.get(user_id)
        return cell.live(self._clock()) if cell else None

    async def forget_user(self, user_id: str, mark: ForgetMark) -> ForgetResult:
        self._maybe_fail()
        now = self._clock()
        # As in Cassandra, only a live row's write timestamp can be read back.
        window_cell, state_cell = self._windows.get(user_id), self._states.get(user_id)
        window = window_cell.live(now) if window_cell else None
        state = state_cell.live(now) if state_cell else None
        deleted_us = mark.deleted_us
        if window is not None and window_cell is not None:
            deleted_us = max(deleted_us, window_cell.written_us + 1)
        if state is not None and state_cell is not None:
            deleted_us = max(deleted_us, state_cell.written_us + 1)
        self._forgotten[mark.user_hash] = replace(mark, deleted_us=deleted_us)
        self.delete_user(user_id, deleted_us)
        return ForgetResult(len(window.entries) if window else 0, state is not None, deleted_us)

    async def forget_mark(self, user_hash: str) -> ForgetMark | None:
        self._maybe_fail()
        return self._forgotten.get(user_hash)

    async def load_forgotten(self) -> list[ForgetMark]:
        self._maybe_fail()
        return list(self._forgotten.values())

    async def close(self) -> None:
        return None
