"""New items served without a retrain: item vectors in, merged top-K out.

The item embedder (:mod:`streamrec.stream.item_embedder`) reads each item
record once, computes its text vector with the packaged text encoder and
publishes an :class:`ItemVector` on the compacted ``<prefix>.item-vectors``
topic. Every worker replays that topic with its own group-less consumer
(:func:`follow_item_vectors`) into a :class:`LiveItems`; a served version that
ships a content head (``content.npz``, multi-view artifacts only) scores the
items its graph does not know as ``user_vector @ new_items.T`` beside the
graph's top-K: a graph exported with the ``new_item_vectors`` input takes
them as the inputs of new items inside users' windows and ranks them with its
own items in the same call; an older graph's top-K is merged with their scores
(:class:`ContentAwareSession`). An id-only version, or no new item, leaves
serving exactly as it was: one check per batch.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer

from streamrec.config import Settings
from streamrec.errors import ModelError
from streamrec.models.features import UserSequence
from streamrec.onnx.content_head import ContentHead, load_content_head
from streamrec.onnx.runtime import NewItems, ServedModel, TopK

log = logging.getLogger(__name__)

ITEM_VECTOR_VERSION = 1


@dataclass(frozen=True, slots=True)
class ItemVector:
    """One item's text vector as the embedder publishes it (the value on ``<prefix>.item-vectors``).

    ``record_ts_ms`` is the Kafka timestamp of the item record it was computed
    from, so the time from an item record to its first recommendation can be
    measured end to end.
    """

    item_id: str
    vector: np.ndarray
    categories: tuple[str, ...]
    text_encoder_sha256: str
    record_ts_ms: int
    embedded_at_ms: int
    v: int = ITEM_VECTOR_VERSION

    def to_json(self) -> bytes:
        """JSON with the float32 vector as base64 of its little-endian bytes (exact, 4/3 of the raw size)."""
        return orjson.dumps({
            "v": self.v, "item_id": self.item_id, "categories": list(self.categories),
            "text_encoder_sha256": self.text_encoder_sha256, "record_ts_ms": self.record_ts_ms,
            "embedded_at_ms": self.embedded_at_ms,
            "vector": base64.b64encode(np.asarray(self.vector, dtype="<f4").tobytes()).decode(),
        })

    @classmethod
    def from_json(cls, raw: bytes) -> "ItemVector":
        """Parse a message; raises ValueError (with why) for anything malformed."""
        try:
            doc = orjson.loads(raw)
            vector = np.frombuffer(base64.b64decode(doc["vector"], validate=True), dtype="<f4").astype(np.float32)
            message = cls(
                item_id=str(doc["item_id"]), vector=vector,
                categories=tuple(str(c) for c in doc.get("categories") or ()),
                text_encoder_sha256=str(doc["text_encoder_sha256"]), record_ts_ms=int(doc.get("record_ts_ms", 0)),
                embedded_at_ms=int(doc.get("embedded_at_ms", 0)), v=int(doc.get("v", ITEM_VECTOR_VERSION)),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, base64.binascii.Error) as exc:
            raise ValueError(f"malformed item vector: {exc}") from exc
        if message.v != ITEM_VECTOR_VERSION or vector.ndim != 1 or not len(vector) or not np.isfinite(vector).all():
            raise ValueError(f"item vector of {message.item_id!r}: unsupported version or bad vector")
        return message

    def kafka_key(self) -> bytes:
        return self.item_id.encode()


@dataclass(frozen=True)
class LiveSnapshot:
    """The item vectors a worker holds at one moment (``generation`` changes with every update)."""

    generation: int
    item_ids: tuple[str, ...]
    text: np.ndarray
    categories: tuple[tuple[str, ...], ...]
    text_encoder_sha256: tuple[str, ...]
    arrived_ms: tuple[int, ...]


class LiveItems:
    """The catalogue's item vectors as this worker has read them (thread-safe: filled by the event loop, read by the encoder thread).

    Memory: one float32 text vector per catalogue item (1.5 KiB at 384
    dimensions), whether or not the served version knows the item: a later
    version (or a rollback) may know a different set.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, ItemVector] = {}
        self._arrived_ms: dict[str, int] = {}
        self._generation = 0
        self._snapshot: LiveSnapshot | None = None

    def put(self, item: ItemVector, arrived_ms: int | None = None) -> None:
        with self._lock:
            self._items[item.item_id] = item
            self._arrived_ms[item.item_id] = int(time.time() * 1000) if arrived_ms is None else arrived_ms
            self._generation += 1

    def remove(self, item_id: str) -> None:
        with self._lock:
            if self._items.pop(item_id, None) is not None:
                self._arrived_ms.pop(item_id, None)
                self._generation += 1

    @property
    def generation(self) -> int:
        return self._generation

    def __len__(self) -> int:
        return len(self._items)

    def snapshot(self) -> LiveSnapshot:
        """All held vectors as one matrix (rebuilt only when something changed since the last call)."""
        with self._lock:
            if self._snapshot is not None and self._snapshot.generation == self._generation:
                return self._snapshot
            items = list(self._items.values())
            dims = {len(i.vector) for i in items}
            text = np.stack([i.vector for i in items]) if items and len(dims) == 1 else np.zeros((0, 0), np.float32)
            if len(dims) > 1:  # one encoder's vectors only; the embedder never mixes them
                log.error("item vectors of different dimensions %s: none served until they agree", sorted(dims))
                items = []
            self._snapshot = LiveSnapshot(
                self._generation, tuple(i.item_id for i in items), text, tuple(i.categories for i in items),
                tuple(i.text_encoder_sha256 for i in items), tuple(self._arrived_ms[i.item_id] for i in items),
            )
            return self._snapshot


