"""How the worker runs Faust: its log level holds, so no debug record is built per Kafka message."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from streamrec.config import Settings

SCRIPT = textwrap.dedent(
    """
    import logging, os, sys
    import faust
    from streamrec.stream.app import run_faust_worker

    app = faust.App("log-level-check", broker="kafka://" + sys.argv[1], store="memory://", web_enabled=False)

    @app.timer(0.1)
    async def report() -> None:
        root = logging.getLogger()
        print(f"LEVELS root={root.level} aiokafka={logging.getLogger('aiokafka').getEffectiveLevel()}", file=sys.stderr, flush=True)
        os._exit(0)

    run_faust_worker(app, "warning")
    """
)


def test_a_worker_at_warning_keeps_debug_records_off(infra: Settings, tmp_path) -> None:
    # faust.Worker's progress spinner set the root logger to DEBUG: aiokafka then built a debug
    # record for every message produced (a third of the passthrough's CPU per event).
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, infra.kafka_bootstrap.split(",")[0]],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    line = next((ln for ln in done.stderr.splitlines() if ln.startswith("LEVELS")), None)
    assert line is not None, done.stdout[-2000:] + done.stderr[-2000:]
    assert line == "LEVELS root=30 aiokafka=30"
