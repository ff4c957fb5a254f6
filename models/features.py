"""Featurisation shared by training and serving: raw events -> model input tensors.

:func:`featurize` is the only place where item ids become indices, event types
become ids and timestamps become time-gap buckets. Training batches, offline
evaluation, the ONNX parity check and the ONNX Runtime session all call it, so
there is no train/serve skew to chase.
"""

from __future__ import annotations

import functools

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import orjson

from streamrec.models.config import (
    CONTEXT_FIRST_VALUE,
    CONTEXT_MISSING,
    CONTEXT_OOV,
    FIRST_REAL_INDEX,
    OOV_INDEX,
    OOV_TOKEN,
    PAD_INDEX,
    PAD_TOKEN,
    EncoderConfig,
)

# Time-gap bucket 1 marks the oldest event of a window: its predecessor is
# unknown at serving time (evicted from the window), so training must not see it either.
FIRST_EVENT_BUCKET = 1

# A context value is kept as a short string: longer ones are cut (a producer sending a
# page of text as a "device" must not grow windows or the vocabulary), so training and
# serving map the same raw value to the same string.
MAX_CONTEXT_VALUE_CHARS = 64
# Values of one key kept in its vocabulary (most frequent first); rarer ones are OOV.
MAX_CONTEXT_VALUES = 1000

EventContext = Mapping[str, str]


def context_value(raw: Any) -> str | None:
    """One raw context value as its categorical string (training and serving both use this).

    Strings are kept (cut to :data:`MAX_CONTEXT_VALUE_CHARS`); ``true``/``false``
    and numbers become their JSON text (``1`` and ``"1"`` are the same value);
    objects and arrays their compact JSON, cut; ``None`` is no value (the
    key's missing bucket). Never raises.
    """
    if raw is None:
        return None
    if type(raw) is str:
        return raw[:MAX_CONTEXT_VALUE_CHARS]
    try:
        text = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, ValueError):
        text = type(raw).__name__  # not JSON (only from in-process callers): one bucket per type
    return text[:MAX_CONTEXT_VALUE_CHARS]


def pick_context(raw: Any, keys: Sequence[str] | None = None) -> dict[str, str] | None:
    """The event's ``context`` object reduced to ``keys`` (all keys when None), values normalised; None if nothing is left.

    Anything that is not an object is no context. The worker keeps only the
    live model's keys in a window, so a window grows only for configured keys.
    """
    if type(raw) is not dict or not raw:
        return None
    out: dict[str, str] = {}
    for key in (raw if keys is None else keys):
        if type(key) is not str:
            continue
        value = context_value(raw.get(key))
        if value is not None:
            out[key] = value
    return out or None


@dataclass(frozen=True)
class UserSequence:
    """One user's recent events, oldest to newest, as raw strings (the serving contract).

    ``contexts``: each event's context (key -> normalised value, see
    :func:`pick_context`; ``None`` for an event without one), or ``None``
    when no event has any: only a model with context keys reads it.
    """

    item_ids: Sequence[str]
    event_types: Sequence[str]
    timestamps_ms: Sequence[int]
    contexts: Sequence[EventContext | None] | None = None

    def __post_init__(self) -> None:
        if not (len(self.item_ids) == len(self.event_types) == len(self.timestamps_ms)):
            raise ValueError(
                "UserSequence fields differ in length: "
                f"{len(self.item_ids)} items, {len(self.event_types)} event types, "
                f"{len(self.timestamps_ms)} timestamps"
            )
        if self.contexts is not None and len(self.contexts) != len(self.item_ids):
            raise ValueError(f"UserSequence has {len(self.item_ids)} events but {len(self.contexts)} contexts")

    def __len__(self) -> int:
        return len(self.item_ids)


@dataclass(frozen=True)
class FeatureBatch:
    """Left-padded int64 arrays of shape ``(batch, seq)``; the last column is the newest event."""

    item_idx: np.ndarray
    event_type: np.ndarray
    time_bucket: np.ndarray
    attention_mask: np.ndarray
    # ``(batch, seq, n_keys)`` global context rows (0 = padding); None for a model without context keys.
    context: np.ndarray | None = None

    @property
    def batch_size(self) -> int:
        return int(self.item_idx.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.item_idx.shape[1])


