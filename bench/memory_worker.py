"""The real worker with windows and user states in process memory: the worker less Cassandra.

Only for the benchmarks' attribution phases (``bench latency --attribute``,
``bench e2e --attribute``): the same Faust app, agents, batching, model and
delivery as ``streamrec worker``, but :class:`InMemoryStore` in place of the
Cassandra store, so the difference between the two runs is what Cassandra
costs — the driver's work in the worker process and the co-located server's
CPU. Nothing it holds survives the process: never run it as a worker.

Run as ``python -m streamrec.bench.memory_worker`` with ``STREAMREC_*``
settings, as the passthrough.
"""

from __future__ import annotations

import logging

from streamrec.config import load_settings
from streamrec.stream.state.memory import InMemoryStore
from streamrec.stream.worker import run_worker


def main() -> None:
    # At WARNING, as the benchmarks run ``streamrec worker``: its own logging costs what it costs in production.
    settings = load_settings(log_level="WARNING")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_worker(settings, windows=InMemoryStore())


if __name__ == "__main__":
    main()
