"""The processes a benchmark measures: the real worker, the Faust passthrough and the bare aiokafka loop.

All three are :class:`streamrec.testing.process.ServiceProcess`es, started and
read the same way; only what they run differs.
"""

from __future__ import annotations

from pathlib import Path

from streamrec.config import Settings
from streamrec.testing.process import ServiceProcess


def worker(settings: Settings, log_path: Path, worker_id: str = "bench-w1") -> ServiceProcess:
    """``streamrec worker`` at WARNING, so its own logging costs what it costs in production."""
    return ServiceProcess.worker(settings, log_path, worker_id, log_level="warning")


# The attribution phases' workers (``--attribute``): windows in process memory, with and without the model.
MEMORY = "worker-mem"
MEMORY_POPULARITY = "worker-mem-nomodel"


def memory_worker(settings: Settings, log_path: Path, *, model: bool, worker_id: str = "bench-mem") -> ServiceProcess:
    """The worker with windows in process memory (``streamrec.bench.memory_worker``): the worker less Cassandra.

    ``model=False`` points it at an empty model directory, so it serves the popularity fallback.
    """
    if not model:
        settings = settings.with_overrides(model_dir=log_path.parent / "no-model")
    return ServiceProcess.module(MEMORY if model else MEMORY_POPULARITY, "streamrec.bench.memory_worker", settings,
                                 log_path, worker_id)


def passthrough(settings: Settings, log_path: Path, worker_id: str = "bench-pass") -> ServiceProcess:
    """Faust consuming the events topic and producing each record unchanged: Faust's own ceiling."""
    return ServiceProcess.module("passthrough", "streamrec.bench.passthrough", settings, log_path, worker_id)


def bare_loop(settings: Settings, log_path: Path, worker_id: str = "bench-bare") -> ServiceProcess:
    """A bare aiokafka consume → produce loop: the floor for Python on this machine."""
    return ServiceProcess.module("bare", "streamrec.bench.bare_loop", settings, log_path, worker_id)
