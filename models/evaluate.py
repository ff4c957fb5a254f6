"""Offline evaluation: full ranking over all items, items already in the history excluded."""

from __future__ import annotations

import logging
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch

from streamrec.models.config import FIRST_REAL_INDEX, OOV_INDEX
from streamrec.models.encoder import EncoderInput, SequenceEncoder
from streamrec.models.features import ItemVocab, UserSequence, featurize
from streamrec.models.ranking_metrics import DEFAULT_KS, metrics_from_ranks, target_ranks
from streamrec.models.splits import EvalCase

log = logging.getLogger(__name__)


class RankedItems(Protocol):
    item_ids: list[str]


class ServedRanker(Protocol):
    """What :func:`evaluate_session` needs from a served model (:class:`streamrec.onnx.runtime.ServedModel`)."""

    @property
    def n_recommendable(self) -> int: ...

    def recommend(
        self, sequences: Sequence[UserSequence], k: int, exclude_seen: bool = True
    ) -> Sequence[RankedItems]: ...


def _target_indices(cases: Sequence[EvalCase], vocab: ItemVocab) -> np.ndarray:
    # Targets unknown to the model can never be ranked: -1 makes them a miss.
    idx = vocab.lookup([c.target for c in cases])
    return np.where(idx == OOV_INDEX, -1, idx)


def _seen_items(cases: Sequence[EvalCase], vocab: ItemVocab, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(row, item index)`` of every known item each case's history holds, except its own target.

    The target itself may have been seen before (repeat consumption); it stays
    rankable. One lookup and one scatter for the whole batch instead of one per
    case (the cold-item pass has 10,055 cases with long histories); the same cells.
    """
    lengths = np.fromiter((len(c.history.item_ids) for c in cases), dtype=np.int64, count=len(cases))
    items = vocab.lookup([i for c in cases for i in c.history.item_ids])
    rows = np.repeat(np.arange(len(cases), dtype=np.int64), lengths)
    keep = (items >= FIRST_REAL_INDEX) & (items != targets[rows])
    return rows[keep], items[keep]


def exclude_seen(scores: np.ndarray, cases: Sequence[EvalCase], vocab: ItemVocab) -> np.ndarray:
    """Set each case's seen items (other than its target) to ``-inf`` in its row of ``scores``, in place.

    ``scores``: ``(len(cases), n_items)`` by ``vocab`` index, from any ranker
    (the model, a popularity count). Returns the targets' indices (``-1`` for
    a target the vocabulary does not know: never ranked).
    """
    targets = _target_indices(cases, vocab)
    rows, items = _seen_items(cases, vocab, targets)
    scores[rows, items] = -np.inf
    return targets


@torch.no_grad()
def case_scores(
    model: SequenceEncoder,
    vocab: ItemVocab,
    cases: Sequence[EvalCase],
    *,
    batch_size: int = 512,
    exclude_history: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per chunk of cases: ``(chunk, n_items)`` scores over the whole catalogue and the targets' indices.

    Items of a case's history other than its target score ``-inf`` (with
    ``exclude_history``), as do padding and OOV rows; a target the vocabulary
    does not know has index ``-1`` (never ranked).
    """
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(cases), batch_size):
            chunk = cases[start : start + batch_size]
            feats = featurize([c.history for c in chunk], vocab, model.config)
            scores = model.full_sort_scores(EncoderInput.from_features(feats)).numpy()
            targets = exclude_seen(scores, chunk, vocab) if exclude_history else _target_indices(chunk, vocab)
            yield scores, targets
    finally:
        model.train(was_training)


def case_ranks(
    model: SequenceEncoder,
    vocab: ItemVocab,
    cases: Sequence[EvalCase],
    *,
    batch_size: int = 512,
    exclude_history: bool = True,
) -> np.ndarray:
    """1-based rank of each case's target under the torch model (``inf`` = unrankable)."""
    ranks = [target_ranks(scores, targets) for scores, targets in
             case_scores(model, vocab, cases, batch_size=batch_size, exclude_history=exclude_history)]
    return np.concatenate(ranks) if ranks else np.zeros(0)


def evaluate_model(
    model: SequenceEncoder,
    vocab: ItemVocab,
    cases: Sequence[EvalCase],
    *,
    ks: Iterable[int] = DEFAULT_KS,
    exclude_history: bool = True,
) -> dict[str, float]:
    """Recall@K, NDCG@K and MRR of the torch model over ``cases``."""
    return metrics_from_ranks(case_ranks(model, vocab, cases, exclude_history=exclude_history), ks)


def evaluate_session(
    session: ServedRanker,
    cases: Sequence[EvalCase],
    *,
    ks: Iterable[int] = DEFAULT_KS,
    exclude_history: bool = True,
    batch_size: int = 256,
) -> dict[str, float]:
    """The same metrics through the exported ONNX model, exactly as it serves.

    Asks the session for the whole catalogue (TopK with K = all real items),
    so the rank of every target is known and MRR is exact.
    """
    k_all = session.n_recommendable
    ranks = np.full(len(cases), np.inf)
    for start in range(0, len(cases), batch_size):
        chunk = cases[start : start + batch_size]
        results = session.recommend([c.history for c in chunk], k=k_all, exclude_seen=exclude_history)
        for row, (case, top) in enumerate(zip(chunk, results)):
            try:
                ranks[start + row] = top.item_ids.index(case.target) + 1
            except ValueError:
                pass  # excluded or unknown target: a miss
    return metrics_from_ranks(ranks, ks)
