"""The store contract against the real Cassandra."""

import asyncio

import pytest

from streamrec.config import Settings
from streamrec.stream.state.cassandra import CassandraStore
from tests.store_contract import CHECKS, StoreContract

pytestmark = pytest.mark.integration


class CassandraContract(StoreContract):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def make_store(self) -> CassandraStore:
        return CassandraStore.open(self.settings)


@pytest.mark.parametrize("check", CHECKS)
def test_cassandra_store_contract(isolated: Settings, check: str) -> None:
    asyncio.run(getattr(CassandraContract(isolated), check)())
