"""Security against real servers: Kafka SASL/PLAIN end to end, and secrets never leak."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from aiokafka.errors import AuthenticationFailedError, KafkaError, SaslAuthenticationFailed

from streamrec.config import Settings
from streamrec.deploy import infra as local
from streamrec.errors import StreamrecError
from streamrec.stream.generator import SyntheticConfig, generate_events
from streamrec.stream.producer import EventProducer
from streamrec.stream.topics import ensure_topics
from streamrec.testing.isolation import free_port
from streamrec.testing.process import ServiceProcess
from tests.integration.helpers import expected_windows, wait_for_windows

pytestmark = pytest.mark.integration
PASSWORD = "s3cret-Pa55-do-not-log"


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A private Kafka with a SASL/PLAIN listener (users: streamrec, admin)."""
    base = Settings()
    port = free_port()
    broker = base.with_overrides(
        state_dir=tmp_path_factory.mktemp("sasl-kafka"), artifacts_dir=base.lib_path,
        kafka_port=port, kafka_controller_port=free_port(), kafka_sasl_port=free_port(), kafka_heap="256m",
        kafka_bootstrap=f"localhost:{port}", kafka_sasl_users=f"streamrec:{PASSWORD},admin:adm1n-pw",
    )
    local.up(broker, ("kafka",))
    yield broker
    local.down(broker, ("kafka",))


def client_settings(broker: Settings, isolated: Settings, tmp_path: Path, password: str) -> Settings:
    return isolated.with_overrides(
        kafka_bootstrap=f"localhost:{broker.kafka_sasl_port}", kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="streamrec", kafka_sasl_password=password, model_dir=tmp_path / "no-models",
        window_size=10,
    )


async def _produce(settings: Settings, events: list[dict]) -> None:
    async with EventProducer(settings) as producer:
        for event in events:
            await producer.send(event)
        await producer.flush()


def test_worker_and_producer_over_sasl_plain(sasl_broker: Settings, isolated: Settings, tmp_path: Path) -> None:
    settings = client_settings(sasl_broker, isolated, tmp_path, PASSWORD)
    asyncio.run(ensure_topics(settings))
    events = list(generate_events(SyntheticConfig(num_users=40, num_items=100, num_events=500, seed=3)))
    worker = ServiceProcess.worker(settings, tmp_path / "worker.log").start()
    try:
        asyncio.run(_produce(settings, events))
        expected = expected_windows(events, 10)
        assert wait_for_windows(settings, expected) == expected
    finally:
        worker.kill()
    assert PASSWORD not in (tmp_path / "worker.log").read_text(errors="replace"), "the password leaked into logs"


def test_wrong_password_is_refused_without_echoing_it(
    sasl_broker: Settings, isolated: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-Pa55word-xyz"
    settings = client_settings(sasl_broker, isolated, tmp_path, wrong)
    with caplog.at_level(logging.ERROR), pytest.raises((KafkaError, StreamrecError, OSError)) as info:
        asyncio.run(_produce(settings, [{"event_id": "e", "user_id": "u", "item_id": "i", "event_type": "view", "ts": 1}]))
    chain = list(_causes(info.value))
    # Refused for the password, not for any network trouble: the broker answered that authentication
    # failed (aiokafka logs the broker's answer and raises "unable to bootstrap").
    said = [repr(e) for e in chain] + [r.getMessage() for r in caplog.records]
    assert any(isinstance(e, (SaslAuthenticationFailed, AuthenticationFailedError)) for e in chain) or any(
        "SaslAuthenticationFailed" in line and "Authentication failed" in line for line in said), said
    assert all(wrong not in line for line in said)


def _causes(exc: BaseException | None):  # noqa: ANN202
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def test_settings_never_print_secrets(isolated: Settings) -> None:
    settings = isolated.with_overrides(kafka_sasl_password=PASSWORD, cassandra_password=PASSWORD,
                                       kafka_sasl_users=f"u:{PASSWORD}")
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert PASSWORD not in text
