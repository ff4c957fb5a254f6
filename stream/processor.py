"""One micro-batch, top to bottom: validate → window → encode → recommend → emit.

This is plain logic; the Faust app (``stream/app.py``) only feeds it raw
records and acknowledges them once :meth:`BatchProcessor.begin`'s
``durable`` has completed: windows and user states written to the store, dead
letters, re-keyed events and recommendations delivered to Kafka. ``begin``
itself returns as soon as the recommendations are handed to the producer, so
a user sees them without waiting for the store, and the next batch overlaps
this one's writes. Nothing raises for bad input, and store and delivery
failures are retried with backoff (the batch stays unacknowledged), so an
event is either fully handled or will be seen again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Awaitable, Callable, Protocol, Sequence, TypeVar

import numpy as np
from prometheus_client import Histogram

from streamrec.config import Settings
from streamrec.stream.delivery import Outputs, Output, Pending, Sink, StoreCalls
from streamrec.stream.events import DeadLetter, Event, Reason, Rejection, ValidationRules, parse_event
from streamrec.stream.explanations import Explanations
from streamrec.stream.forgotten import ForgottenUsers, forgotten_action
from streamrec.stream.metrics import BatchStage, CassandraOp, WorkerMetrics
from streamrec.stream.model_holder import Recommender
from streamrec.stream.online import LastShown, OnlineScores, PopularityModel, Shown
from streamrec.stream.recommendation import Recommendation
from streamrec.stream.state.base import ForgetMark, StateStore, StoredWindow, UserState, next_write_us
from streamrec.stream.state.cache import WindowCache
from streamrec.stream.topics import owner_partition
from streamrec.stream.window import WindowEntry, merge_window, user_sequence, window_context

log = logging.getLogger(__name__)
T = TypeVar("T")

@dataclass(frozen=True, slots=True)
class SourceRecord:
    """A record as consumed from the events topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None


class ShadowHook(Protocol):
    """What the processor calls for a shadow model (``streamrec.stream.shadow.ShadowScorer``), in the encode step."""

    def score_batch(
        self, users: Sequence[str], by_user: dict[str, list[Event]], windows: dict[str, StoredWindow],
        live_shown: LastShown,
    ) -> None: ...

    def record_live(self, version: int, scores: "OnlineScores") -> None: ...

    def clear(self) -> None: ...

    def context_keys(self) -> tuple[str, ...]:
        """The event context keys the shadow model reads: windows keep them for it too."""
        ...

    def forget_user(self, user_id: str) -> None: ...


@dataclass
class BatchReport:
    """What one batch did (for logs, tests and the demo summary)."""

    records: int = 0
    events: int = 0
    rejected: int = 0
    repartitioned: int = 0
    rerouted: int = 0
    duplicates: int = 0
    forgotten: int = 0  # events of forgotten users: dropped (their past) or dead-lettered (refuse policy)
    recommendations: list[Recommendation] = field(default_factory=list)


@dataclass
class Accepted:
    """A batch's valid events that this worker owns, by user, with each user's latest Kafka append time."""

    by_user: dict[str, list[Event]] = field(default_factory=dict)
    appended_ms: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchInFlight:
    """A batch whose recommendations are handed to the producer; ``durable`` completes when it may be acknowledged."""

    report: BatchReport
    durable: "asyncio.Future[BatchReport]"


def _observe(histogram: Histogram, stage: BatchStage, since: float) -> float:
    """Record the time since ``since`` (perf_counter) under ``stage``; returns now, the next stage's start."""
    now = time.perf_counter()
    histogram.labels(stage).observe(now - since)
    return now


def in_flight_users(settings: Settings) -> int:
    """The most users whose windows may be merged but not yet stored: the window cache never holds fewer.

    The next batch merges on the cache because the store may not have the
    last batches' windows yet (their saves overlap it). A cache smaller than
    the users of the batches in flight, plus the one beginning, evicts a
    window before it is stored, and the next batch then reads the older one
    and overwrites the events in between (seen with
    ``STREAMREC_WINDOW_CACHE_USERS=0``).
    """
    return (settings.batches_in_flight + 1) * settings.batch_max_events


