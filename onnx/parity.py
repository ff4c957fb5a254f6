"""Export parity: ONNX Runtime (CPU) against PyTorch eager on random and real inputs.

Compared per case: user vectors and top-K scores (max absolute difference,
``-inf`` positions must agree), and top-K indices, where a different index is
accepted only if it is a tie (its torch score equals the ORT score within the
tolerance).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from streamrec.models.config import FIRST_REAL_INDEX, ONNX_CONFIG
from streamrec.models.encoder import SequenceEncoder
from streamrec.models.features import ItemVocab, UserSequence, exclusion_indices, featurize
from streamrec.onnx.export import RankingHead
from streamrec.onnx.runtime import session_options

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-4
# New-item vectors fed to a multi-view graph's random cases (their indices follow the table's).
NEW_ITEMS_IN_PARITY = 5
# fp16 graphs are compared with the fp32 torch model: ~3 significant digits.
FP16_TOLERANCE = 5e-2


@dataclass
class ParityCase:
    name: str
    batch: int
    seq: int
    k: int
    max_abs_diff_user_vector: float
    max_abs_diff_scores: float
    index_mismatches: int
    passed: bool


@dataclass
class ParityResult:
    """Stored as ``parity.json`` in the artifact."""

    passed: bool
    tolerance: float
    max_abs_diff: float
    cases: list[ParityCase] = field(default_factory=list)
    onnxruntime_version: str = ""
    provider: str = "CPUExecutionProvider"
    precision: str = "fp32"

    def to_dict(self) -> dict:
        return asdict(self)


def _random_inputs(
    n_items: int, n_event_types: int, n_buckets: int, batch: int, seq: int, rng: np.random.Generator, *,
    n_context_rows: int = 0, n_context_keys: int = 0, new_item_dim: int = 0,
) -> dict[str, np.ndarray]:
    lengths = rng.integers(1, seq + 1, size=batch)
    lengths[0] = seq  # at least one full row
    mask = (np.arange(seq)[None, :] >= (seq - lengths)[:, None]).astype(np.int64)
    # Includes OOV (1) on purpose, and with new-item inputs the indices after the table.
    n_new = NEW_ITEMS_IN_PARITY if new_item_dim else 0
    item_idx = rng.integers(0, n_items + n_new, size=(batch, seq)) * mask
    etype = rng.integers(1, n_event_types, size=(batch, seq)) * mask
    tbucket = rng.integers(1, n_buckets, size=(batch, seq)) * mask
    exclude = rng.integers(0, n_items + n_new, size=(batch, max(1, seq // 2)))
    feeds = {
        "item_idx": item_idx, "event_type": etype, "time_bucket": tbucket,
        "attention_mask": mask, "exclude": exclude,
    }
    if n_context_keys:
        # Any row of the shared table for any key (OOV and missing rows included): the
        # graph must compute the same function on every index, not just the sensible ones.
        feeds[ONNX_CONFIG.context_input] = rng.integers(1, n_context_rows, size=(batch, seq, n_context_keys)) * mask[..., None]
    if new_item_dim:
        feeds[ONNX_CONFIG.new_items_input] = (rng.standard_normal((n_new, new_item_dim)) * 0.1).astype(np.float32)
    return feeds


def _as_graph_types(sess, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float inputs in the graph's own precision (the fp16 graph takes fp16 new-item vectors)."""
    half = {i.name for i in sess.get_inputs() if i.type == "tensor(float16)"}
    return {name: value.astype(np.float16) if name in half else value for name, value in feeds.items()}


