"""The state store contract: windows and each user's latest serving state.

Two implementations share one contract test suite (``tests/store_contract.py``,
run by ``tests/unit/stream/test_store_memory.py`` and
``tests/integration/test_store_cassandra.py``): :class:`InMemoryStore` for
unit tests and :class:`CassandraStore`, which is what runs.

Write timestamps
----------------
Cassandra keeps the write timestamp of a cell after it expired (TTL) or was
deleted, and silently hides any later write that carries a smaller
``USING TIMESTAMP``. So every write of a user's window carries
:func:`next_write_us`: the wall clock in microseconds, but never less than
one past the ``WRITETIME`` of the copy it replaces; the user's state is
written with it, at the same timestamp. Timestamps then only grow per user
across expiry, an operator's ``DELETE`` and worker restarts, and a new owner
whose clock lags the previous owner's still writes after it. What an expired
or deleted cell's timestamp was cannot be read back, so there the wall clock
is what counts: the workers' clocks and the clock that stamped the ``DELETE``
must agree to well within the time between the delete and the user's return
(NTP does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from streamrec.stream.window import WindowEntry


@dataclass(frozen=True, slots=True)
class StoredWindow:
    """A user's window as stored.

    ``seq`` counts the distinct events ever merged into this window since it
    was (re)started empty; ``written_us`` is the write timestamp (epoch
    microseconds) of the stored copy, 0 when there is none. The store writes
    a window with ``USING TIMESTAMP written_us``; see :func:`next_write_us`.
    """

    user_id: str
    entries: tuple[WindowEntry, ...] = ()
    seq: int = 0
    written_us: int = 0


@dataclass(frozen=True, slots=True)
class UserState:
    """The latest serving result for a user (what `streamrec inspect user` shows)."""

    user_id: str
    model_version: int
    user_vector: bytes  # float32 little-endian
    recommendation: bytes  # the recommendation message as emitted (JSON)
    last_event_id: str
    updated_at_ms: int = field(default=0)
    written_us: int = 0  # write timestamp (epoch µs); 0 = let the store use its clock


@dataclass(frozen=True, slots=True)
class ForgetMark:
    """One entry of the suppression list kept for a forgotten user.

    It holds no id, only a one-way hash of it (:func:`streamrec.stream.forgotten.user_hash`):
    enough for the workers and the retrainer to recognise the user's past
    events, which the events topic still holds, and keep them out.
    """

    user_hash: str
    forgotten_at_ms: int  # events stamped at or before this are the forgotten past
    deleted_us: int  # write timestamp of the delete; the user's next window is written after it
    request_id: str


@dataclass(frozen=True, slots=True)
class ForgetResult:
    """What :meth:`StateStore.forget_user` removed, and the write timestamp it deleted at."""

    window_events: int
    had_state: bool
    deleted_us: int


def next_write_us(previous_us: int, now_us: int) -> int:
    """The write timestamp for a user's next write: the clock, but always after ``previous_us``."""
    return max(now_us, previous_us + 1)


class StateStore(Protocol):
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

    async def forget_user(self, user_id: str, mark: ForgetMark) -> ForgetResult:
        """Delete the user's window and state (with it the latest recommendation), then record ``mark``.

        The delete carries a write timestamp past ``mark.deleted_us`` and past
        the stored rows' own, so no earlier write can land after it; the
        returned ``deleted_us`` is that timestamp. Idempotent.
        """
        ...

    async def forget_mark(self, user_hash: str) -> ForgetMark | None:
        """The stored mark of one user, if they were forgotten (its request was then carried out)."""
        ...

    async def load_forgotten(self) -> list[ForgetMark]:
        """Every forgotten user's mark (the suppression list)."""
        ...

    async def close(self) -> None:
        ...
