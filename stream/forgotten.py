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

    def is_past(self, user_id: str, ts_ms: int) -> bool:
        """True when an event of ``user_id`` stamped ``ts_ms`` belongs to a forgotten past."""
        mark = self.get(user_id)
        return mark is not None and ts_ms <= mark.forgotten_at_ms

    def __len__(self) -> int:
        return len(self._marks)
