"""The encoder a worker serves, and the switch to a new one between micro-batches.

A new version is loaded, verified (checksum, smoke inference) and warmed in a
background thread; the agent calls :meth:`ModelHolder.maybe_swap` after each
batch, so a batch is always served by exactly one version and serving never
waits for a load. A version that fails verification is refused loudly and the
current one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from streamrec.errors import ModelError

log = logging.getLogger(__name__)


def load_encoder(path: Path, threads: int = 0) -> Any:
    """Load, verify and warm an artifact directory (raises ModelError when it is unusable)."""
    from streamrec.models.features import UserSequence
    from streamrec.onnx.runtime import EncoderSession

    encoder = EncoderSession.load(path, threads=threads)
    # Smoke inference: a user the model has never seen, with an unknown item.
    smoke = encoder.recommend([UserSequence(["__smoke_unknown_item__"], ["view"], [0])], k=1)
    if len(smoke) != 1:
        raise ModelError(f"model at {path} failed the smoke inference")
    return encoder


class ModelHolder:
    """Holds the serving encoder (``current``) and a pending replacement."""

    def __init__(self, loader: Callable[[Path], Any] | None = None, *, threads: int = 0) -> None:
        self._loader = loader or (lambda path: load_encoder(path, threads=threads))
        self.current: Any | None = None
        self._pending: Future | None = None
        self._pending_path: Path | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self.refused: list[tuple[str, str]] = []

    @property
    def version(self) -> int:
        return int(getattr(self.current, "version", 0)) if self.current is not None else 0

    def load_now(self, path: Path) -> None:
        """Load synchronously (worker start-up)."""
        self.current = self._loader(path)
        self._pending_path = path
        log.info("serving model version %s from %s", self.version, path)

    def wants(self, path: Path) -> bool:
        """Whether ``path`` is neither being served, nor loading, nor already refused."""
        serving = getattr(getattr(self.current, "artifact", None), "path", None)
        return path != serving and path != self._pending_path and str(path) not in {p for p, _ in self.refused}

    def request(self, path: Path) -> None:
        """Start loading ``path`` in the background; it is switched to by :meth:`maybe_swap`."""
        if self._pending is not None and not self._pending.done():
            log.info("a model load is in progress; %s queued after it", path)
        self._pending_path = path
        self._pending = self._executor.submit(self._loader, path)

    async def maybe_swap(self) -> bool:
        """Switch to the pending model if it finished loading; never blocks on a load."""
        pending = self._pending
        if pending is None or not pending.done():
            return False
        self._pending = None
        try:
            encoder = pending.result()
        except (ModelError, OSError, ValueError, RuntimeError) as exc:
            self.refused.append((str(self._pending_path), str(exc)))
            log.error("REFUSED model %s: %s — still serving version %s", self._pending_path, exc, self.version)
            return False
        previous = self.version
        # The old encoder is not closed here: the idle-swap timer can run while a
        # batch is still encoding on it. Dropping the last reference is enough
        # (its shard threads exit when it is garbage-collected).
        self.current = encoder
        log.warning("switched model version %s -> %s", previous, self.version)
        await asyncio.sleep(0)
        return True

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        _close(self.current)


def _close(encoder: Any | None) -> None:
    close = getattr(encoder, "close", None)
    if close is not None:
        close()
