"""What a test or benchmark run owns: its own topic prefix, keyspace, consumer group, and the ports it serves on.

Everything a run creates carries its tag, so runs never see each other's data
(nor the demo's), and :func:`drop_isolated` removes it all afterwards: without
that, a Cassandra holding hundreds of keyspaces made connecting slow.
"""

from __future__ import annotations

import logging
import socket
import uuid
from typing import Sequence

from streamrec.config import Settings
from streamrec.stream.state.cassandra import check_keyspace_name, connect

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port free on this host now (the OS picks it), for a server a run starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def new_tag() -> str:
    """A short random tag that names one run's topics, keyspace and group."""
    return uuid.uuid4().hex[:10]


def isolated_settings(base: Settings, name: str, tag: str | None = None, **overrides: object) -> Settings:
    """``base`` with a topic prefix, keyspace and consumer group of this run's own (``<name>-<tag>``).

    ``name`` says who made them (``test``, ``bench-e2e``), so a leftover on the
    servers can be traced; it must be letters, digits and dashes.
    """
    label = f"{name}-{tag or new_tag()}"
    return base.with_overrides(
        topic_prefix=label,
        cassandra_keyspace=label.replace("-", "_"),
        consumer_group=label,
        **overrides,
    )


def drop_isolated(settings: Settings, timeout_s: float = 60.0) -> None:
    """Drop the run's keyspace and delete its topics (its prefix, and the internal topics of its consumer groups).

    Best effort: a server that a fault test left restarting must not turn a
    passed run into an error, so a failure is logged, not raised.
    """
    drop_keyspace(settings, timeout_s)
    delete_topics_named(settings, (f"{settings.topic_prefix}.", f"{settings.consumer_group}-"), timeout_s)


def drop_keyspace(settings: Settings, timeout_s: float = 60.0) -> None:
    """Drop ``settings.cassandra_keyspace`` (best effort, like :func:`drop_isolated`)."""
    try:
        cluster, session = connect(settings, timeout_s=timeout_s)
        try:
            session.execute(f"DROP KEYSPACE IF EXISTS {check_keyspace_name(settings.cassandra_keyspace)}",
                            timeout=timeout_s)
        finally:
            cluster.shutdown()
    except Exception as exc:  # noqa: BLE001 - best effort, see drop_isolated
        log.warning("could not drop keyspace %s: %s: %s", settings.cassandra_keyspace, type(exc).__name__, exc)


def delete_topics_named(settings: Settings, prefixes: Sequence[str], timeout_s: float = 60.0) -> None:
    """Delete every topic whose name starts with one of ``prefixes`` (best effort, like :func:`drop_isolated`)."""
    from confluent_kafka.admin import AdminClient  # the test/bench extra; not on `streamrec`'s start-up path

    try:
        admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(tuple(prefixes))]
        for future in (admin.delete_topics(names, operation_timeout=timeout_s).values() if names else ()):
            future.result(timeout_s)
    except Exception as exc:  # noqa: BLE001 - best effort
        log.warning("could not delete topics %s: %s: %s", list(prefixes), type(exc).__name__, exc)
