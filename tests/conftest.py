"""Shared fixtures.

Integration tests talk to the real Kafka and Cassandra. The ``infra`` fixture
reuses servers that already answer (CI starts them with `streamrec infra up`)
or starts them itself; if they cannot be reached the tests fail, never skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streamrec.config import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def infra(base_settings: Settings) -> Settings:
    """Kafka and Cassandra up and answering (started here if needed)."""
    from streamrec.deploy import infra as local

    missing = [s for s in local.SERVERS if not local.is_healthy(base_settings, s)]
    if missing:
        local.up(base_settings, tuple(missing))
    return base_settings


@pytest.fixture
def isolated(infra: Settings) -> Iterator[Settings]:
    """Settings with a fresh topic prefix, keyspace and group, so tests never see each other's data.

    At teardown the keyspace and the topics are dropped, so the servers do not
    collect one keyspace per test run.
    """
    from streamrec.testing.isolation import drop_isolated, isolated_settings  # the Cassandra driver

    settings = isolated_settings(infra, "test")
    yield settings
    drop_isolated(settings)
