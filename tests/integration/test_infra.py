"""The foundation against the real servers: clients, Faust on our broker, infra lifecycle."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streamrec.config import Settings
from streamrec.deploy import infra as local
from streamrec.testing.isolation import delete_topics_named, free_port
from tests.integration.helpers import wait_for_group

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent


async def _create_topics(bootstrap: str, names: list[str], partitions: int = 4) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


async def _consume(bootstrap: str, topic: str, expected: int, timeout: float) -> list[tuple[bytes, bytes]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=None, enable_auto_commit=False)
    await consumer.start()
    got: list[tuple[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                got.extend((r.key, r.value) for r in records)
    finally:
        await consumer.stop()
    return got


def test_kafka_round_trip_with_aiokafka(infra: Settings) -> None:
    topic = f"roundtrip-{uuid.uuid4().hex[:8]}"

    async def run() -> list[tuple[bytes, bytes]]:
        await _create_topics(infra.kafka_bootstrap, [topic])
        producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for i in range(100):
                await producer.send(topic, key=f"u{i % 7}".encode(), value=f"m{i}".encode())
            await producer.flush()
        finally:
            await producer.stop()
        return await _consume(infra.kafka_bootstrap, topic, 100, timeout=30)

    try:
        got = asyncio.run(run())
    finally:
        delete_topics_named(infra, [topic])
    assert sorted(v for _, v in got) == sorted(f"m{i}".encode() for i in range(100))


def test_cql_round_trip_with_prepared_statements(infra: Settings) -> None:
    from cassandra.cluster import Cluster
    from cassandra.policies import RoundRobinPolicy

    cluster = Cluster(infra.cassandra_contact_points, port=infra.cassandra_port, protocol_version=5,
                      load_balancing_policy=RoundRobinPolicy())
    session = cluster.connect()
    try:
        ks = f"rt_{uuid.uuid4().hex[:8]}"
        session.execute(f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
        session.execute(f"CREATE TABLE {ks}.kv (k text PRIMARY KEY, v int)")
        insert = session.prepare(f"INSERT INTO {ks}.kv (k, v) VALUES (?, ?)")
        select = session.prepare(f"SELECT v FROM {ks}.kv WHERE k = ?")
        for i in range(20):
            session.execute(insert, (f"key-{i}", i * i))
        assert [session.execute(select, (f"key-{i}",)).one().v for i in range(20)] == [i * i for i in range(20)]
        session.execute(f"DROP KEYSPACE {ks}")
    finally:
        cluster.shutdown()


def _start_echo_worker(env: dict[str, str], name: str, log_dir: Path) -> subprocess.Popen:
    worker_env = {**os.environ, **env, "ECHO_WORKER": name, "PYTHONPATH": str(HERE),
                  "ECHO_DATADIR": str(log_dir / name)}
    log = open(log_dir / f"{name}.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "faust", "-A", "echo_app:app", "worker", "-l", "warn",
         "--without-web"],
        env=worker_env, stdout=log, stderr=subprocess.STDOUT, cwd=str(HERE),
    )


def test_faust_agent_through_our_broker_with_rebalance(infra: Settings, tmp_path: Path) -> None:
    """A Faust agent consumes and produces through the broker while a second worker joins and the first leaves."""
    tag = uuid.uuid4().hex[:8]
    env = {"ECHO_APP_ID": f"echo-{tag}", "ECHO_IN": f"echo-in-{tag}", "ECHO_OUT": f"echo-out-{tag}",
           "ECHO_BOOTSTRAP": infra.kafka_bootstrap}
    asyncio.run(_create_topics(infra.kafka_bootstrap, [env["ECHO_IN"], env["ECHO_OUT"]]))

    async def produce(start: int, count: int) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for i in range(start, start + count):
                await producer.send(env["ECHO_IN"], key=f"k{i % 13}".encode(), value=f"{i}".encode())
            await producer.flush()
        finally:
            await producer.stop()

    def outputs(expected: int) -> dict[int, set[str]]:
        got = asyncio.run(_consume(infra.kafka_bootstrap, env["ECHO_OUT"], expected, timeout=150))
        seen: dict[int, set[str]] = {}
        for _, value in got:
            number, worker = value.decode().split("|")
            seen.setdefault(int(number), set()).add(worker)
        return seen

    first = _start_echo_worker(env, "w1", tmp_path)
    second = None
    try:
        asyncio.run(produce(0, 200))
        assert len(outputs(200)) == 200, "first worker did not echo every message"
        second = _start_echo_worker(env, "w2", tmp_path)
        wait_for_group(infra.kafka_bootstrap, env["ECHO_APP_ID"], members=2)  # the rebalance onto both
        asyncio.run(produce(200, 200))
        seen = outputs(400)
        assert set(seen) == set(range(400))
        first.terminate()
        first.wait(timeout=60)
        asyncio.run(produce(400, 200))
        seen = outputs(600)
        assert set(seen) == set(range(600)), "messages lost across join/leave"
        workers = set().union(*seen.values())
        assert "w2" in workers, "the second worker never received partitions"
        assert all("w2" in seen[i] for i in range(400, 600)), "after w1 left, w2 did not take over"
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        delete_topics_named(infra, [env["ECHO_IN"], env["ECHO_OUT"], f"{env['ECHO_APP_ID']}-"])
        for name in ("w1", "w2"):
            log = tmp_path / f"{name}.log"
            if log.exists():
                print(f"--- {name} log tail ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:]))


def test_infra_status_up_and_down(base_settings: Settings, tmp_path: Path) -> None:
    """A second, private Kafka on other ports: status reports it up, down stops exactly it."""
    port = free_port()
    settings = base_settings.with_overrides(
        state_dir=tmp_path / "state", artifacts_dir=base_settings.lib_path,
        kafka_port=port, kafka_controller_port=free_port(), kafka_heap="256m",
        kafka_bootstrap=f"localhost:{port}",
    )
    assert local.status(settings, "kafka").healthy is False
    local.up(settings, ("kafka",))
    try:
        st = local.status(settings, "kafka")
        assert st.healthy and st.pid is not None
        pid = st.pid
        # idempotent: a second up keeps the same process
        local.up(settings, ("kafka",))
        assert local.status(settings, "kafka").pid == pid
    finally:
        local.down(settings, ("kafka",))
    st = local.status(settings, "kafka")
    assert not st.healthy and st.pid is None
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]
    # the shared servers were not touched
    assert local.is_healthy(base_settings, "kafka")


def test_infra_refuses_a_taken_port(base_settings: Settings, tmp_path: Path) -> None:
    import socket

    from streamrec.errors import InfraError

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        settings = base_settings.with_overrides(state_dir=tmp_path, artifacts_dir=base_settings.lib_path,
                                                kafka_port=port, kafka_bootstrap=f"localhost:{port}")
        with pytest.raises(InfraError, match=f"port {port} is already in use"):
            local.up(settings, ("kafka",))