class BatchProcessor:
    """Handles micro-batches of raw event records for one worker."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        sink: Sink,
        *,
        model: Callable[[], Recommender | None] = lambda: None,
        metrics: WorkerMetrics | None = None,
        partition_count: Callable[[], int | None] = lambda: None,
        worker_id: str = "worker",
        clock: Callable[[], float] = time.time,
        rules: ValidationRules | None = None,
        cache_capacity: int = 200_000,
        retry_max_delay_s: float = 5.0,
        shadow: ShadowHook | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.current_model = model
        self.shadow = shadow
        self.partition_count = partition_count
        self.metrics = metrics or WorkerMetrics()
        self.worker_id = worker_id
        self.clock = clock
        self.rules = rules or ValidationRules.from_settings(settings)
        self.cache = WindowCache(max(cache_capacity, in_flight_users(settings)))
        self.popularity = PopularityModel()
        self.forgotten = ForgottenUsers()
        self.last_shown = LastShown(cache_capacity)
        self.outputs = Outputs(sink, self.metrics, retry_max_delay_s)
        self.store_calls = StoreCalls(self.metrics, retry_max_delay_s)
        self._max_age_ms = int(settings.window_max_age_days * 86_400_000)
        self._ttl_s = int(settings.window_max_age_days * 86_400)
        self.encoder_error: str | None = None  # the model's last failure, until it serves a batch again
        self._encode_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self._recommend_lock = threading.Lock()
        # Held from a batch's first record to its recommendations reaching the producer; a forget
        # request takes it, so a batch sees a forget entirely or not at all.
        self._batch_lock = asyncio.Lock()
        self.explanations = Explanations(settings) if settings.explain else None

    def on_rebalance(self) -> None:
        """Forget worker-local state about users: their partitions may have moved."""
        self.cache.clear()
        with self._recommend_lock:  # _recommend may run in the encoder thread
            self.last_shown.clear()
            if self.shadow is not None:
                self.shadow.clear()

    # ------------------------------------------------------------------ #
    @property
    def between_batches(self) -> asyncio.Lock:
        """Held while a batch goes from its first record to its recommendations reaching the producer."""
        return self._batch_lock

    def forget_now(self, user_id: str, mark: ForgetMark) -> ForgetMark:
        """Stop serving ``user_id`` from anything known so far; returns the mark with its delete timestamp.

        Call it holding :attr:`between_batches`. From here on the user's
        events stamped at or before ``mark.forgotten_at_ms`` are dropped, and
        later ones start from an empty window written after the delete (whose
        timestamp is past every write this worker made for the user: the
        cache is ahead of the store).
        """
        cached = self.cache.get(user_id)
        deleted_us = next_write_us(cached.written_us if cached else 0, int(self.clock() * 1_000_000))
        mark = replace(mark, deleted_us=max(mark.deleted_us, deleted_us))
        self.forgotten.add(mark)
        self.cache.put(StoredWindow(user_id, written_us=mark.deleted_us))
        with self._recommend_lock:
            self.last_shown.forget(user_id)
            if self.shadow is not None:
                self.shadow.forget_user(user_id)
        return mark

    def forgotten_at(self, user_id: str, mark: ForgetMark) -> None:
        """The store deleted at ``mark.deleted_us``: the user's next window must be written after that."""
        self.forgotten.add(mark)
        cached = self.cache.get(user_id)
        if cached is not None and cached.written_us < mark.deleted_us:
            # Only when the stored rows carried a later timestamp than this worker's clock (another
            # owner's clock ahead); events merged meanwhile come back with the user's next write.
            self.cache.put(replace(cached, written_us=mark.deleted_us))

    def _as_loaded(self, user_id: str, stored: StoredWindow | None) -> StoredWindow:
        """The window to merge on for a user not in the cache: the stored one, less a forgotten past.

        A forgotten user's window may be read before its delete has landed
        (or after the emptied one fell out of a small cache): its entries from
        before the request are dropped, and the next write goes after the delete.
        """
        mark = self.forgotten.get(user_id)
        if mark is None:
            return stored or StoredWindow(user_id)
        if stored is None:
            return StoredWindow(user_id, written_us=mark.deleted_us)
        kept = tuple(e for e in stored.entries if e.ts_ms > mark.forgotten_at_ms)
        seq = stored.seq if len(kept) == len(stored.entries) else len(kept)
        return StoredWindow(user_id, kept, seq, max(stored.written_us, mark.deleted_us))

    async def process(self, records: Sequence[SourceRecord]) -> BatchReport:
        """Handle one micro-batch; returns when all its effects are durable."""
        return await (await self.begin(records)).durable

    async def begin(self, records: Sequence[SourceRecord], *, fetched_ms: int | None = None) -> BatchInFlight:
        """Handle a micro-batch up to handing its recommendations to the producer; the rest goes on in the background.

        Returns as soon as every output of the batch is handed to the producer,
        so the next batch can start while this one's windows are written and
        its outputs delivered. ``BatchInFlight.durable`` completes when all of
        that is durable; only then may the batch be acknowledged. The next
        batch already merges on this batch's windows (the cache is updated
        here, ahead of the store): its writes carry later write timestamps, so
        whatever order the writes land in, Cassandra keeps the newest window.
        """
        async with self._batch_lock:
            return await self._begin(records, fetched_ms)

    async def _begin(self, records: Sequence[SourceRecord], fetched_ms: int | None) -> BatchInFlight:
        """The README's steps, one call each; step 6 (ack) is the app's, once ``durable`` completes."""
        started = self.clock()
        report = BatchReport(records=len(records))
        self._observe_arrival(records, fetched_ms or int(started * 1000))
        deliveries: list[Pending] = []
        t0 = time.perf_counter()
        accepted = await self._accept(records, report, deliveries)  # 1. validate, 2. route
        t0 = _observe(self.metrics.batch_stage, BatchStage.VALIDATE, t0)
        save: Awaitable[None] | None = None
        if accepted.by_user:
            windows, changed = await self._merge(accepted.by_user, report)  # 3. window merge
            t0 = _observe(self.metrics.batch_stage, BatchStage.LOAD, t0)
            # 4. encode and rank
            recommendations, payloads, states = await self._recommend_batch(accepted.by_user, windows, changed)
            t0 = _observe(self.metrics.batch_stage, BatchStage.ENCODE, t0)
            deliveries += await self._emit(recommendations, payloads)  # 5. emit...
            report.recommendations = recommendations
            t0 = _observe(self.metrics.batch_stage, BatchStage.PRODUCE, t0)
            save = self._start_save(changed, states)  # ...and store, overlapping the next batch
        durable = asyncio.ensure_future(self._finish(report, save, deliveries, started, t0, accepted.appended_ms))
        return BatchInFlight(report, durable)

    def _observe_arrival(self, records: Sequence[SourceRecord], fetched_ms: int) -> None:
        """Batch size, and how long the oldest record waited between its Kafka append and this batch."""
        self.metrics.batch_size.observe(len(records))
        oldest_ms = min((r.timestamp_ms for r in records if r.timestamp_ms is not None), default=None)
        if oldest_ms is not None:
            self.metrics.batch_stage.labels(BatchStage.QUEUED).observe(max(0.0, fetched_ms - oldest_ms) / 1000.0)

    async def _accept(self, records: Sequence[SourceRecord], report: BatchReport, deliveries: list[Pending]) -> Accepted:
        """Steps 1–2: the valid events this worker owns, by user; everything else handed to the producer.

        Invalid records are dead-lettered, records on the wrong key or
        partition re-sent to their owner, and forgotten users' events dropped
        or refused.
        """
        accepted = Accepted()
        partitions = self.partition_count()
        for record in records:
            parsed = parse_event(record.value, rules=self.rules)
            if isinstance(parsed, Rejection):
                deliveries.append(await self.dead_letter(record, parsed))
                report.rejected += 1
                continue
            user_key = parsed.user_id.encode()
            owner = owner_partition(user_key, partitions) if partitions else None
            if record.key != user_key:
                # Another key would put the user's events on several partitions
                # (and workers): re-key by user and let the owner handle it.
                deliveries.append(await self.outputs.send(Output(self.settings.events_topic, user_key, record.value or b"", owner)))
                report.repartitioned += 1
            elif owner is not None and record.partition != owner:
                # The right key on the wrong partition (a CRC32 producer, or partitions
                # added since it was produced): merging it here would give the user two
                # owners racing on one window. Move it to the owner's partition.
                deliveries.append(await self.outputs.send(Output(self.settings.events_topic, user_key, record.value or b"", owner)))
                report.rerouted += 1
            elif (action := forgotten_action(self.forgotten.get(parsed.user_id), parsed.ts_ms,
                                             self.settings.forget_policy)) is not None:
                report.forgotten += 1
                self.metrics.forgotten_events.labels(action).inc()
                if action == "refused":
                    rejection = Rejection(Reason.FORGOTTEN_USER, "the user asked to be forgotten; STREAMREC_FORGET_POLICY=refuse")
                    deliveries.append(await self.dead_letter(record, rejection))
            else:
                accepted.by_user.setdefault(parsed.user_id, []).append(parsed)
                if record.timestamp_ms is not None:
                    accepted.appended_ms[parsed.user_id] = record.timestamp_ms
                report.events += 1
        self.metrics.repartitioned.inc(report.repartitioned)
        self.metrics.rerouted.inc(report.rerouted)
        self.metrics.events.inc(report.events)
        return accepted

    async def _merge(self, by_user: dict[str, list[Event]], report: BatchReport) -> tuple[dict[str, StoredWindow], list[StoredWindow]]:
        """Step 3: every user's window after this batch (cache, else store), and the ones that changed."""
        windows, changed, report.duplicates = await self.store_calls.retry("window read", lambda: self._merge_windows(by_user))
        self.metrics.duplicates.inc(report.duplicates)
        # Ahead of the store (see begin's docstring): the next batch must see these events.
        for user_id in by_user:
            self.cache.put(windows[user_id])
        return windows, changed

    async def _emit(self, recommendations: list[Recommendation], payloads: list[bytes]) -> list[Pending]:
        """Step 5: one recommendation per user handed to the producer."""
        topic = self.settings.recommendations_topic
        return [await self.outputs.send(Output(topic, rec.user_id.encode(), payload)) for rec, payload in zip(recommendations, payloads)]

    def _start_save(self, changed: list[StoredWindow], states: list[UserState]) -> Awaitable[None]:
        """Step 5's store half: the changed windows and new states, written in the background (awaited by _finish)."""
        return asyncio.ensure_future(
            self.store_calls.retry("state write", lambda: self._timed(CassandraOp.SAVE, self.store.save(changed, states, self._ttl_s)))
        )

    async def _finish(
        self, report: BatchReport, save: Awaitable[None] | None, deliveries: list[Pending], started: float,
        produced: float, appended_ms: dict[str, int],
    ) -> BatchReport:
        """Wait until the batch's state is stored and its outputs delivered; the caller acks after this."""
        try:
            if save is not None:
                await save
            await self.outputs.deliver(deliveries)
        except BaseException:
            if isinstance(save, asyncio.Future):
                save.cancel()
            raise
        _observe(self.metrics.batch_stage, BatchStage.DURABLE, produced)
        now = self.clock()
        self.metrics.recommendations.inc(len(report.recommendations))
        self.metrics.consume_to_emit.observe(now - started)
        for rec in report.recommendations:
            self.metrics.event_to_emit.observe(max(0.0, now - rec.event_ts_ms / 1000.0))
            if rec.user_id in appended_ms:
                self.metrics.append_to_emit.observe(max(0.0, now - appended_ms[rec.user_id] / 1000.0))
        return report

    # ------------------------------------------------------------------ #
    async def dead_letter(self, record: SourceRecord, rejection: Rejection) -> Pending:
        """Hand the dead letter of ``record`` to the producer (delivered with the batch's other outputs)."""
        self.metrics.rejected.labels(str(rejection.reason)).inc()
        letter = DeadLetter.from_rejection(
            rejection, record.value, key=record.key, topic=record.topic, partition=record.partition,
            offset=record.offset, source_timestamp_ms=record.timestamp_ms, worker_id=self.worker_id,
            rejected_at_ms=int(self.clock() * 1000),
        )
        log.debug("dead-lettering %s@%s:%s: %s", record.topic, record.partition, record.offset, rejection.reason)
        return await self.outputs.send(Output(self.settings.dlq_topic, letter.kafka_key(), letter.to_json()))

    async def _merge_windows(
        self, by_user: dict[str, list[Event]]
    ) -> tuple[dict[str, StoredWindow], list[StoredWindow], int]:
        """Each user's window after this batch, the ones that changed, and the duplicate count."""
        windows: dict[str, StoredWindow] = {}
        missing = []
        for user_id in by_user:
            cached = self.cache.get(user_id)
            if cached is None:
                missing.append(user_id)
            else:
                windows[user_id] = cached
        if missing:
            loaded = await self._timed(CassandraOp.LOAD_WINDOWS, self.store.load_windows(missing))
            for user_id in missing:
                windows[user_id] = self._as_loaded(user_id, loaded.get(user_id))

        duplicates = 0
        changed: list[StoredWindow] = []
        now_us = int(self.clock() * 1_000_000)
        keys = self._context_keys()
        for user_id, events in by_user.items():
            current = windows[user_id]
            entries, stats = merge_window(
                current.entries,
                (WindowEntry(e.event_id, e.item_id, e.event_type, e.ts_ms, window_context(e.context, keys)) for e in events),
                max_events=self.settings.window_size,
                max_age_ms=self._max_age_ms,
            )
            duplicates += stats.duplicates
            if stats.changed:
                written_us = next_write_us(current.written_us, now_us)
                updated = StoredWindow(user_id, tuple(entries), current.seq + max(1, stats.added), written_us)
                windows[user_id] = updated
                changed.append(updated)
        return windows, changed, duplicates

    def _context_keys(self) -> tuple[str, ...]:
        """The event context keys a new window entry keeps: those the live model (and the shadow) read.

        Only these: a window grows only for configured keys. An entry merged
        while no served model read a key has that key missing for good.
        """
        model = self.current_model()
        keys = model.context_keys if model is not None else ()
        if self.shadow is not None and (shadow_keys := self.shadow.context_keys()):
            keys = tuple(dict.fromkeys((*keys, *shadow_keys)))
        return keys

    async def _recommend_batch(
        self, by_user: dict[str, list[Event]], windows: dict[str, StoredWindow], changed: list[StoredWindow]
    ) -> tuple[list[Recommendation], list[bytes], list[UserState]]:
        """Step 4 on the event loop for a small batch, else on the encoder thread.

        On the encoder thread (ONNX Runtime releases the GIL) the event loop
        keeps fetching from Kafka and completing Cassandra calls meanwhile. For
        a small batch that hand-off costs more than it saves: the encoder
        thread competes for the GIL with the loop, so the batch's own
        recommendations wait longer (measured side by side: README, "Where the time goes").
        """
        changed_users = {w.user_id for w in changed}
        if self._encoder_rows(len(by_user)) <= self.settings.encode_inline_max_rows:
            return self._recommend(by_user, windows, changed_users)
        return await asyncio.get_running_loop().run_in_executor(
            self._encode_thread, self._recommend, by_user, windows, changed_users
        )

    def _encoder_rows(self, users: int) -> int:
        """Encoder rows a batch of ``users`` costs: explanations run the model once more per explained event."""
        if self.explanations is None:
            return users
        return users * (1 + self.settings.explain_events)

    def _recommend(
        self, by_user: dict[str, list[Event]], windows: dict[str, StoredWindow], changed: set[str]
    ) -> tuple[list[Recommendation], list[bytes], list[UserState]]:
        """Each user's recommendation, its wire form (encoded once, for Kafka and the stored state) and new state."""
        with self._recommend_lock:
            return self._recommend_locked(by_user, windows, changed)

    def _recommend_locked(
        self, by_user: dict[str, list[Event]], windows: dict[str, StoredWindow], changed: set[str]
    ) -> tuple[list[Recommendation], list[bytes], list[UserState]]:
        users = list(by_user)
        popular = self.popularity.top(self.settings.top_k + self.settings.window_size)
        model = self.current_model()
        ranked = self._encode(model, users, windows) if model is not None else None
        because = None
        if ranked is not None and model is not None:
            version = model.version
            if self.explanations is not None:
                because = self.explanations.because(model, [windows[u].entries for u in users], [r[0] for r in ranked])
        else:
            ranked = [self._popular_for(windows[u], popular) for u in users]
            version = 0
        self.metrics.model_version.set(version)
        if self.shadow is not None:
            # Before the loop below replaces each user's previous lists: the shadow is scored on the same events.
            self.shadow.score_batch(users, by_user, windows, self.last_shown)

        now_ms = int(self.clock() * 1000)
        recommendations: list[Recommendation] = []
        payloads: list[bytes] = []
        states: list[UserState] = []
        scores_sum = OnlineScores()
        for row, (user_id, (items, scores, vector)) in enumerate(zip(users, ranked)):
            online = self.last_shown.score_next(user_id, by_user[user_id][0].item_id, scores_sum)
            # Labelled with the newest event of the window it was computed from, not the
            # last of this batch: a replay (whatever its batch boundaries) finds these
            # events already in the window and repeats the same (user_id, event_id).
            last = windows[user_id].entries[-1]  # never empty: a merge keeps the newest event
            rec = Recommendation.from_ranked(
                user_id, items, scores, model_version=version, event_id=last.event_id,
                event_ts_ms=last.ts_ms, emitted_at_ms=now_ms, worker_id=self.worker_id, online=online,
                because=because[row] if because is not None else None,
            )
            payload = rec.to_json()
            recommendations.append(rec)
            payloads.append(payload)
            if user_id in changed:
                # Written with the window, at the window's own (growing) timestamp. A batch that
                # changed nothing (a replay) leaves the stored state as it was: rewriting it could
                # not carry a timestamp known to be past the stored state's.
                written_us = windows[user_id].written_us
                states.append(UserState(user_id, version, vector, payload, last.event_id, now_ms, written_us))
            # The popularity baseline scored against the user's next event; in the fallback it is `items`.
            baseline = items if version == 0 else self._popular_for(windows[user_id], popular)[0]
            self.last_shown.remember(user_id, Shown(items, baseline, last.event_id))
        scores_sum.publish(self.metrics)
        if self.shadow is not None:
            self.shadow.record_live(version, scores_sum)
        for events in by_user.values():
            for event in events:
                self.popularity.observe(event.item_id)
        return recommendations, payloads, states

    def _encode(
        self, model: Recommender, users: list[str], windows: dict[str, StoredWindow]
    ) -> list[tuple[list[str], list[float], bytes]] | None:
        """Top-K per user from the model, or None when the model fails (the batch gets the popularity fallback)."""
        sequences = [user_sequence(windows[u].entries) for u in users]
        t0 = time.perf_counter()
        try:
            results = model.recommend(sequences, k=self.settings.top_k, exclude_seen=self.settings.exclude_seen)
        except Exception as exc:  # noqa: BLE001 - a model failing must degrade serving, not stop the worker
            self.metrics.encoder_failures.inc()
            self.encoder_error = f"{type(exc).__name__}: {exc}"
            log.error("model version %s failed on a batch of %d users (%s); served the popularity fallback",
                      model.version, len(users), self.encoder_error)
            return None
        self.encoder_error = None
        self.metrics.encoder_latency.observe(time.perf_counter() - t0)
        return [(list(r.item_ids), list(r.scores), np.asarray(r.user_vector, dtype="<f4").tobytes()) for r in results]

    def _popular_for(self, window: StoredWindow, popular: list[tuple[str, int]]) -> tuple[list[str], list[float], bytes]:
        seen = {e.item_id for e in window.entries} if self.settings.exclude_seen else set()
        picked = [(item, float(count)) for item, count in popular if item not in seen][: self.settings.top_k]
        return [i for i, _ in picked], [s for _, s in picked], b""

    # ------------------------------------------------------------------ #
    async def _timed(self, op: CassandraOp, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await call
        finally:
            self.metrics.cassandra_latency.labels(op).observe(time.perf_counter() - started)
