"""The per-user rolling window as pure logic: merge, bound and (de)serialise.

The Cassandra store and the worker call these functions; nothing here does
I/O. A window is a list of :class:`WindowEntry` in ascending ``(ts_ms,
event_id)`` order with unique ``event_id`` s, holding at most ``max_events``
entries, none older than the newest entry's ``ts_ms`` minus ``max_age_ms``.

Age is measured against event time, not the wall clock, so that a merge
depends only on its inputs: replaying events after a crash yields the same
window (``merge(merge(w, x), x) == merge(w, x)``). Readers that also want to
hide windows of users idle for longer than the age limit apply
:func:`trim_by_age` with the current time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson

from streamrec.errors import StreamrecError
from streamrec.models.features import EventContext, UserSequence, pick_context

logger = logging.getLogger(__name__)

WINDOW_FORMAT_VERSION = 1


class WindowDecodeError(StreamrecError, ValueError):
    """Stored window bytes are not in a known format."""


@dataclass(frozen=True, slots=True)
class WindowEntry:
    """One event as kept in a user's window.

    ``context``: the event's context values for the keys the served model
    reads (normalised by :func:`~streamrec.models.features.pick_context`),
    ``None`` when it has none or no served model reads any. Read-only.
    """

    event_id: str
    item_id: str
    event_type: str
    ts_ms: int
    context: EventContext | None = None


def window_context(raw: object, keys: Sequence[str]) -> dict[str, str] | None:
    """What a window entry keeps of an event's ``context``: ``keys`` only, values normalised and cut; None if none.

    Never raises: a value that is not a string is stringified (see
    :func:`~streamrec.models.features.context_value`), anything that is not
    an object is no context.
    """
    if not keys:
        return None
    return pick_context(raw, keys)


@dataclass(frozen=True, slots=True)
class MergeStats:
    """What a merge did.

    ``added``: new entries now in the window; ``duplicates``: new entries whose
    ``event_id`` was already in the window or earlier in the batch;
    ``evicted``: entries of the current window pushed out (cap or age);
    ``dropped``: new, unique entries that did not make it in (older than the
    window allows).
    """

    added: int = 0
    duplicates: int = 0
    evicted: int = 0
    dropped: int = 0

    @property
    def changed(self) -> bool:
        """Whether the window differs from the current one (if not, skip the write)."""
        return self.added > 0 or self.evicted > 0


def _order(entry: WindowEntry) -> tuple[int, str]:
    return (entry.ts_ms, entry.event_id)


def merge_window(
    current: Sequence[WindowEntry],
    new: Iterable[WindowEntry],
    *,
    max_events: int,
    max_age_ms: int,
) -> tuple[list[WindowEntry], MergeStats]:
    """Merge ``new`` entries into the ``current`` window and bound the result.

    ``current`` must be a window produced by this function (or empty). On a
    repeated ``event_id`` the entry already in the window wins, then the first
    one in ``new``. Deterministic and idempotent; see the module docstring.
    """
    if max_events < 1:
        raise ValueError(f"max_events must be >= 1, got {max_events}")
    if max_age_ms < 0:
        raise ValueError(f"max_age_ms must be >= 0, got {max_age_ms}")

    seen = {entry.event_id for entry in current}
    fresh: list[WindowEntry] = []
    duplicates = 0
    for entry in new:
        if entry.event_id in seen:
            duplicates += 1
            continue
        seen.add(entry.event_id)
        fresh.append(entry)
    if not fresh and len(current) <= max_events:
        # Pure replay: nothing can change (current is already bounded).
        return list(current), MergeStats(duplicates=duplicates)

    fresh.sort(key=_order)
    # Common case: events arrive in time order after the window's tail, so the
    # concatenation is already sorted and no full sort is needed.
    if current and fresh and _order(fresh[0]) < _order(current[-1]):
        merged = sorted([*current, *fresh], key=_order)
    else:
        merged = [*current, *fresh]

    if len(merged) > max_events:
        merged = merged[-max_events:]
    if merged:
        cutoff = merged[-1].ts_ms - max_age_ms
        if merged[0].ts_ms < cutoff:
            first = _first_at_or_after(merged, cutoff)
            merged = merged[first:]

    fresh_ids = {entry.event_id for entry in fresh}
    added = sum(1 for entry in merged if entry.event_id in fresh_ids)
    kept_current = len(merged) - added
    stats = MergeStats(
        added=added,
        duplicates=duplicates,
        evicted=len(current) - kept_current,
        dropped=len(fresh) - added,
    )
    return merged, stats


def _first_at_or_after(window: Sequence[WindowEntry], ts_ms: int) -> int:
    lo, hi = 0, len(window)
    while lo < hi:
        mid = (lo + hi) // 2
        if window[mid].ts_ms < ts_ms:
            lo = mid + 1
        else:
            hi = mid
    return lo


def trim_by_age(window: Sequence[WindowEntry], *, now_ms: int, max_age_ms: int) -> list[WindowEntry]:
    """The entries not older than ``now_ms - max_age_ms`` (read-side expiry by wall clock)."""
    return list(window[_first_at_or_after(window, now_ms - max_age_ms) :])


def encode_window(window: Sequence[WindowEntry]) -> bytes:
    """Compact storage form: ``[1, [event_id, item_id, event_type, ts_ms(, context)], ...]`` as orjson bytes.

    ``context`` (an object of the kept keys) is written only for entries that
    have one, so a window without context is byte for byte what it was before
    the context view existed, and a window grows only by the configured keys.
    """
    rows: list[object] = [WINDOW_FORMAT_VERSION]
    rows.extend(
        [e.event_id, e.item_id, e.event_type, e.ts_ms] if e.context is None
        else [e.event_id, e.item_id, e.event_type, e.ts_ms, e.context]
        for e in window
    )
    return orjson.dumps(rows)


def decode_window(data: bytes | bytearray | memoryview | None) -> list[WindowEntry]:
    """Inverse of :func:`encode_window`; ``None`` or empty bytes is an empty window."""
    if not data:
        return []
    try:
        rows = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise WindowDecodeError(f"stored window is not JSON: {exc}") from exc
    if type(rows) is not list or not rows or rows[0] != WINDOW_FORMAT_VERSION:
        raise WindowDecodeError("stored window has an unknown format version")
    window = []
    for row in rows[1:]:
        if type(row) is not list or not 4 <= len(row) <= 5 or type(row[3]) is not int:
            raise WindowDecodeError(f"stored window row is malformed: {row!r:.200}")
        if len(row) == 5 and type(row[4]) is not dict:
            raise WindowDecodeError(f"stored window row has a malformed context: {row!r:.200}")
        window.append(_entry_from_row(row))
    return window


# A frozen dataclass's __init__ goes through object.__setattr__ once per field;
# a cache miss decodes a whole window (~50 entries), so fill the slots through
# their descriptors instead, which halves the decode time.
_new_object = object.__new__
_set_event_id = WindowEntry.event_id.__set__  # type: ignore[attr-defined]
_set_item_id = WindowEntry.item_id.__set__  # type: ignore[attr-defined]
_set_event_type = WindowEntry.event_type.__set__  # type: ignore[attr-defined]
_set_ts_ms = WindowEntry.ts_ms.__set__  # type: ignore[attr-defined]
_set_context = WindowEntry.context.__set__  # type: ignore[attr-defined]


def _entry_from_row(row: list) -> WindowEntry:
    entry = _new_object(WindowEntry)
    _set_event_id(entry, row[0])
    _set_item_id(entry, row[1])
    _set_event_type(entry, row[2])
    _set_ts_ms(entry, row[3])
    _set_context(entry, row[4] if len(row) == 5 else None)
    return entry


def user_sequence(entries: Sequence[WindowEntry]) -> UserSequence:
    """A window's entries as the model's input (with their contexts when any entry has one)."""
    contexts = [e.context for e in entries]
    return UserSequence(
        item_ids=[e.item_id for e in entries],
        event_types=[e.event_type for e in entries],
        timestamps_ms=[e.ts_ms for e in entries],
        contexts=contexts if any(c is not None for c in contexts) else None,
    )