@dataclass(frozen=True)
class NewItemTable:
    """The items a served version does not know, as that version scores them."""

    generation: int
    item_ids: tuple[str, ...]
    vectors: np.ndarray  # (n, hidden) float32
    index: dict[str, int]


EMPTY_TABLE = NewItemTable(-1, (), np.zeros((0, 0), np.float32), {})


class ContentAwareSession(ServedModel):
    """An :class:`ServedModel` that also ranks items that appeared after its version was trained.

    Built with :meth:`ServedModel.load` and then :meth:`attach`; without a
    content head in the artifact, or with no new items, :meth:`recommend` is
    the plain graph call.
    """

    content_head: ContentHead | None = None
    live_items: LiveItems | None = None
    _table: NewItemTable = EMPTY_TABLE

    def attach(self, live_items: LiveItems) -> None:
        """Serve ``live_items`` too, when this version ships a content head."""
        head = load_content_head(self.artifact.path)
        if head is None:
            return
        if head.hidden != self.config.hidden:
            raise ModelError(f"model at {self.artifact.path}: content head width {head.hidden} != hidden {self.config.hidden}")
        self.content_head = head
        self.live_items = live_items
        self._table_lock = threading.Lock()
        log.info("model v%d serves new items from their content (%d categories)", self.version, len(head.categories))

    def new_item_table(self) -> NewItemTable:
        """Vectors of the held items this version's graph lacks (recomputed when the held items change)."""
        live, head = self.live_items, self.content_head
        if live is None or head is None:
            return EMPTY_TABLE
        if self._table.generation == live.generation:
            return self._table
        with self._table_lock:
            snap = live.snapshot()
            if self._table.generation == snap.generation:
                return self._table
            rows = [
                r for r, item in enumerate(snap.item_ids)
                if item not in self.vocab and snap.text_encoder_sha256[r] == head.text_encoder_sha256
            ]
            foreign = sum(1 for sha in snap.text_encoder_sha256 if sha != head.text_encoder_sha256)
            if foreign:
                log.warning("%d item vectors come from another text encoder than model v%d's; not served", foreign, self.version)
            if rows and snap.text.shape[1] != head.text_dim:
                log.error("item vectors have %d dimensions, model v%d projects %d: none served", snap.text.shape[1], self.version, head.text_dim)
                rows = []
            ids = tuple(snap.item_ids[r] for r in rows)
            vectors = head.vectors(snap.text[rows], [snap.categories[r] for r in rows]) if rows else np.zeros((0, head.hidden), np.float32)
            self._table = NewItemTable(snap.generation, ids, vectors, {item: i for i, item in enumerate(ids)})
            return self._table

    def recommend(
        self, sequences: Sequence[UserSequence], k: int, exclude_seen: bool = True, new_items: NewItems | None = None
    ) -> list[TopK]:
        """The top-``k`` of the graph's items and this session's new items together.

        A graph that takes new items (:attr:`ServedModel.reads_new_items`)
        reads them inside windows and ranks them with its own items in one
        call; an older multi-view graph ranks its own, and the new items'
        scores (``user_vector @ new_items.T``) are merged beside them.
        ``new_items`` is this session's own table; an argument only to match
        :meth:`ServedModel.recommend`.
        """
        table = self.new_item_table()
        if not table.item_ids:
            return super().recommend(sequences, k, exclude_seen)
        if self.reads_new_items:
            return super().recommend(sequences, k, exclude_seen, new_items=table)
        ranked = super().recommend(sequences, k, exclude_seen)
        return merge_new_items(ranked, sequences, table, k, exclude_seen) if ranked else ranked


