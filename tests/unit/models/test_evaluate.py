"""Offline ranking: seen items are excluded, a seen target stays rankable, unknown targets are misses."""

from __future__ import annotations

import numpy as np
import torch

from streamrec.models.config import FIRST_REAL_INDEX, EncoderConfig
from streamrec.models.encoder import EncoderInput, SequenceEncoder
from streamrec.models.evaluate import case_ranks
from streamrec.models.features import ItemVocab, UserSequence, featurize
from streamrec.models.splits import EvalCase

TINY = EncoderConfig(n_items=0, event_types=("view",), max_len=8, hidden=16, layers=1, heads=2, dropout=0.0, emb_dropout=0.0)


def sequence(items: list[str]) -> UserSequence:
    return UserSequence(items, ["view"] * len(items), [1000 * (t + 1) for t in range(len(items))])


@torch.no_grad()
def brute_force_ranks(model: SequenceEncoder, vocab: ItemVocab, cases: list[EvalCase]) -> list[float]:
    """Every seen item masked by hand, case by case, on the same batch's scores: what case_ranks must equal."""
    scores = model.full_sort_scores(EncoderInput.from_features(featurize([c.history for c in cases], vocab, model.config))).numpy()
    ranks = []
    for row, case in zip(scores, cases):
        target = vocab.index(case.target)
        if target < FIRST_REAL_INDEX:
            ranks.append(float("inf"))
            continue
        for item in case.history.item_ids:
            index = vocab.index(item)
            if index >= FIRST_REAL_INDEX and index != target:
                row[index] = -np.inf
        ranks.append(float((row > row[target]).sum() + 1))
    return ranks


def test_batched_ranks_equal_one_case_at_a_time_with_seen_items_masked() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    vocab = ItemVocab([f"i{k}" for k in range(30)])
    model = SequenceEncoder(EncoderConfig(**{**TINY.__dict__, "n_items": len(vocab)})).eval()
    cases = []
    for u in range(23):
        history = [f"i{k}" for k in rng.integers(0, 30, size=int(rng.integers(1, 14)))]  # repeats, longer than max_len
        history.append("never-seen")  # an unknown item in the history is not an item to exclude
        target = history[0] if u % 3 == 0 else f"i{int(rng.integers(0, 30))}"  # sometimes a repeat of a seen item
        cases.append(EvalCase(f"u{u}", sequence(history), target))
    cases.append(EvalCase("unknown-target", sequence(["i1", "i2"]), "never-seen"))
    ranks = case_ranks(model, vocab, cases, batch_size=len(cases))
    expected = brute_force_ranks(model, vocab, cases)
    assert ranks.tolist() == expected
    assert ranks[-1] == np.inf
    assert any(r < np.inf for r, c in zip(ranks, cases) if c.target in c.history.item_ids)  # a seen target is rankable
