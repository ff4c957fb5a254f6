"""Which users were forgotten, as every reader of the events topic must know it.

A forgotten user's past events stay in the events topic until its retention
removes them; the worker (replays, late records) and the retrainer (every
round reads the topic again) recognise them here and leave them out. The
list holds a one-way hash of each user id, never the id.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

from streamrec.stream.state.base import ForgetMark


def forgotten_action(mark: ForgetMark | None, ts_ms: int, policy: str) -> str | None:
    """What becomes of an event stamped ``ts_ms`` of a user with ``mark``: None (kept), or "dropped"/"refused".

    Events stamped at or before the request are the forgotten past (a replay, or a
    record still on its way): dropped on purpose, since a dead letter would keep a copy
    of what the user asked to remove. Later ones are refused under the ``refuse`` policy.
    Serving and retraining both apply this one rule.
    """
    if mark is None:
        return None
    if ts_ms <= mark.forgotten_at_ms:
        return "dropped"
    return "refused" if policy == "refuse" else None


def user_hash(user_id: str) -> str:
    """The key of a user in the suppression list: SHA-256 of the id (UTF-8), hex."""
    return hashlib.sha256(user_id.encode()).hexdigest()


class ForgottenUsers:
    """The suppression list in memory: user hash → :class:`ForgetMark`."""

    def __init__(self, marks: Iterable[ForgetMark] = ()) -> None:
        self._marks: dict[str, ForgetMark] = {}
        self.replace_all(marks)

    def replace_all(self, marks: Iterable[ForgetMark]) -> None:
        """Take the list as the store has it (a worker reloads it on every partition assignment)."""
        loaded = {m.user_hash: m for m in marks}
        # A mark this process added may not be stored yet (its request is still being handled).
        for key, mark in self._marks.items():
            if key not in loaded or loaded[key].deleted_us < mark.deleted_us:
                loaded[key] = mark
        self._marks = loaded

    def add(self, mark: ForgetMark) -> None:
        """Remember ``mark`` (replacing an earlier one: a user forgotten twice keeps the later request)."""
        self._marks[mark.user_hash] = mark

    def get(self, user_id: str) -> ForgetMark | None:
        """The user's mark, or None; hashes only while the list is not empty (the common case costs nothing)."""
        if not self._marks:
            return None
        return self._marks.get(user_hash(user_id))

    def __len__(self) -> int:
        return len(self._marks)
