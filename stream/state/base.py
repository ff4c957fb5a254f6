"""The state store contract: windows and each user's latest serving state.

Two implementations share one contract test suite (tests/unit/test_store_contract.py
and tests/integration/test_cassandra_store.py): :class:`InMemoryStore` for
unit tests and :class:`CassandraStore`, which is what runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from streamrec.stream.window import WindowEntry


@dataclass(frozen=True, slots=True)
class StoredWindow:
    """A user's window as stored, with ``seq``: how many distinct events were ever merged.

    ``seq`` only grows, so it orders two writes of the same user's window:
    the Cassandra store writes with ``USING TIMESTAMP seq`` and a stale
    writer (a worker that lost the partition mid-batch) can never overwrite
    a newer window.
    """

    user_id: str
    entries: tuple[WindowEntry, ...] = ()
    seq: int = 0


@dataclass(frozen=True, slots=True)
class UserState:
    """The latest serving result for a user (what `streamrec inspect user` shows)."""

    user_id: str
    model_version: int
    user_vector: bytes  # float32 little-endian
    recommendation: bytes  # the recommendation message as emitted (JSON)
    last_event_id: str
    updated_at_ms: int = field(default=0)


class WindowStore(Protocol):
    """Where windows and user states live. All methods may raise StateStoreError (callers retry)."""

    async def load_windows(self, user_ids: Sequence[str]) -> dict[str, StoredWindow]:
        """The stored window of each user; users without one are absent."""
        ...

    async def save_windows(self, windows: Sequence[StoredWindow], ttl_s: int) -> None:
        """Durably write the windows (each replaces the user's previous one)."""
        ...

    async def save_user_states(self, states: Sequence[UserState]) -> None:
        """Durably write the latest serving state of each user."""
        ...

    async def save(self, windows: Sequence[StoredWindow], states: Sequence[UserState], ttl_s: int) -> None:
        """Durably write a batch's changed windows and new user states (one request per user where possible)."""
        ...

    async def load_user_state(self, user_id: str) -> UserState | None:
        ...

    async def close(self) -> None:
        ...
