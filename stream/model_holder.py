"""The model holder: the served model a worker answers with, and the switch to a new one between micro-batches.

A new version is loaded, verified (checksum, smoke inference at the
configured top-K) and warmed in a background thread; the agent calls
:meth:`ModelHolder.maybe_swap` after each batch, so a batch is always served
by exactly one version and serving never waits for a load. Any failure of a
version — a bad checksum, a graph ONNX Runtime rejects, a catalogue smaller
than top-K — is a refusal: logged, counted, shown on ``/health``, and the
current version (or the popularity fallback) keeps serving. A refused version
is tried again after a backoff (the file may have been mid-copy), never in a
loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

from streamrec.errors import ModelError
from streamrec.models.features import UserSequence
from streamrec.onnx.runtime import ServedModel, TopK
from streamrec.stream.item_vectors import LiveItems, load_content_aware

log = logging.getLogger(__name__)

RETRY_FIRST_S = 30.0
RETRY_MAX_S = 600.0


class Recommender(Protocol):
    """What the worker needs of a served model: :class:`~streamrec.onnx.runtime.ServedModel`, or a test's stand-in.

    The holder also reads ``artifact.path`` and calls ``close()`` when a model
    has them (a stand-in need not).
    """

    version: int
    # The event context keys this model reads (() for none): window entries keep these.
    context_keys: tuple[str, ...]

    def recommend(self, sequences: Sequence[UserSequence], k: int, exclude_seen: bool = True) -> list[TopK]: ...


def load_served_model(path: Path, threads: int = 0, top_k: int = 1, live_items: LiveItems | None = None) -> ServedModel:
    """Load, verify and warm an artifact directory; any failure is a ModelError naming the reason.

    With ``live_items``, a version that ships a content head also ranks the
    items its graph does not know (:mod:`streamrec.stream.item_vectors`).
    """
    try:
        if live_items is None:
            model = ServedModel.load(path, threads=threads)
        else:
            model = load_content_aware(path, live_items, threads=threads)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own errors (Fail, InvalidGraph, ...) derive from Exception
        raise ModelError(f"model at {path} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    if top_k > model.n_recommendable:
        raise ModelError(
            f"model at {path} can recommend {model.n_recommendable} items, fewer than STREAMREC_TOP_K={top_k}"
        )
    try:
        # Smoke inference at the served top-K: a user the model has never seen, with an unknown item.
        smoke = model.recommend([UserSequence(["__smoke_unknown_item__"], ["view"], [0])], k=top_k)
    except Exception as exc:  # noqa: BLE001 - same: whatever the runtime raises is a refusal
        raise ModelError(f"model at {path} failed the smoke inference: {type(exc).__name__}: {exc}") from exc
    if len(smoke) != 1:
        raise ModelError(f"model at {path} failed the smoke inference")
    return model


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a model version was refused, and when it may be tried again."""

    path: str
    reason: str
    attempts: int
    retry_at: float  # on the holder's clock (monotonic by default), not a time of day


class ModelHolder:
    """Holds the live served model (``current``) and a pending replacement."""

    def __init__(
        self,
        loader: Callable[[Path], Recommender] | None = None,
        *,
        threads: int = 0,
        top_k: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_refused: Callable[[Refusal], None] = lambda refusal: None,
        live_items: LiveItems | None = None,
    ) -> None:
        self._loader: Callable[[Path], Recommender] = loader or (
            lambda path: load_served_model(path, threads=threads, top_k=top_k, live_items=live_items))
        self._clock = clock
        self._on_refused = on_refused
        self.current: Recommender | None = None
        self._pending: Future[Recommender] | None = None
        self._pending_path: Path | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self.refused: dict[str, Refusal] = {}
        self.last_refusal: Refusal | None = None

    @property
    def decided(self) -> bool:
        """A model serves, or the popularity fallback does for a known reason (none published, or refused)."""
        loading = self._pending is not None and not self._pending.done()
        return self.current is not None or self.last_refusal is not None or not loading

    def refusal_report(self) -> dict[str, object] | None:
        """The latest refusal for ``/health``: path, reason, attempts and seconds until the next try."""
        refusal = self.last_refusal
        if refusal is None:
            return None
        return {"path": refusal.path, "reason": refusal.reason, "attempts": refusal.attempts,
                "retry_in_s": round(max(0.0, refusal.retry_at - self._clock()), 1)}

    @property
    def version(self) -> int:
        return int(getattr(self.current, "version", 0)) if self.current is not None else 0

    def load_now(self, path: Path) -> None:
        """Load synchronously (worker start-up); a failure is a refusal (ModelError), never a crash."""
        try:
            self.current = self._loader(path)
        except Exception as exc:  # noqa: BLE001 - every failure of a model is a refusal
            self._refuse(path, exc)
            raise ModelError(str(exc)) from exc
        self._pending_path = path
        self.last_refusal = None
        log.info("serving model version %s from %s", self.version, path)

    def wants(self, path: Path) -> bool:
        """Whether ``path`` is neither served, nor loading, nor refused and still within its backoff."""
        serving = getattr(getattr(self.current, "artifact", None), "path", None)
        if path == serving:
            return False
        if self._pending is not None and path == self._pending_path:
            return False  # loading, or loaded and waiting for the next swap
        refusal = self.refused.get(str(path))
        return refusal is None or self._clock() >= refusal.retry_at

    def request(self, path: Path) -> None:
        """Start loading ``path`` in the background; it is switched to by :meth:`maybe_swap`."""
        if self._pending is not None and not self._pending.done():
            log.info("a model load is in progress; %s queued after it", path)
        self._pending_path = path
        self._pending = self._executor.submit(self._loader, path)

    async def maybe_swap(self) -> bool:
        """Switch to the pending model if it finished loading; never blocks on a load, never raises for a model."""
        pending = self._pending
        if pending is None or not pending.done():
            return False
        self._pending = None
        try:
            model = pending.result()
        except Exception as exc:  # noqa: BLE001 - every failure of a model is a refusal
            if self._pending_path is not None:
                self._refuse(self._pending_path, exc)
            return False
        previous = self.version
        # The old model is not closed here: the idle-swap timer can run while a
        # batch is still encoding on it. Dropping the last reference is enough
        # (its shard threads exit when it is garbage-collected).
        self.current = model
        self.refused.pop(str(self._pending_path), None)
        self.last_refusal = None
        log.warning("switched model version %s -> %s", previous, self.version)
        await asyncio.sleep(0)
        return True

    def clear(self) -> None:
        """Hold no model any more (a shadow stopped); a load in progress is dropped when it finishes."""
        self._pending = None
        self._pending_path = None
        self.current = None
        self.last_refusal = None

    def _refuse(self, path: Path, exc: BaseException) -> None:
        earlier = self.refused.get(str(path))
        attempts = (earlier.attempts if earlier else 0) + 1
        backoff = min(RETRY_FIRST_S * 2 ** (attempts - 1), RETRY_MAX_S)
        refusal = Refusal(str(path), str(exc) or type(exc).__name__, attempts, self._clock() + backoff)
        self.refused[str(path)] = refusal
        self.last_refusal = refusal
        log.error("REFUSED model %s (attempt %d): %s — still serving version %s; trying it again in %.0fs",
                  path, attempts, refusal.reason, self.version, backoff)
        self._on_refused(refusal)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        _close(self.current)


def _close(model: Recommender | None) -> None:
    close = getattr(model, "close", None)
    if close is not None:
        close()
