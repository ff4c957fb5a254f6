"""In-memory twin of the Cassandra store, for unit tests of pure logic."""

from __future__ import annotations

from typing import Sequence

from streamrec.errors import StateStoreError
from streamrec.stream.state.base import StoredWindow, UserState


class InMemoryStore:
    """Dict-backed :class:`~streamrec.stream.state.base.WindowStore` with the same write-ordering rule.

    ``fail_next`` makes the next N calls raise StateStoreError, to exercise
    the worker's retry path without a real outage.
    """

    def __init__(self) -> None:
        self.windows: dict[str, StoredWindow] = {}
        self.states: dict[str, UserState] = {}
        self.fail_next = 0
        self.calls = 0

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            raise StateStoreError("injected store failure")

    async def load_windows(self, user_ids: Sequence[str]) -> dict[str, StoredWindow]:
        self._maybe_fail()
        return {u: self.windows[u] for u in user_ids if u in self.windows}

    async def save_windows(self, windows: Sequence[StoredWindow], ttl_s: int) -> None:
        self._maybe_fail()
        self._put_windows(windows)

    def _put_windows(self, windows: Sequence[StoredWindow]) -> None:
        for window in windows:
            current = self.windows.get(window.user_id)
            # Same rule as Cassandra's last-write-wins on USING TIMESTAMP seq
            # (ties: Cassandra keeps the greater value; here the newer call).
            if current is None or window.seq >= current.seq:
                self.windows[window.user_id] = window

    async def save_user_states(self, states: Sequence[UserState]) -> None:
        self._maybe_fail()
        for state in states:
            self.states[state.user_id] = state

    async def save(self, windows: Sequence[StoredWindow], states: Sequence[UserState], ttl_s: int) -> None:
        self._maybe_fail()
        self._put_windows(windows)
        for state in states:
            self.states[state.user_id] = state

    async def load_user_state(self, user_id: str) -> UserState | None:
        self._maybe_fail()
        return self.states.get(user_id)

    async def close(self) -> None:
        return None