def _compare(name: str, head: RankingHead, sess, feeds: dict[str, np.ndarray], k: int, tol: float) -> ParityCase:
    feeds = {**feeds, "k": np.array(k, dtype=np.int64)}
    ort_uv, ort_idx, ort_scores = sess.run(list(ONNX_CONFIG.outputs), _as_graph_types(sess, feeds))
    ort_uv, ort_scores = ort_uv.astype(np.float32), ort_scores.astype(np.float32)
    with torch.no_grad():
        t_uv, t_idx, t_scores = head(*(torch.from_numpy(feeds[n]) for n in ONNX_CONFIG.inputs_for(head.model.config)))
        full = head.model.item_scores(t_uv)
        if ONNX_CONFIG.new_items_input in feeds:  # the graph ranks them too: columns n_items + j
            full = torch.cat([full, t_uv @ torch.from_numpy(feeds[ONNX_CONFIG.new_items_input]).T], dim=1)
        full = full.numpy()
    t_uv, t_idx, t_scores = t_uv.numpy(), t_idx.numpy(), t_scores.numpy()
    uv_diff = float(np.max(np.abs(ort_uv - t_uv)))
    finite_t, finite_o = np.isfinite(t_scores), np.isfinite(ort_scores)
    same_pattern = bool(np.array_equal(finite_t, finite_o))
    score_diff = float(np.max(np.abs(ort_scores[finite_o] - t_scores[finite_o]), initial=0.0)) if same_pattern else float("inf")
    mismatches = 0
    for row, col in zip(*np.nonzero(ort_idx != t_idx)):
        if not finite_o[row, col]:
            continue  # both -inf: order among excluded items is arbitrary
        torch_score_of_ort_pick = full[row, ort_idx[row, col]]
        if not abs(torch_score_of_ort_pick - ort_scores[row, col]) <= tol:
            mismatches += 1
    passed = uv_diff <= tol and score_diff <= tol and mismatches == 0
    return ParityCase(name, int(feeds["item_idx"].shape[0]), int(feeds["item_idx"].shape[1]), k, uv_diff, score_diff, mismatches, passed)


def check_parity(
    model: SequenceEncoder,
    vocab: ItemVocab,
    onnx_path: Path,
    *,
    real_sequences: Sequence[UserSequence] = (),
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    precision: str = "fp32",
) -> ParityResult:
    """Run random shapes (batch 1..64, seq 1..max_len, various K) and real sequences through both."""
    import onnxruntime as ort

    model = model.eval()
    # The reference is the trained model's full computation, so the check also
    # proves the served (newest-position) graph computes the same function.
    head = RankingHead(model, newest_only=False).eval()
    opts = session_options()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    cfg = model.config
    rng = np.random.default_rng(seed)
    n_real = cfg.n_items - FIRST_REAL_INDEX
    cases: list[ParityCase] = []
    for batch, seq, k in [(1, 1, 1), (1, cfg.max_len, 10), (7, 13, 20), (64, cfg.max_len, 50), (3, 5, n_real)]:
        seq = min(seq, cfg.max_len)
        feeds = _random_inputs(cfg.n_items, cfg.n_event_types, cfg.n_time_buckets, batch, seq, rng,
                               n_context_rows=cfg.n_context_rows, n_context_keys=len(cfg.context_keys),
                               new_item_dim=cfg.hidden if cfg.item_content else 0)
        cases.append(_compare(f"random_b{batch}_s{seq}", head, sess, feeds, min(k, n_real), tolerance))
    real = list(real_sequences)
    for start in range(0, min(len(real), 256), 64):
        chunk = real[start : start + 64]
        feats = featurize(chunk, vocab, cfg)
        feeds = {
            "item_idx": feats.item_idx, "event_type": feats.event_type, "time_bucket": feats.time_bucket,
            "attention_mask": feats.attention_mask, "exclude": exclusion_indices(chunk, vocab),
        }
        if feats.context is not None:
            feeds[ONNX_CONFIG.context_input] = feats.context
        if cfg.item_content:
            feeds[ONNX_CONFIG.new_items_input] = np.zeros((1, cfg.hidden), dtype=np.float32)  # what serving feeds without new items
        cases.append(_compare(f"real_{start}", head, sess, feeds, min(20, n_real), tolerance))
    worst = max(max(c.max_abs_diff_user_vector, c.max_abs_diff_scores) for c in cases)
    result = ParityResult(
        passed=all(c.passed for c in cases), tolerance=tolerance, max_abs_diff=worst,
        cases=cases, onnxruntime_version=ort.__version__, precision=precision,
    )
    log.info("ONNX %s parity %s: max abs diff %.2e over %d cases", precision, "passed" if result.passed else "FAILED", worst, len(cases))
    return result