def merge_new_items(
    ranked: list[TopK], sequences: Sequence[UserSequence], table: NewItemTable, k: int, exclude_seen: bool
) -> list[TopK]:
    """Each user's graph top-``k`` and the new items' scores, merged by score (both are dot products with the same user vector).

    Vectorised over the batch: one matmul, one partial sort of ``k + n_new``
    columns per row; the per-row Python work is building the ``k`` ids, as for
    the graph's own answer.
    """
    users = np.stack([r.user_vector for r in ranked]).astype(np.float32, copy=False)
    new_scores = users @ table.vectors.T  # (batch, n_new)
    if exclude_seen:
        index = table.index
        for row, seq in enumerate(sequences):
            seen = [index[i] for i in set(seq.item_ids) if i in index]  # O(window), not O(new items)
            if seen:
                new_scores[row, seen] = -np.inf
    graph_scores = np.full((len(ranked), k), -np.inf, dtype=np.float32)
    for row, top in enumerate(ranked):
        graph_scores[row, : len(top.scores)] = top.scores
    both = np.concatenate([graph_scores, new_scores], axis=1)
    take = min(k, both.shape[1])
    best = np.argpartition(-both, take - 1, axis=1)[:, :take]
    order = np.take_along_axis(best, np.argsort(-np.take_along_axis(both, best, axis=1), axis=1, kind="stable"), axis=1)
    ordered = np.take_along_axis(both, order, axis=1)
    # Whole-array conversions: numpy scalars indexed one by one cost ~1 us each.
    orders, values, finite = order.tolist(), ordered.tolist(), np.isfinite(ordered).tolist()
    out: list[TopK] = []
    for row, top in enumerate(ranked):
        keep = [n for n, ok in enumerate(finite[row]) if ok]
        out.append(TopK(
            item_ids=[top.item_ids[j] if j < k else table.item_ids[j - k] for j in (orders[row][n] for n in keep)],
            scores=[values[row][n] for n in keep],
            user_vector=top.user_vector,
        ))
    return out


def load_content_aware(path: Path, live_items: LiveItems, *, threads: int = 0) -> ContentAwareSession:
    """Load, verify and warm an artifact that also serves ``live_items`` if it ships a content head."""
    session = ContentAwareSession.load(path, threads=threads)
    session.attach(live_items)
    return session


async def follow_item_vectors(settings: Settings, live_items: LiveItems, stop: asyncio.Event) -> None:
    """Replay ``<prefix>.item-vectors`` from its start into ``live_items``, then follow it until ``stop``.

    A group-less consumer: every worker needs every item. A tombstone removes
    an item; a malformed message is logged and skipped (the embedder writes
    this topic; bad item *records* were dead-lettered there).
    """
    consumer = AIOKafkaConsumer(
        settings.item_vectors_topic, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
        auto_offset_reset="earliest", metadata_max_age_ms=10_000, **settings.kafka_client_kwargs(),
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=2000)
            for records in batch.values():
                for record in records:
                    key = (record.key or b"").decode("utf-8", "replace")
                    if record.value is None:
                        live_items.remove(key)
                        continue
                    try:
                        live_items.put(ItemVector.from_json(record.value))
                    except ValueError as exc:
                        log.error("skipping item vector at %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)
    finally:
        await consumer.stop()