class ItemVocab:
    """Index <-> item id. Index 0 is padding, 1 the out-of-vocabulary bucket."""

    def __init__(self, item_ids: Sequence[str]) -> None:
        ids = [str(i) for i in item_ids]
        if ids[:FIRST_REAL_INDEX] != [PAD_TOKEN, OOV_TOKEN]:
            ids = [PAD_TOKEN, OOV_TOKEN] + ids
        self._ids: list[str] = ids
        self._index: dict[str, int] = {item: i for i, item in enumerate(ids)}
        if len(self._index) != len(ids):
            raise ValueError("item vocabulary contains duplicate ids")

    @classmethod
    def build(cls, item_ids: Iterable[str]) -> "ItemVocab":
        """Vocabulary of the given items, most frequent first (ties by first appearance)."""
        counts = Counter(str(i) for i in item_ids)
        ordered = sorted(counts, key=lambda item: -counts[item])  # sorted() is stable
        return cls(ordered)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index and self._index[item_id] >= FIRST_REAL_INDEX  # type: ignore[index]

    def index(self, item_id: str) -> int:
        """Index of ``item_id``; unknown ids map to the OOV bucket."""
        return self._index.get(item_id, OOV_INDEX)

    def lookup(self, item_ids: Sequence[str], extra: Mapping[str, int] | None = None) -> np.ndarray:
        """Indices of ``item_ids``; unknown ids map to OOV, or to ``len(self) + extra[id]`` when ``extra`` holds them."""
        get = self._index.get
        if not extra:
            return np.fromiter((get(i, OOV_INDEX) for i in item_ids), dtype=np.int64, count=len(item_ids))
        indices = np.fromiter((get(i, -1) for i in item_ids), dtype=np.int64, count=len(item_ids))
        for position in np.flatnonzero(indices < 0).tolist():  # only the unknown ids: no per-call copy of ``extra``
            row = extra.get(item_ids[position])
            indices[position] = OOV_INDEX if row is None else len(self._ids) + row
        return indices

    def item_id(self, index: int) -> str:
        return self._ids[index]

    @property
    def ids(self) -> list[str]:
        """All ids by index, including the two reserved tokens."""
        return list(self._ids)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self._ids))

    @classmethod
    def load(cls, path: Path) -> "ItemVocab":
        return cls(json.loads(path.read_text()))


def event_type_ids(event_types: Sequence[str], known: Sequence[str]) -> np.ndarray:
    """Event-type names -> ids (0 padding, 1 unknown type, 2.. the configured types)."""
    table = {name: FIRST_REAL_INDEX + i for i, name in enumerate(known)}
    return np.fromiter(
        (table.get(t, OOV_INDEX) for t in event_types), dtype=np.int64, count=len(event_types)
    )


def build_context_values(
    contexts: Iterable[EventContext | None], keys: Sequence[str], *, max_values: int = MAX_CONTEXT_VALUES
) -> tuple[tuple[str, ...], ...]:
    """Each key's vocabulary from training events' contexts: most frequent first (ties by first appearance), at most ``max_values``."""
    counts = [Counter() for _ in keys]  # type: list[Counter[str]]
    for context in contexts:
        if not context:
            continue
        for key, counter in zip(keys, counts):
            value = context.get(key)
            if value is not None:
                counter[value] += 1
    return tuple(tuple(sorted(c, key=lambda v: -c[v])[:max_values]) for c in counts)  # sorted() is stable


