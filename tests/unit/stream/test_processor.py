"""The batch processor with the in-memory store and a recording sink (no Kafka, no Cassandra)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import orjson
import pytest

from streamrec.config import Settings
from streamrec.stream.events import DeadLetter
from streamrec.stream.online import score_previous
from streamrec.stream.processor import BatchProcessor, SourceRecord
from streamrec.stream.recommendation import Recommendation
from streamrec.stream.state.memory import InMemoryStore


@dataclass
class RecordingSink:
    """Records what was delivered; ``refuse_next`` / ``fail_next`` model a producer refusing at send time
    or a delivery failing later (as aiokafka does for a broker error)."""

    sent: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)
    partitions: list[int | None] = field(default_factory=list)
    refuse_next: int = 0
    fail_next: int = 0

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None) -> asyncio.Future:
        if self.refuse_next:
            self.refuse_next -= 1
            raise RuntimeError("producer buffer full")
        future = asyncio.get_running_loop().create_future()
        if self.fail_next:
            self.fail_next -= 1
            future.set_exception(RuntimeError("NotLeaderForPartition"))
            return future
        self.sent.append((topic, key, value))
        self.partitions.append(partition)
        future.set_result(None)
        return future

    def on(self, topic: str) -> list[tuple[bytes | None, bytes]]:
        return [(k, v) for t, k, v in self.sent if t == topic]


SETTINGS = Settings(window_size=3, top_k=2)


def event(n: int, user: str = "u1", item: str | None = None, ts: int | None = None) -> dict:
    return {"event_id": f"e{n}", "user_id": user, "item_id": item or f"i{n}", "event_type": "view",
            "ts": ts if ts is not None else 1_700_000_000_000 + n}


def record(e: dict | bytes, offset: int = 0, key: bytes | None | str = "auto") -> SourceRecord:
    value = e if isinstance(e, bytes) else orjson.dumps(e)
    if key == "auto":
        key = e["user_id"].encode() if isinstance(e, dict) else b"k"
    return SourceRecord("streamrec.events", 0, offset, key, value, 1_700_000_000_000)


def run(processor: BatchProcessor, records: list[SourceRecord]):
    return asyncio.run(processor.process(records))


def make(store: InMemoryStore | None = None) -> tuple[BatchProcessor, InMemoryStore, RecordingSink]:
    store = store or InMemoryStore()
    sink = RecordingSink()
    return BatchProcessor(SETTINGS, store, sink, retry_max_delay_s=0.01), store, sink


def test_window_keeps_last_n_in_time_order_and_one_recommendation_per_user() -> None:
    processor, store, sink = make()
    events = [event(5), event(1), event(3), event(2), event(4), event(10, user="u2")]
    report = run(processor, [record(e, i) for i, e in enumerate(events)])
    assert report.events == 6 and report.rejected == 0
    assert [e.event_id for e in store.windows["u1"].entries] == ["e3", "e4", "e5"]
    recs = [Recommendation.from_json(v) for _, v in sink.on(SETTINGS.recommendations_topic)]
    assert sorted(r.user_id for r in recs) == ["u1", "u2"]
    # Labelled with the newest event (by event time) of the window, whatever the arrival order.
    assert {r.user_id: r.event_id for r in recs} == {"u1": "e5", "u2": "e10"}
    assert set(store.states) == {"u1", "u2"}


def test_replay_changes_nothing_in_state() -> None:
    processor, store, _ = make()
    records = [record(event(i), i) for i in range(6)]
    run(processor, records)
    before = store.windows["u1"]
    processor.on_rebalance()  # forget the cache: the replay reads the stored window
    report = run(processor, records)
    assert store.windows["u1"] == before
    assert report.duplicates >= 3


def test_bad_records_go_to_the_dead_letter_topic_and_valid_ones_are_kept() -> None:
    processor, store, sink = make()
    records = [record(b"{oops", 0), record(event(1), 1), record(b'{"event_id": "x"}', 2), record(event(2), 3)]
    report = run(processor, records)
    assert report.rejected == 2 and report.events == 2
    letters = [DeadLetter.from_json(v) for _, v in sink.on(SETTINGS.dlq_topic)]
    assert [(d.reason, d.source_offset, d.payload) for d in letters] == [
        ("malformed_json", 0, b"{oops"), ("missing_field", 2, b'{"event_id": "x"}')]
    assert [e.event_id for e in store.windows["u1"].entries] == ["e1", "e2"]


def test_events_with_another_key_are_rekeyed_not_processed() -> None:
    processor, store, sink = make()
    report = run(processor, [record(event(1), 0, key=None), record(event(2), 1, key=b"other")])
    assert report.repartitioned == 2 and report.events == 0
    assert [k for k, _ in sink.on(SETTINGS.events_topic)] == [b"u1", b"u1"]
    assert store.windows == {}


def test_store_failures_are_retried_not_dropped() -> None:
    store = InMemoryStore()
    store.fail_next = 4
    processor, _, sink = make(store)
    report = run(processor, [record(event(i), i) for i in range(3)])
    assert report.events == 3
    assert [e.event_id for e in store.windows["u1"].entries] == ["e0", "e1", "e2"]
    assert len(sink.on(SETTINGS.recommendations_topic)) == 1
    assert processor.metrics.cassandra_errors._value.get() == 4


def test_without_a_model_new_users_get_popular_items_they_have_not_seen() -> None:
    processor, _, sink = make()
    run(processor, [record(event(i, user=f"a{i}", item="hot"), i) for i in range(3)]
        + [record(event(9, user="a9", item="warm"), 9)])
    run(processor, [record(event(20, user="newbie", item="cold"), 20)])
    rec = Recommendation.from_json(sink.on(SETTINGS.recommendations_topic)[-1][1])
    assert rec.user_id == "newbie" and rec.model_version == 0
    assert [i.item_id for i in rec.items] == ["hot", "warm"]


def test_online_evaluation_scores_the_previous_recommendation_against_the_next_event() -> None:
    processor, _, sink = make()
    run(processor, [record(event(i, user=f"a{i}", item="hot"), i) for i in range(3)])
    run(processor, [record(event(10, user="u1", item="x"), 10)])  # recommended: hot
    run(processor, [record(event(11, user="u1", item="hot"), 11)])
    rec = Recommendation.from_json(sink.on(SETTINGS.recommendations_topic)[-1][1])
    assert rec.online is not None and rec.online.hit and rec.online.rank == 1
    assert rec.online.previous_event_id == "e10"


@pytest.mark.parametrize(
    "previous, nxt, expected",
    [(["a", "b", "c"], "a", (True, 1, 1.0)), (["a", "b", "c"], "c", (True, 3, 0.5)), (["a"], "z", (False, None, 0.0))],
)
def test_score_previous(previous: list[str], nxt: str, expected: tuple) -> None:
    assert score_previous(previous, nxt) == expected


class Clock:
    """A settable wall clock shared by the processor and the in-memory store (TTL, write timestamps)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_returning_user_gets_a_stored_window_after_the_old_one_expired() -> None:
    clock = Clock(1_700_000_000.0)
    settings = Settings(window_size=50, top_k=2, window_max_age_days=1)
    store = InMemoryStore(clock=clock)
    first = BatchProcessor(settings, store, RecordingSink(), clock=clock)
    asyncio.run(first.process([record(event(i, ts=int(clock.now * 1000) + i), i) for i in range(25)]))
    assert len(store.windows["u1"].entries) == 25

    clock.now += 2 * 86_400  # the window's TTL passes; the user comes back to a restarted worker
    assert store.windows == {}
    again = BatchProcessor(settings, store, RecordingSink(), clock=clock)
    asyncio.run(again.process([record(event(100 + i, ts=int(clock.now * 1000) + i), 100 + i) for i in range(3)]))
    assert [e.event_id for e in store.windows["u1"].entries] == ["e100", "e101", "e102"]
    assert store.states["u1"].last_event_id == "e102"


