"""Encoder benchmark: ONNX Runtime vs PyTorch eager on the same inputs, same thread count.

Both sides run the full serving computation (encoder, MatMul with the item
table, seen-item exclusion, TopK). Latency is the median of timed calls after
warm-up; throughput is sequences per second at that median.
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

from streamrec.models.config import FIRST_REAL_INDEX, EncoderConfig
from streamrec.models.encoder import SequenceEncoder
from streamrec.models.features import FeatureBatch, ItemVocab
from streamrec.onnx.artifact import load_artifact, write_artifact
from streamrec.onnx.export import RankingHead
from streamrec.onnx.runtime import EncoderSession

log = logging.getLogger(__name__)

DEFAULT_BATCHES = (1, 64, 256)
ML100K_ITEMS = 1684  # ML-100k catalogue + padding + OOV


@dataclass
class EncoderBenchRow:
    batch: int
    seq_len: int
    k: int
    torch_median_ms: float
    ort_median_ms: float
    torch_seqs_per_s: float
    ort_seqs_per_s: float
    speedup: float
    provider: str
    fp16: bool = False


def _interleaved_medians_ms(
    fn_a: Callable[[], Any], fn_b: Callable[[], Any], *, warmup: int, min_reps: int, min_seconds: float
) -> tuple[float, float]:
    """Median latency of two calls timed alternately, so both see the same background load."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    times_a: list[float] = []
    times_b: list[float] = []
    started = time.perf_counter()
    while len(times_a) < min_reps or time.perf_counter() - started < min_seconds:
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times_a) * 1000.0, statistics.median(times_b) * 1000.0


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
    spin: bool = False,
    fp16: bool = False,
) -> list[EncoderBenchRow]:
    """Time the artifact's ONNX graph against its torch weights on identical inputs.

    ``spin`` lets ORT's pool busy-wait between ops. Off by default, as in
    serving: with both thread pools in one process, a spinning ORT pool steals
    the cores torch's OpenMP threads need and distorts the comparison.
    """
    artifact = load_artifact(artifact_dir)
    model = SequenceEncoder(artifact.config)
    model.load_state_dict(torch.load(artifact.path / "weights.pt", weights_only=True))
    head = RankingHead(model).eval()
    session = EncoderSession.load(artifact_dir, device=device, threads=threads, spin=spin, fp16=fp16)
    torch.set_num_threads(threads)
    seq_len = min(seq_len, artifact.config.max_len)
    rows: list[EncoderBenchRow] = []
    for batch in batches:
        feats, exclude = random_batch(artifact.config, batch, seq_len, seed=batch)
        tensors = [torch.from_numpy(a) for a in (feats.item_idx, feats.event_type, feats.time_bucket, feats.attention_mask, exclude)]
        k_t = torch.tensor(k)

        def run_torch() -> Any:
            with torch.inference_mode():
                return head(*tensors, k_t)

        def run_ort() -> Any:
            return session.run(feats, exclude, k)

        # Same inputs, same answer: guard the benchmark against comparing different work.
        t_idx = run_torch()[1].numpy()
        o_idx = run_ort()[1]
        agreement = float((t_idx == o_idx).mean())
        if agreement < 0.99:
            log.warning("torch and ORT top-K agree on only %.1f%% of positions", 100 * agreement)
        t_ms, o_ms = _interleaved_medians_ms(run_torch, run_ort, warmup=3, min_reps=min_reps, min_seconds=min_seconds)
        row = EncoderBenchRow(
            batch=batch, seq_len=seq_len, k=k,
            torch_median_ms=round(t_ms, 3), ort_median_ms=round(o_ms, 3),
            torch_seqs_per_s=round(batch / (t_ms / 1000), 1), ort_seqs_per_s=round(batch / (o_ms / 1000), 1),
            speedup=round(t_ms / o_ms, 2), provider=session.providers[0], fp16=session.fp16,
        )
        log.info("encoder bench %s", row)
        rows.append(row)
    return rows


def random_artifact(out_dir: Path, config: EncoderConfig | None = None) -> Path:
    """An untrained ML-100k-sized model written as an artifact (latency does not depend on training)."""
    config = config or EncoderConfig(n_items=ML100K_ITEMS)
    torch.manual_seed(0)
    model = SequenceEncoder(config).eval()
    vocab = ItemVocab([f"item{i}" for i in range(config.n_items - FIRST_REAL_INDEX)])
    return write_artifact(model, vocab, out_dir, metrics={"note": "untrained model for benchmarking"})


def run_encoder_bench(artifact_dir: Path | None, **kwargs: Any) -> dict[str, Any]:
    """Benchmark ``artifact_dir`` (or a fresh ML-100k-sized model); JSON-ready result."""
    with tempfile.TemporaryDirectory(prefix="streamrec-bench-") as tmp:
        path = Path(artifact_dir) if artifact_dir else random_artifact(Path(tmp))
        config = load_artifact(path).config
        rows = bench_artifact(path, **kwargs)
    import platform

    import onnxruntime as ort

    return {
        "benchmark": "encoder",
        "artifact": str(artifact_dir) if artifact_dir else "untrained ML-100k-sized model",
        "model_config": config.to_dict(),
        "torch_version": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "onnxruntime_version": ort.__version__,
        "threads": kwargs.get("threads", 2),
        "ort_spinning": kwargs.get("spin", False),
        "rows": [asdict(r) for r in rows],
        "target_speedup": 2.0,
        "meets_target": all(r.speedup >= 2.0 for r in rows),
    }


def format_table(result: dict[str, Any]) -> str:
    header = f"{'batch':>6}{'seq':>5}{'torch ms':>11}{'ORT ms':>10}{'torch seq/s':>13}{'ORT seq/s':>12}{'ORT/torch':>11}  provider"
    lines = [header]
    for r in result["rows"]:
        lines.append(
            f"{r['batch']:>6}{r['seq_len']:>5}{r['torch_median_ms']:>11.2f}{r['ort_median_ms']:>10.2f}"
            f"{r['torch_seqs_per_s']:>13.0f}{r['ort_seqs_per_s']:>12.0f}{r['speedup']:>10.2f}x  {r['provider']}"
        )
    return "\n".join(lines)
