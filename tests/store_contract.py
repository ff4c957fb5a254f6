"""The WindowStore contract, run against the in-memory twin (unit) and Cassandra (integration)."""

from __future__ import annotations


from streamrec.stream.state.base import StoredWindow, UserState, WindowStore
from streamrec.stream.window import WindowEntry


def _window(user: str, n: int, seq: int) -> StoredWindow:
    return StoredWindow(user, tuple(WindowEntry(f"{user}-e{i}", f"item-{i}", "view", 1_000 + i) for i in range(n)), seq)


class StoreContract:
    """Subclasses provide ``store`` (an async factory) and run every check."""

    async def make_store(self) -> WindowStore:  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    async def check_round_trip(self) -> None:
        store = await self.make_store()
        try:
            await store.save_windows([_window("u1", 3, 3), _window("u2", 1, 1)], ttl_s=3600)
            loaded = await store.load_windows(["u1", "u2", "nobody"])
            assert loaded["u1"] == _window("u1", 3, 3)
            assert loaded["u2"] == _window("u2", 1, 1)
            assert "nobody" not in loaded
        finally:
            await store.close()

    async def check_newer_seq_wins_over_a_late_stale_write(self) -> None:
        store = await self.make_store()
        try:
            await store.save_windows([_window("u1", 5, 5)], ttl_s=3600)
            await store.save_windows([_window("u1", 4, 4)], ttl_s=3600)  # a stale owner, late
            assert (await store.load_windows(["u1"]))["u1"] == _window("u1", 5, 5)
            await store.save_windows([_window("u1", 6, 6)], ttl_s=3600)
            assert (await store.load_windows(["u1"]))["u1"].seq == 6
        finally:
            await store.close()

    async def check_user_state_round_trip(self) -> None:
        store = await self.make_store()
        try:
            state = UserState("u9", 3, b"\x00\x00\x80?", b'{"v":1}', "e-7", 1_700_000_000_000)
            await store.save_user_states([state])
            got = await store.load_user_state("u9")
            assert got is not None
            assert (got.model_version, got.user_vector, got.recommendation, got.last_event_id) == (3, b"\x00\x00\x80?", b'{"v":1}', "e-7")
            assert await store.load_user_state("nobody") is None
        finally:
            await store.close()

    async def check_save_writes_windows_and_states_together(self) -> None:
        store = await self.make_store()
        try:
            state = UserState("u1", 2, b"", b'{"v":1}', "u1-e2", 1)
            other = UserState("u2", 2, b"", b'{"v":1}', "u2-e0", 1)  # state only: window unchanged (a replay)
            await store.save([_window("u1", 3, 3)], [state, other], ttl_s=3600)
            assert (await store.load_windows(["u1"]))["u1"] == _window("u1", 3, 3)
            assert (await store.load_user_state("u1")).last_event_id == "u1-e2"
            assert (await store.load_user_state("u2")).last_event_id == "u2-e0"
            await store.save([_window("u1", 2, 2)], [], ttl_s=3600)  # stale
            assert (await store.load_windows(["u1"]))["u1"].seq == 3
        finally:
            await store.close()

    async def check_identifiers_are_data(self) -> None:
        store = await self.make_store()
        try:
            evil = "u'; DROP TABLE windows; --"
            await store.save_windows([_window(evil, 2, 2)], ttl_s=3600)
            assert (await store.load_windows([evil]))[evil].seq == 2
        finally:
            await store.close()


CHECKS = [
    "check_round_trip",
    "check_newer_seq_wins_over_a_late_stale_write",
    "check_user_state_round_trip",
    "check_identifiers_are_data",
    "check_save_writes_windows_and_states_together",
]