def test_writes_after_an_operator_delete_are_stored_while_the_window_is_cached() -> None:
    clock = Clock(1_700_000_000.0)
    store = InMemoryStore(clock=clock)
    processor = BatchProcessor(SETTINGS, store, RecordingSink(), clock=clock)
    run(processor, [record(event(i), i) for i in range(3)])
    clock.now += 1
    store.delete_user("u1")
    clock.now += 1
    run(processor, [record(event(9), 9)])
    assert "u1" in store.windows and store.windows["u1"].entries[-1].event_id == "e9"
    assert store.states["u1"].last_event_id == "e9"


def test_failed_deliveries_are_re_sent_until_delivered_and_reported_meanwhile() -> None:
    processor, store, sink = make()
    sink.refuse_next, sink.fail_next = 2, 3
    seen_unhealthy = []

    async def scenario() -> None:
        task = asyncio.ensure_future(processor.process([record(b"{oops", 0), record(event(1), 1), record(event(2, user="u2"), 2)]))
        while not task.done():
            seen_unhealthy.append(not processor.outputs.last_ok)
            await asyncio.sleep(0.005)
        await task

    asyncio.run(scenario())
    # Every output delivered exactly once in the end: one dead letter and two recommendations.
    assert len(sink.on(SETTINGS.dlq_topic)) == 1
    assert sorted(Recommendation.from_json(v).user_id for _, v in sink.on(SETTINGS.recommendations_topic)) == ["u1", "u2"]
    assert any(seen_unhealthy) and processor.outputs.last_ok
    assert processor.metrics.delivery_errors._value.get() >= 5


