"""The harness the tests and benchmarks share: isolation that cannot collide, failures that say why."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from streamrec.config import Settings
from streamrec.stream.state.cassandra import check_keyspace_name
from streamrec.testing.isolation import free_port, isolated_settings
from streamrec.testing.process import ServiceFailed, ServiceProcess


def test_isolated_runs_share_no_topic_keyspace_or_group() -> None:
    base = Settings()
    a = isolated_settings(base, "bench-e2e", "1")
    b = isolated_settings(base, "bench-e2e", "2")
    untagged = [isolated_settings(base, "test") for _ in range(3)]
    for one, other in [(a, b), *zip(untagged, untagged[1:])]:
        assert one.topic_prefix != other.topic_prefix
        assert one.cassandra_keyspace != other.cassandra_keyspace
        assert one.consumer_group != other.consumer_group
    assert a.events_topic.startswith("bench-e2e-1.") and a.cassandra_keyspace == "bench_e2e_1"
    check_keyspace_name(untagged[0].cassandra_keyspace)  # a name CQL accepts unquoted
    assert base.topic_prefix not in (a.topic_prefix, untagged[0].topic_prefix)


def test_a_process_that_exits_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    crashing = ServiceProcess("crasher", [sys.executable, "-c", "print('no broker here'); raise SystemExit(3)"],
                              Settings(), tmp_path / "crasher.log")
    with pytest.raises(ServiceFailed, match=r"(?s)crasher exited with 3.*no broker here"):
        crashing.start(wait_s=30)
    assert not crashing.alive()


def test_a_process_that_never_gets_healthy_is_stopped(tmp_path: Path) -> None:
    silent = ServiceProcess("silent", [sys.executable, "-c", "import time; time.sleep(600)"], Settings(),
                            tmp_path / "silent.log")
    with pytest.raises(ServiceFailed, match="not healthy after 1s"):
        silent.start(wait_s=1)
    assert not silent.alive()  # not left behind


def test_endpoints_of_a_process_that_does_not_answer_read_as_empty(tmp_path: Path) -> None:
    nobody = ServiceProcess("nobody", [], Settings(), tmp_path / "w.log", web_port=free_port())
    assert nobody.health() == {} and nobody.health_status() == 0 and nobody.metrics() == ""
    assert nobody.terminate() == 0  # never started: nothing to stop
