"""The worker's local cache of the windows it owns, in front of the store."""

from __future__ import annotations

from collections import OrderedDict

from streamrec.stream.state.base import StoredWindow


class WindowCache:
    """Worker-local LRU of windows of users this worker owns.

    Valid only while the worker owns the users' partitions: the app clears it
    on every rebalance, so a window changed by another worker is re-read.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._windows: OrderedDict[str, StoredWindow] = OrderedDict()

    def get(self, user_id: str) -> StoredWindow | None:
        window = self._windows.get(user_id)
        if window is not None:
            self._windows.move_to_end(user_id)
        return window

    def put(self, window: StoredWindow) -> None:
        self._windows[window.user_id] = window
        self._windows.move_to_end(window.user_id)
        while len(self._windows) > self._capacity:
            self._windows.popitem(last=False)

    def clear(self) -> None:
        self._windows.clear()

    def __len__(self) -> int:
        return len(self._windows)