def test_records_on_another_partition_than_their_key_owner_are_rerouted_not_merged() -> None:
    from streamrec.stream.topics import owner_partition

    store = InMemoryStore()
    sink = RecordingSink()
    processor = BatchProcessor(SETTINGS, store, sink, partition_count=lambda: 4)
    owner = owner_partition(b"u1", 4)
    wrong = (owner + 1) % 4
    records = [SourceRecord("streamrec.events", wrong, 0, b"u1", orjson.dumps(event(1))),
               SourceRecord("streamrec.events", owner, 0, b"u1", orjson.dumps(event(2)))]
    report = asyncio.run(processor.process(records))
    assert (report.rerouted, report.events) == (1, 1)
    assert [e.event_id for e in store.windows["u1"].entries] == ["e2"]  # only the owner's record merged
    rerouted = [(k, orjson.loads(v)["event_id"]) for k, v in sink.on(SETTINGS.events_topic)]
    assert rerouted == [(b"u1", "e1")] and sink.partitions[0] == owner


def test_owner_partition_is_the_java_clients_murmur2() -> None:
    from streamrec.stream.topics import owner_partition

    # Signed murmur2 hashes from the Java client's own test (UtilsTest.testMurmur2);
    # its DefaultPartitioner picks toPositive(hash) % partitions.
    java = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536, b"abc": 479470107}
    for key, signed in java.items():
        for partitions in (1, 4, 7, 1000):
            assert owner_partition(key, partitions) == (signed & 0x7FFFFFFF) % partitions


class FailingModel:
    version = 4
    context_keys = ()

    def recommend(self, sequences, k, exclude_seen=True):  # noqa: ANN001, ANN201
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION")


def test_a_model_failing_on_a_batch_serves_the_popularity_fallback_and_says_so() -> None:
    store = InMemoryStore()
    sink = RecordingSink()
    processor = BatchProcessor(SETTINGS, store, sink, model=lambda: FailingModel())
    report = run(processor, [record(event(i), i) for i in range(3)])
    assert report.events == 3 and len(report.recommendations) == 1
    assert report.recommendations[0].model_version == 0
    assert "RUNTIME_EXCEPTION" in (processor.encoder_error or "")
    assert processor.metrics.encoder_failures._value.get() == 1
    assert [e.event_id for e in store.windows["u1"].entries] == ["e0", "e1", "e2"]


def test_popularity_top_stays_exact_while_only_touching_new_items() -> None:
    import random
    from collections import Counter

    from streamrec.stream.online import PopularityModel

    rnd = random.Random(3)
    model = PopularityModel()
    reference: Counter[str] = Counter()
    for _ in range(200):
        for _ in range(rnd.randint(1, 30)):
            item = f"i{int(rnd.paretovariate(1.2)) % 500}"
            model.observe(item)
            reference[item] += 1
        got = model.top(12)
        # Same counts in the same order as a full sort (ties may list different items).
        assert [c for _, c in got] == [c for _, c in reference.most_common(12)]
        assert all(reference[i] == c for i, c in got)


def test_popularity_memory_is_bounded() -> None:
    from streamrec.stream.online import PopularityModel

    model = PopularityModel(max_items=100)
    for n in range(1000):
        model.observe(f"i{n}")
    model.observe("i999")
    assert len(model.counts) <= 100 and model.top(1) == [("i999", 2)]


def test_topics_require_two_in_sync_replicas_where_replication_allows() -> None:
    from streamrec.stream.topics import topic_specs

    replicated = topic_specs(Settings(topic_replication=3))
    assert all(t.topic_configs.get("min.insync.replicas") == "2" for t in replicated)
    assert all("min.insync.replicas" not in t.topic_configs for t in topic_specs(Settings(topic_replication=1)))


def test_a_replay_with_other_batch_boundaries_repeats_the_same_user_and_event_ids() -> None:
    """After a crash the same events come back in differently cut batches: every message is a recognisable repeat."""
    store = InMemoryStore()
    first_sink, replay_sink = RecordingSink(), RecordingSink()
    records = [record(event(i, user="u1" if i % 2 else "u2"), i) for i in range(8)]
    first = BatchProcessor(SETTINGS, store, first_sink)
    for cut in ([0, 3], [3, 4], [4, 8]):
        run(first, records[cut[0]:cut[1]])
    restarted = BatchProcessor(SETTINGS, store, replay_sink)  # empty cache, as after a restart
    for cut in ([0, 1], [1, 6], [6, 8]):
        run(restarted, records[cut[0]:cut[1]])

    def ids(sink: RecordingSink) -> set[tuple[str, str]]:
        return {(r.user_id, r.event_id) for r in (Recommendation.from_json(v) for _, v in sink.on(SETTINGS.recommendations_topic))}

    assert ids(replay_sink) <= ids(first_sink), ids(replay_sink) - ids(first_sink)


