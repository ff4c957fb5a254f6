"""The StateStore contract, run against the in-memory twin (unit) and Cassandra (integration)."""

from __future__ import annotations

import asyncio
import time

from streamrec.stream.state.base import StateStore, StoredWindow, UserState, next_write_us
from streamrec.stream.window import WindowEntry

T0_US = 1_700_000_000_000_000  # a fixed write timestamp, for checks that order writes by hand


def _window(user: str, n: int, seq: int, written_us: int | None = None) -> StoredWindow:
    entries = tuple(WindowEntry(f"{user}-e{i}", f"item-{i}", "view", 1_000 + i) for i in range(n))
    return StoredWindow(user, entries, seq, T0_US + seq if written_us is None else written_us)


def _now_us() -> int:
    return time.time_ns() // 1000


class StoreContract:
    """Subclasses provide ``make_store`` (an async factory) and ``operator_delete``, and run every check."""

    async def make_store(self) -> StateStore:  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    async def operator_delete(self, store: StateStore, user_id: str) -> None:  # pragma: no cover
        """Delete the user's rows the way an operator would (a plain DELETE at the wall clock)."""
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

    async def check_newer_write_wins_over_a_late_stale_write(self) -> None:
        store = await self.make_store()
        try:
            await store.save_windows([_window("u1", 5, 5)], ttl_s=3600)
            await store.save_windows([_window("u1", 4, 4)], ttl_s=3600)  # a stale owner, late
            assert (await store.load_windows(["u1"]))["u1"] == _window("u1", 5, 5)
            await store.save_windows([_window("u1", 6, 6)], ttl_s=3600)
            assert (await store.load_windows(["u1"]))["u1"].seq == 6
        finally:
            await store.close()

    async def check_loaded_window_carries_its_write_timestamp(self) -> None:
        store = await self.make_store()
        try:
            await store.save_windows([_window("u1", 2, 2, written_us=T0_US + 77)], ttl_s=3600)
            assert (await store.load_windows(["u1"]))["u1"].written_us == T0_US + 77
        finally:
            await store.close()

    async def check_a_returning_user_is_stored_again_after_the_window_expired(self) -> None:
        """The expired window keeps its write timestamp; the new, smaller window must still be stored."""
        store = await self.make_store()
        try:
            await store.save_windows([_window("u1", 5, 25, written_us=next_write_us(0, _now_us()))], ttl_s=1)
            await asyncio.sleep(2.2)
            assert "u1" not in await store.load_windows(["u1"])  # expired
            # The user comes back: the worker starts from an empty window (seq 0, never written).
            returning = _window("u1", 3, 3, written_us=next_write_us(0, _now_us()))
            await store.save_windows([returning], ttl_s=3600)
            loaded = await store.load_windows(["u1"])
            assert "u1" in loaded, "the returning user's window was hidden by the expired one"
            assert [e.event_id for e in loaded["u1"].entries] == ["u1-e0", "u1-e1", "u1-e2"]
        finally:
            await store.close()

    async def check_writes_after_an_operator_delete_are_stored(self) -> None:
        """A DELETE at the wall clock must not hide the next write of a worker that still caches the window."""
        store = await self.make_store()
        try:
            first = _window("u1", 4, 4, written_us=next_write_us(0, _now_us()))
            await store.save([first], [UserState("u1", 1, b"", b"{}", "u1-e3", 1, first.written_us)], ttl_s=3600)
            await self.operator_delete(store, "u1")
            assert "u1" not in await store.load_windows(["u1"])
            assert await store.load_user_state("u1") is None
            # The owner still holds ``first`` in its cache; its next write follows from it.
            nxt = next_write_us(first.written_us, _now_us())
            await store.save([_window("u1", 5, 5, written_us=nxt)], [UserState("u1", 1, b"", b"{}", "u1-e4", 2, nxt)], 3600)
            loaded = await store.load_windows(["u1"])
            assert "u1" in loaded and len(loaded["u1"].entries) == 5, "the write after the DELETE was hidden"
            state = await store.load_user_state("u1")
            assert state is not None and state.last_event_id == "u1-e4"
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
            state = UserState("u1", 2, b"", b'{"v":1}', "u1-e2", 1, T0_US + 3)
            other = UserState("u2", 2, b"", b'{"v":1}', "u2-e0", 1, T0_US + 3)  # state only: window unchanged (a replay)
            await store.save([_window("u1", 3, 3)], [state, other], ttl_s=3600)
            assert (await store.load_windows(["u1"]))["u1"] == _window("u1", 3, 3)
            assert (await store.load_user_state("u1")).last_event_id == "u1-e2"
            assert (await store.load_user_state("u2")).last_event_id == "u2-e0"
            await store.save([_window("u1", 2, 2)], [], ttl_s=3600)  # stale
            assert (await store.load_windows(["u1"]))["u1"].seq == 3
        finally:
            await store.close()

    async def check_a_save_of_many_users_stores_each_of_them(self) -> None:
        # A worker's batch: hundreds of users with full windows saved in one call (the
        # Cassandra store packs them into multi-user requests; none may be lost or refused).
        store = await self.make_store()
        try:
            users = [f"many-{i}" for i in range(300)]
            windows = [_window(u, 50, 50) for u in users]
            states = [UserState(u, 2, b"\x00" * 256, b'{"items":"' + b"x" * 900 + b'"}', f"{u}-e49", 1, T0_US + 50)
                      for u in users[:250]]  # the last 50: window only
            await store.save(windows, states, ttl_s=3600)
            assert await store.load_windows(users) == {w.user_id: w for w in windows}
            for state in states[::50]:
                got = await store.load_user_state(state.user_id)
                assert got is not None and (got.last_event_id, got.recommendation) == (state.last_event_id, state.recommendation)
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
    "check_newer_write_wins_over_a_late_stale_write",
    "check_loaded_window_carries_its_write_timestamp",
    "check_a_returning_user_is_stored_again_after_the_window_expired",
    "check_writes_after_an_operator_delete_are_stored",
    "check_user_state_round_trip",
    "check_a_save_of_many_users_stores_each_of_them",
    "check_identifiers_are_data",
    "check_save_writes_windows_and_states_together",
]
