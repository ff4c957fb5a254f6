"""The store contract against the in-memory twin."""

import asyncio

import pytest

from streamrec.stream.state.memory import InMemoryStore
from tests.store_contract import CHECKS, StoreContract


class MemoryContract(StoreContract):
    async def make_store(self) -> InMemoryStore:
        return InMemoryStore()

    async def operator_delete(self, store: InMemoryStore, user_id: str) -> None:
        store.delete_user(user_id)


@pytest.mark.parametrize("check", CHECKS)
def test_memory_store_contract(check: str) -> None:
    asyncio.run(getattr(MemoryContract(), check)())