def context_rows(contexts: Sequence[EventContext | None], config: EncoderConfig, count: int) -> np.ndarray:
    """``(count, n_keys)`` global context-table rows of ``count`` events (see ``EncoderConfig.context_offsets``).

    Per key: a value of its training vocabulary gets its row, any other value
    the key's OOV row, an event without the key the key's missing row.
    """
    keys = config.context_keys
    out = np.empty((count, len(keys)), dtype=np.int64)
    tables = _context_tables(keys, config.context_offsets, config.context_values or ())
    for j, (key, offset) in enumerate(zip(keys, config.context_offsets)):
        oov, missing = offset + CONTEXT_OOV, offset + CONTEXT_MISSING
        get = tables[j].get
        try:
            out[:, j] = [get((c or _NO_CONTEXT).get(key), oov) for c in contexts]
        except TypeError:  # an unhashable value (not normalised by pick_context): OOV, the slow way
            out[:, j] = [
                missing if c is None or (v := c.get(key)) is None else get(v, oov) if type(v) is str else oov
                for c in contexts
            ]
    return out


_NO_CONTEXT: dict[str, str] = {}


@functools.lru_cache(maxsize=8)
def _context_tables(keys: tuple[str, ...], offsets: tuple[int, ...],
                    values: tuple[tuple[str, ...], ...]) -> tuple[dict[str | None, int], ...]:
    """Per key, value -> global row, with ``None`` -> the key's missing row.

    Derived from the model's vocabulary alone, so built once per served version
    instead of once per batch (a key holds up to MAX_CONTEXT_VALUES values).
    """
    tables = []
    for j, offset in enumerate(offsets):
        table: dict[str | None, int] = {v: offset + CONTEXT_FIRST_VALUE + i for i, v in enumerate(values[j] if values else ())}
        table[None] = offset + CONTEXT_MISSING  # no key (or no context): one lookup, no branch per event
        tables.append(table)
    return tuple(tables)


def time_gap_buckets(timestamps_ms: Sequence[int] | np.ndarray, n_buckets: int) -> np.ndarray:
    """Bucket each event's gap to the previous one: ``2 + floor(log2(1 + gap_seconds))``.

    The first event gets :data:`FIRST_EVENT_BUCKET`; out-of-order events count
    as gap 0; very long gaps share the last bucket.
    """
    ts = np.asarray(timestamps_ms, dtype=np.int64)
    first = np.zeros(ts.shape[0], dtype=bool)
    first[:1] = True
    return _gap_buckets(ts, first, n_buckets)


def _gap_buckets(ts: np.ndarray, first: np.ndarray, n_buckets: int) -> np.ndarray:
    """:func:`time_gap_buckets` over several sequences laid end to end; ``first`` marks where each starts."""
    gaps_s = np.maximum(np.diff(ts, prepend=ts[:1]), 0).astype(np.float64) / 1000.0
    buckets = FIRST_REAL_INDEX + np.minimum(np.floor(np.log2(1.0 + gaps_s)).astype(np.int64), n_buckets - 1 - FIRST_REAL_INDEX)
    buckets[first] = FIRST_EVENT_BUCKET
    return buckets