def test_pipelined_batches_of_one_user_merge_on_each_other_and_leave_in_event_order() -> None:
    # The agent starts the next batch before the previous one is durable (or even encoded).
    processor, store, sink = make()

    async def main() -> list:
        first = await processor.begin([record(event(1), 0)])
        second = await processor.begin([record(event(2), 1)])
        third = await processor.begin([record(event(3), 2)])
        return [await batch.durable for batch in (first, second, third)]

    asyncio.run(main())
    recs = [Recommendation.from_json(v) for _, v in sink.on(SETTINGS.recommendations_topic)]
    assert [r.event_id for r in recs] == ["e1", "e2", "e3"]  # in event order, one per batch
    stored = asyncio.run(store.load_windows(["u1"]))["u1"]
    assert [e.event_id for e in stored.entries] == ["e1", "e2", "e3"]  # each batch merged on the previous one


class ThreadRecordingModel:
    """Ranks items by name and notes the thread each encode ran on."""

    version = 3
    context_keys = ()

    def __init__(self) -> None:
        self.threads: list[str] = []

    def recommend(self, sequences, k, exclude_seen=True):  # noqa: ANN001, ANN201
        import threading

        import numpy as np

        from streamrec.onnx.runtime import TopK

        self.threads.append(threading.current_thread().name)
        return [TopK(item_ids=[f"top{j}" for j in range(k)], scores=[1.0 / (j + 1) for j in range(k)],
                     user_vector=np.full(4, len(s.item_ids), dtype=np.float32)) for s in sequences]


@pytest.mark.parametrize(
    ("users", "inline_max_rows", "explain", "where"),
    [
        (3, 64, False, "loop"),        # a small batch: encoded on the event loop
        (3, 0, False, "encoder"),      # 0 = always the encoder thread
        (70, 64, False, "encoder"),    # a large batch: the encoder thread, the loop keeps fetching
        (10, 64, True, "encoder"),     # explanations: 10 users x (1 + 10 events) = 110 encoder rows
    ],
)
def test_small_batches_are_encoded_on_the_event_loop_and_large_ones_on_the_encoder_thread(
    users: int, inline_max_rows: int, explain: bool, where: str,
) -> None:
    settings = Settings(window_size=3, top_k=2, encode_inline_max_rows=inline_max_rows, explain=explain)
    model = ThreadRecordingModel()
    processor = BatchProcessor(settings, InMemoryStore(), RecordingSink(), model=lambda: model)
    report = run(processor, [record(event(i, user=f"u{i}"), i) for i in range(users)])
    assert len(report.recommendations) == users and {r.model_version for r in report.recommendations} == {3}
    assert len(model.threads) == 1
    on_loop = model.threads[0] == "MainThread"
    assert on_loop == (where == "loop"), model.threads


def test_a_batch_gets_the_same_recommendations_and_state_on_either_thread() -> None:
    outcomes = []
    for inline_max_rows in (0, 1000):
        settings = Settings(window_size=3, top_k=2, encode_inline_max_rows=inline_max_rows)
        store, sink = InMemoryStore(), RecordingSink()
        processor = BatchProcessor(settings, store, sink, model=lambda: ThreadRecordingModel(), clock=lambda: 1_700_000_100.0)
        run(processor, [record(event(i, user=f"u{i % 4}"), i) for i in range(12)])
        outcomes.append((sink.sent, {u: (s.recommendation, s.user_vector) for u, s in store.states.items()}))
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("capacity", [0, 1])
def test_a_cache_smaller_than_the_batches_in_flight_still_merges_each_batch_on_the_one_before(capacity: int) -> None:
    """With STREAMREC_WINDOW_CACHE_USERS=0 the next batch read the store before the last batch's save had landed.

    Its merge started from the window before that batch and overwrote it: the batch's events were gone
    from the stored window, silently.
    """
    store = InMemoryStore()
    processor = BatchProcessor(SETTINGS, store, RecordingSink(), retry_max_delay_s=0.01, cache_capacity=capacity)

    async def main() -> None:
        batches = [await processor.begin([record(event(n, user), n)]) for n, user in ((1, "u1"), (2, "u2"), (3, "u1"))]
        for batch in batches:
            await batch.durable

    asyncio.run(main())
    stored = asyncio.run(store.load_windows(["u1"]))["u1"]
    assert [e.event_id for e in stored.entries] == ["e1", "e3"]
