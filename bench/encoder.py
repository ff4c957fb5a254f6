"""Encoder benchmark: ONNX Runtime vs PyTorch eager on the same inputs, same thread count.

Every backend answers the same serving question (user vector, MatMul with the
item table, seen-item exclusion, TopK) for the same batch; latency is the
median of calls timed in turn, so all see the same background load, and
throughput is sequences per second at that median. Three backends:

- ``torch``: PyTorch eager on the trained model as a PyTorch server would call
  it (the full sequence through the backbone, newest position kept). The
  target ratio (ORT >= 2x) is against this.
- ``torch_newest``: PyTorch eager on the exact computation the ONNX graph holds
  (:mod:`streamrec.models.export_graph`: the last layer only for the newest
  position), to separate what the runtime gains from what the graph saves.
- ``ort``: ONNX Runtime on the artifact's ``model.onnx`` as the worker serves
  it (:class:`~streamrec.onnx.runtime.ServedModel`: the batch split into
  one single-threaded shard per thread, run concurrently).
- ``ort_one_call``: the same graph in one call with ``threads`` intra-op
  threads, ONNX Runtime's default way to use several cores, for comparison.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from streamrec.bench.report import plot_bars
from streamrec.models.config import FIRST_REAL_INDEX, EncoderConfig
from streamrec.models.encoder import SequenceEncoder
from streamrec.models.features import FeatureBatch
from streamrec.onnx.artifact import FP16_MODEL_FILE, load_artifact
from streamrec.onnx.export import RankingHead
from streamrec.onnx.registry import resolve_artifact_dir
from streamrec.onnx.runtime import ServedModel, graph_feeds, session_options
from streamrec.testing.artifacts import random_artifact

log = logging.getLogger(__name__)

DEFAULT_BATCHES = (1, 64, 256)
ML100K_ITEMS = 1684  # ML-100k catalogue + padding + OOV
# An untrained ML-100k-sized model: latency does not depend on training.
ML100K_MODEL = EncoderConfig(n_items=ML100K_ITEMS)


@dataclass
class EncoderBenchRow:
    batch: int
    seq_len: int
    k: int
    torch_median_ms: float
    torch_newest_median_ms: float
    ort_median_ms: float
    ort_one_call_median_ms: float
    torch_seqs_per_s: float
    ort_seqs_per_s: float
    speedup: float  # torch / ort: the target ratio
    speedup_same_graph: float  # torch_newest / ort: the runtime's own share
    provider: str
    fp16: bool = False


def block_interleaved_medians_ms(
    fns: Sequence[Callable[[], Any]], *, warmup: int, min_reps: int, min_seconds: float, rounds: int = 5
) -> list[float]:
    """Median latency of each call over ``rounds`` of back-to-back blocks, backends taking turns.

    Taking turns per block (not per call) lets all backends see the same
    background load without one disturbing the next: torch's OpenMP threads
    keep spinning for a while after a call and would steal the cores from an
    ONNX Runtime call made right after it. The first call of each block is
    discarded for the same reason.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    block_seconds = min_seconds / rounds
    block_reps = max(1, -(-min_reps // rounds))
    for _ in range(rounds):
        for fn, series in zip(fns, times):
            fn()
            started = time.perf_counter()
            reps = 0
            while reps < block_reps or time.perf_counter() - started < block_seconds:
                t0 = time.perf_counter()
                fn()
                series.append(time.perf_counter() - t0)
                reps += 1
    return [statistics.median(series) * 1000.0 for series in times]


def random_batch(config: EncoderConfig, batch: int, seq_len: int, seed: int = 0) -> tuple[FeatureBatch, np.ndarray]:
    """Full-length sequences of known items; every row excludes its own items (exclude_seen)."""
    rng = np.random.default_rng(seed)
    shape = (batch, seq_len)
    feats = FeatureBatch(
        item_idx=rng.integers(FIRST_REAL_INDEX, config.n_items, size=shape),
        event_type=rng.integers(FIRST_REAL_INDEX, config.n_event_types, size=shape),
        time_bucket=rng.integers(FIRST_REAL_INDEX, config.n_time_buckets, size=shape),
        attention_mask=np.ones(shape, dtype=np.int64),
    )
    return feats, feats.item_idx.copy()


def bench_artifact(
    artifact_dir: Path,
    *,
    batches: Sequence[int] = DEFAULT_BATCHES,
    seq_len: int = 50,
    k: int = 10,
    threads: int = 2,
    device: str = "cpu",
    min_reps: int = 20,
    min_seconds: float = 2.0,
    fp16: bool = False,
) -> list[EncoderBenchRow]:
    """Time the artifact's ONNX graph against its torch weights on identical inputs."""
    artifact = load_artifact(artifact_dir)
    model = SequenceEncoder(artifact.config)
    model.load_state_dict(torch.load(artifact.path / "weights.pt", weights_only=True))
    full_head = RankingHead(model, newest_only=False).eval()
    newest_head = RankingHead(model, newest_only=True).eval()
    session = ServedModel.load(artifact_dir, device=device, threads=threads, fp16=fp16)
    one_call = _one_call_session(session, threads)
    torch.set_num_threads(threads)
    # ONNX Runtime flushes denormals to zero (runtime.session_options); torch
    # gets the same float mode so the ratio measures the runtimes, not that flag.
    torch.set_flush_denormal(True)
    seq_len = min(seq_len, artifact.config.max_len)
    rows: list[EncoderBenchRow] = []
    for batch in batches:
        feats, exclude = random_batch(artifact.config, batch, seq_len, seed=batch)
        tensors = [torch.from_numpy(a) for a in (feats.item_idx, feats.event_type, feats.time_bucket, feats.attention_mask, exclude)]
        k_t = torch.tensor(k)

        def torch_call(head: RankingHead) -> Callable[[], Any]:
            def run() -> Any:
                with torch.inference_mode():
                    return head(*tensors, k_t)
            return run

        def run_ort() -> Any:
            return session.run(feats, exclude, k)

        feeds = {**graph_feeds(feats, exclude, session.new_item_rows(None)), "k": np.array(k, dtype=np.int64)}

        def run_ort_one_call() -> Any:
            return one_call.run(None, feeds)

        calls = [torch_call(full_head), torch_call(newest_head), run_ort, run_ort_one_call]
        # Same inputs, same answer: guard the benchmark against comparing different work.
        reference = calls[0]()[1].numpy()
        for name, call in zip(("torch_newest", "ort", "ort_one_call"), calls[1:]):
            picked = call()[1]
            agreement = float((reference == np.asarray(picked)).mean())
            if agreement < 0.99:
                log.warning("%s and torch top-K agree on only %.1f%% of positions", name, 100 * agreement)
        t_ms, tn_ms, o_ms, o1_ms = block_interleaved_medians_ms(calls, warmup=3, min_reps=min_reps, min_seconds=min_seconds)
        row = EncoderBenchRow(
            batch=batch, seq_len=seq_len, k=k,
            torch_median_ms=round(t_ms, 3), torch_newest_median_ms=round(tn_ms, 3), ort_median_ms=round(o_ms, 3),
            ort_one_call_median_ms=round(o1_ms, 3),
            torch_seqs_per_s=round(batch / (t_ms / 1000), 1), ort_seqs_per_s=round(batch / (o_ms / 1000), 1),
            speedup=round(t_ms / o_ms, 2), speedup_same_graph=round(tn_ms / o_ms, 2),
            provider=session.providers[0], fp16=session.fp16,
        )
        log.info("encoder bench %s", row)
        rows.append(row)
    return rows


def _one_call_session(session: ServedModel, threads: int) -> Any:
    """The served graph in a plain session with ``threads`` intra-op threads (ORT's default parallelism)."""
    import onnxruntime as ort

    opts = session_options()
    opts.intra_op_num_threads = threads
    # Not spinning, as in serving: spinning threads would steal the cores from the backend timed next.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model_path = session.artifact.path / FP16_MODEL_FILE if session.fp16 else session.artifact.onnx_path
    return ort.InferenceSession(str(model_path), opts, providers=session.session.get_providers())


def run_encoder_bench(artifact_dir: Path | None, **kwargs: Any) -> dict[str, Any]:
    """Benchmark ``artifact_dir`` (or a fresh ML-100k-sized model); JSON-ready result."""
    with tempfile.TemporaryDirectory(prefix="streamrec-bench-") as tmp:
        path = resolve_artifact_dir(Path(artifact_dir)) if artifact_dir else random_artifact(Path(tmp), ML100K_MODEL)
        config = load_artifact(path).config
        rows = bench_artifact(path, **kwargs)
    import platform

    import onnxruntime as ort

    return {
        "benchmark": "encoder",
        "artifact": str(path) if artifact_dir else "untrained ML-100k-sized model",
        "model_config": config.to_dict(),
        "torch_version": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "onnxruntime_version": ort.__version__,
        "threads": kwargs.get("threads", 2),
        "ort_cpu_shards": kwargs.get("threads", 2),
        "rows": [asdict(r) for r in rows],
        "target_speedup": 2.0,
        "meets_target": all(r.speedup >= 2.0 for r in rows),
    }


def format_table(result: dict[str, Any]) -> str:
    header = (f"{'batch':>6}{'seq':>5}{'torch ms':>10}{'torch newest':>14}{'ORT ms':>9}{'ORT 1 call':>12}{'torch seq/s':>13}"
              f"{'ORT seq/s':>11}{'ORT/torch':>11}{'ORT/newest':>12}  provider")
    lines = [header]
    for r in result["rows"]:
        lines.append(
            f"{r['batch']:>6}{r['seq_len']:>5}{r['torch_median_ms']:>10.2f}{r['torch_newest_median_ms']:>14.2f}"
            f"{r['ort_median_ms']:>9.2f}{r['ort_one_call_median_ms']:>12.2f}{r['torch_seqs_per_s']:>13.0f}{r['ort_seqs_per_s']:>11.0f}"
            f"{r['speedup']:>10.2f}x{r['speedup_same_graph']:>11.2f}x  {r['provider']}"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path | None:
    """Sequences per second for every backend at every batch size (horizontal bars)."""
    backends = (("torch", "torch_median_ms"), ("torch newest-position", "torch_newest_median_ms"),
                ("ORT one call", "ort_one_call_median_ms"), ("ORT served (shards)", "ort_median_ms"))
    values = {f"batch {r['batch']}: {name}": round(r["batch"] / (r[key] / 1000.0), 1)
              for r in result["rows"] for name, key in backends}
    return plot_bars(values, path, f"encoder, seq {result['rows'][0]['seq_len']}, {result['threads']} threads",
                     "sequences per second (higher is better)")
