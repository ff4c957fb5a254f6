"""Records that once stopped a partition for good: the worker dead-letters them and goes on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from confluent_kafka import Producer

from streamrec.config import Settings
from streamrec.stream.events import DeadLetter
from streamrec.testing.process import ServiceProcess
from tests.integration.helpers import (
    WINDOW,
    events_as_records,
    expected_windows,
    produce,
    read_topic,
    synthetic,
    wait_for_windows,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(isolated: Settings, tmp_path: Path) -> Settings:
    return isolated.with_overrides(window_size=WINDOW, model_dir=tmp_path / "no-models", topic_partitions=4)


def test_a_record_with_a_huge_key_is_dead_lettered_and_its_partition_goes_on(settings: Settings, tmp_path: Path) -> None:
    """A 450 KB key (alone, and with a 500 KB value) once made a dead letter too big to send: crash, restart, crash."""
    worker = ServiceProcess.worker(settings, tmp_path / "worker.log").start()
    try:
        huge_key = b"k" * 450_000
        poison = [(huge_key, b'{"event_id": "x"}'), (huge_key + b"2", b"{" * 500_000)]
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all"})
        for partition in range(settings.topic_partitions):  # one of each in front of every partition's events
            for key, value in poison:
                producer.produce(settings.events_topic, key=key, value=value, partition=partition)
        assert producer.flush(60) == 0
        valid = synthetic(800, 40, seed=21)
        produce(settings, events_as_records(valid))

        expected = expected_windows(valid, WINDOW)
        assert wait_for_windows(settings, expected) == expected, worker.log_tail()
        letters = read_topic(settings, settings.dlq_topic, min_messages=2 * settings.topic_partitions)
        assert len(letters) == 2 * settings.topic_partitions
        for kafka_key, value in letters:
            letter = DeadLetter.from_json(value)
            assert letter.key_truncated and letter.key_size in (450_000, 450_001)
            assert kafka_key == letter.key_sha256.encode()
            assert letter.key_sha256 in {hashlib.sha256(k).hexdigest() for k, _ in poison}
        assert worker.alive(), worker.log_tail()
    finally:
        worker.kill()
