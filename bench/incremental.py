"""`streamrec bench incremental`: per-event serving cost versus the length of a user's history.

A user's state is a capped window, so an event costs the same whether the
user has 10 or 100,000 earlier events: merge ≤ N entries, encode ≤ N
positions. This measures it through the real batch processor (in-memory
store, real ONNX encoder, one event per batch).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import click
import orjson

from streamrec.config import Settings
from streamrec.stream.state.memory import InMemoryStore


class _NullSink:
    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def _event(user: str, n: int) -> dict[str, Any]:
    return {"event_id": f"{user}-{n}", "user_id": user, "item_id": f"i{n % 997}", "event_type": "view",
            "ts": 1_700_000_000_000 + n * 1000}


async def _per_event_ms(settings: Settings, encoder: Any, history: int, probes: int) -> float:
    from streamrec.stream.processor import BatchProcessor, SourceRecord  # 0.14 s (Faust types)

    processor = BatchProcessor(settings, InMemoryStore(), _NullSink(), model=lambda: encoder)
    user = f"user-{history}"
    # Build the history in batches (fast), then time single-event batches.
    for start in range(0, history, 512):
        batch = [_event(user, n) for n in range(start, min(history, start + 512))]
        await processor.process([SourceRecord("e", 0, i, user.encode(), orjson.dumps(e)) for i, e in enumerate(batch)])
    timings = []
    for k in range(probes):
        e = _event(user, history + k)
        record = SourceRecord("e", 0, history + k, user.encode(), orjson.dumps(e))
        started = time.perf_counter()
        await processor.process([record])
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


@click.command("incremental")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="Artifact (default: an untrained model of ML-100k size).")
@click.option("--histories", default="1,10,100,1000,100000", show_default=True)
@click.option("--probes", default=200, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/bench/incremental.json"), show_default=True)
@click.pass_obj
def incremental(settings: Settings, model_dir: Path | None, histories: str, probes: int, out: Path) -> None:
    """Per-event cost with short and very long histories (the ratio should stay ≈ 1)."""
    import tempfile

    from streamrec.bench.encoder import ML100K_MODEL  # torch
    from streamrec.testing.artifacts import random_artifact  # torch
    from streamrec.stream.model_holder import load_served_model  # ONNX Runtime

    with tempfile.TemporaryDirectory() as tmp:
        encoder = load_served_model(model_dir or random_artifact(Path(tmp), ML100K_MODEL), threads=settings.onnx_threads)
        rows = []
        for history in [int(h) for h in histories.split(",")]:
            ms = asyncio.run(_per_event_ms(settings, encoder, history, probes))
            rows.append({"history_events": history, "per_event_ms": round(ms, 3)})
            click.echo(f"history {history:>8} events: {ms:7.3f} ms per event (median of {probes})")
    ratio = rows[-1]["per_event_ms"] / rows[0]["per_event_ms"]
    result = {"window_size": settings.window_size, "rows": rows, "longest_over_shortest": round(ratio, 3)}
    click.echo(f"longest / shortest history: {ratio:.2f}x")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