def featurize(
    sequences: Sequence[UserSequence],
    vocab: ItemVocab,
    config: EncoderConfig,
    *,
    pad_to: int | None = None,
    extra_items: Mapping[str, int] | None = None,
) -> FeatureBatch:
    """Turn raw user sequences into one left-padded model batch.

    Each sequence keeps its newest ``config.max_len`` events; the batch is
    padded to the longest kept sequence (or ``pad_to``). Empty sequences
    become a single OOV event so the encoder always has a position to read.
    ``extra_items``: items after the vocabulary (see :meth:`ItemVocab.lookup`),
    for a served graph that reads new items' vectors.
    """
    kept = [min(len(s), config.max_len) for s in sequences]
    width = max([1, *kept]) if pad_to is None else max(pad_to, 1)
    kept = [min(n, width) for n in kept]
    shape = (len(sequences), width)
    item_idx = np.zeros(shape, dtype=np.int64)
    etype = np.zeros(shape, dtype=np.int64)
    tbucket = np.zeros(shape, dtype=np.int64)
    mask = np.zeros(shape, dtype=np.int64)
    # The whole batch in flat arrays (one lookup per field, not one per user: per-user
    # calls were the largest Python cost of a worker's batch), then scattered into place.
    counts = np.asarray(kept, dtype=np.int64)
    total = int(counts.sum())
    rows = np.repeat(np.arange(len(sequences), dtype=np.int64), counts)
    position = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    cols = width - counts[rows] + position
    newest = [(s, len(s) - n) for s, n in zip(sequences, kept) if n]
    item_idx[rows, cols] = vocab.lookup([i for s, start in newest for i in s.item_ids[start:]], extra_items)
    types = {name: FIRST_REAL_INDEX + i for i, name in enumerate(config.event_types)}
    etype[rows, cols] = np.fromiter(
        (types.get(t, OOV_INDEX) for s, start in newest for t in s.event_types[start:]), dtype=np.int64, count=total
    )
    ts = np.fromiter((t for s, start in newest for t in s.timestamps_ms[start:]), dtype=np.int64, count=total)
    tbucket[rows, cols] = _gap_buckets(ts, position == 0, config.n_time_buckets)
    mask[rows, cols] = 1
    context = None
    if config.context_keys:
        context = np.zeros((*shape, len(config.context_keys)), dtype=np.int64)
        flat = [c for s, start in newest for c in (s.contexts[start:] if s.contexts is not None else [None] * (len(s) - start))]
        context[rows, cols] = context_rows(flat, config, total)
    empty = counts == 0  # a single OOV event, so the encoder always has a position to read
    item_idx[empty, -1] = OOV_INDEX
    etype[empty, -1] = OOV_INDEX
    tbucket[empty, -1] = FIRST_EVENT_BUCKET
    mask[empty, -1] = 1
    if context is not None:
        context[empty, -1] = np.asarray(config.context_offsets, dtype=np.int64) + CONTEXT_MISSING
    return FeatureBatch(item_idx=item_idx, event_type=etype, time_bucket=tbucket, attention_mask=mask, context=context)


def exclusion_indices(
    sequences: Sequence[UserSequence], vocab: ItemVocab, extra_items: Mapping[str, int] | None = None
) -> np.ndarray:
    """``(batch, n)`` known item indices each user has seen, ascending, padded with 0 (padding is never recommended).

    ``extra_items``: items after the vocabulary (see :meth:`ItemVocab.lookup`), excluded too.
    """
    lengths = np.fromiter((len(s.item_ids) for s in sequences), dtype=np.int64, count=len(sequences))
    items = vocab.lookup([i for s in sequences for i in s.item_ids], extra_items)
    rows = np.repeat(np.arange(len(sequences), dtype=np.int64), lengths)
    return _exclusion_rows(rows, items, len(sequences), len(vocab) + len(extra_items or ()))


def exclusion_from_features(item_idx: np.ndarray, vocab: ItemVocab, n_extra: int = 0) -> np.ndarray:
    """:func:`exclusion_indices` from a featurized ``(batch, length)`` index matrix (no second lookup).

    Only equal to it when no sequence was cut to the model's maximum length.
    ``n_extra``: how many items after the vocabulary ``item_idx`` may address.
    """
    rows = np.repeat(np.arange(item_idx.shape[0], dtype=np.int64), item_idx.shape[1])
    return _exclusion_rows(rows, item_idx.reshape(-1), item_idx.shape[0], len(vocab) + n_extra)


def _exclusion_rows(rows: np.ndarray, items: np.ndarray, batch: int, width: int) -> np.ndarray:
    # One np.unique over the whole batch (keys row * width + item), not one per user:
    # per-row calls were a quarter of the worker's encoder thread at 1,000 events/s.
    known = (items >= FIRST_REAL_INDEX) & (items < width)
    keys = np.unique(rows[known] * width + items[known])
    key_rows, key_items = np.divmod(keys, width)
    per_row = np.bincount(key_rows, minlength=batch)
    out = np.full((batch, max(1, int(per_row.max(initial=0)))), PAD_INDEX, dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(per_row)[:-1]))
    out[key_rows, np.arange(len(keys)) - starts[key_rows]] = key_items
    return out
