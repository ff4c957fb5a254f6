"""The store contract against the real Cassandra."""

import asyncio

import pytest

from streamrec.config import Settings
from streamrec.errors import StateStoreError
from streamrec.stream.state.base import StoredWindow
from streamrec.stream.window import WindowEntry
from streamrec.stream.state.cassandra import CassandraStore, connect
from tests.store_contract import CHECKS, StoreContract

pytestmark = pytest.mark.integration


class CassandraContract(StoreContract):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def make_store(self) -> CassandraStore:
        return CassandraStore.open(self.settings)

    async def operator_delete(self, store: CassandraStore, user_id: str) -> None:
        # Plain CQL from a separate session, as an operator would type it in cqlsh.
        cluster, session = connect(self.settings)
        try:
            ks = self.settings.cassandra_keyspace
            session.execute(f"DELETE FROM {ks}.windows WHERE user_id = %s", (user_id,))
            session.execute(f"DELETE FROM {ks}.user_state WHERE user_id = %s", (user_id,))
        finally:
            cluster.shutdown()


@pytest.mark.parametrize("check", CHECKS)
def test_cassandra_store_contract(isolated: Settings, check: str) -> None:
    asyncio.run(getattr(CassandraContract(isolated), check)())


def test_writes_wait_for_a_quorum_of_replicas_by_default(isolated: Settings) -> None:
    """Two replicas configured on a one-node cluster: LOCAL_QUORUM (2) cannot be met, LOCAL_ONE can.

    So a window is never called durable (and its offset never committed) on
    the word of a single replica unless the operator chose that level.
    """
    two_replicas = isolated.with_overrides(cassandra_replication="{'class': 'SimpleStrategy', 'replication_factor': 2}")
    window = StoredWindow("u1", (WindowEntry("e1", "i1", "view", 1),), 1, 1)

    async def save(settings: Settings) -> None:
        store = CassandraStore.open(settings)
        try:
            await store.save_windows([window], ttl_s=3600)
        finally:
            await store.close()

    with pytest.raises(StateStoreError, match="Unavailable"):
        asyncio.run(save(two_replicas))
    asyncio.run(save(two_replicas.with_overrides(cassandra_write_consistency="LOCAL_ONE")))


def test_an_unknown_consistency_level_is_refused_with_the_known_ones() -> None:
    with pytest.raises(Exception, match="LOCAL_QUORUM"):
        Settings(cassandra_read_consistency="SOMETIMES")


def test_a_window_in_an_unknown_format_is_a_store_error_retried_not_a_crash(isolated: Settings) -> None:
    """A window written by a newer worker mid-rollout: the reader backs off and retries (StateStoreError)."""

    async def scenario() -> None:
        store = CassandraStore.open(isolated)
        try:
            cluster, session = connect(isolated)
            try:
                session.execute(f"INSERT INTO {isolated.cassandra_keyspace}.windows (user_id, events, seq) VALUES (%s, %s, 1)",
                                ("u-future", b"\x09future-format"))
            finally:
                cluster.shutdown()
            with pytest.raises(StateStoreError, match="u-future"):
                await store.load_windows(["u-future"])
        finally:
            await store.close()

    asyncio.run(scenario())


def test_a_write_batch_cap_above_the_clusters_limit_falls_back_to_one_user_per_request(
    isolated: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Stock Cassandra refuses batches over 50 KiB: a cap of 200 KiB must not stall the worker on retries.

    The refused save is carried out per user (nothing lost), the operator is
    told which setting to change, and later saves go per user too.
    """
    # Concurrency 1: a save of 30 users packs them all (≈ 105 KiB) into one batch.
    settings = isolated.with_overrides(cassandra_write_batch_kib=200, cassandra_concurrency=1)
    users = [f"big-{i}" for i in range(60)]
    windows = [StoredWindow(u, tuple(WindowEntry(f"{u}-e{j}-{'x' * 40}", f"item-{j}", "view", 1_000 + j) for j in range(50)), 50, 1)
               for u in users]

    async def scenario() -> dict[str, StoredWindow]:
        store = CassandraStore.open(settings)
        try:
            await store.save(windows[:30], [], ttl_s=3600)
            await store.save(windows[30:], [], ttl_s=3600)
            return await store.load_windows(users)
        finally:
            await store.close()

    assert asyncio.run(scenario()) == {w.user_id: w for w in windows}
    refusals = [r for r in caplog.records if "STREAMREC_CASSANDRA_WRITE_BATCH_KIB" in r.getMessage()]
    assert len(refusals) == 1
