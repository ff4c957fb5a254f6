"""Featurisation shared by training and serving: vocab, padding, event types, time-gap buckets."""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.models.config import OOV_INDEX, PAD_INDEX, EncoderConfig
from streamrec.models.features import (
    FIRST_EVENT_BUCKET,
    ItemVocab,
    UserSequence,
    event_type_ids,
    exclusion_from_features,
    exclusion_indices,
    featurize,
    time_gap_buckets,
)

CONFIG = EncoderConfig(n_items=5, event_types=("view", "click"), max_len=4, n_time_buckets=10)


def seq(items, types=None, ts=None):
    types = types or ["view"] * len(items)
    ts = ts or [1000 * i for i in range(len(items))]
    return UserSequence(items, types, ts)


def test_vocab_reserves_pad_and_oov_and_orders_by_frequency():
    vocab = ItemVocab.build(["b", "a", "b", "c", "b", "a"])
    assert vocab.ids == ["<pad>", "<oov>", "b", "a", "c"]
    assert vocab.index("b") == 2
    assert vocab.index("never-seen") == OOV_INDEX
    assert list(vocab.lookup(["c", "zzz", "a"])) == [4, OOV_INDEX, 3]
    assert "a" in vocab and "<pad>" not in vocab and "zzz" not in vocab


def test_vocab_roundtrip(tmp_path):
    vocab = ItemVocab(["x", "y"])
    vocab.save(tmp_path / "v.json")
    assert ItemVocab.load(tmp_path / "v.json").ids == vocab.ids


def test_time_gap_buckets_hand_computed():
    # gaps: -, 0 s, 1 s, 3 s, 1000 s, 2**40 ms (capped), negative (out of order -> 0)
    ts = [0, 0, 1000, 4000, 1_004_000, 1_004_000 + 2**40, 1_004_000]
    got = time_gap_buckets(ts, n_buckets=10)
    # 2 + floor(log2(1 + gap_s)): 0->2, 1->3, 3->4, 1000->2+9=11 capped at 9, huge -> 9, negative -> 2
    assert got.tolist() == [FIRST_EVENT_BUCKET, 2, 3, 4, 9, 9, 2]


def test_featurize_left_pads_and_keeps_newest():
    vocab = ItemVocab(["a", "b", "c"])
    batch = featurize(
        [seq(["a", "b"], ["view", "click"], [0, 2000]), seq(["a", "b", "c", "a", "b", "zzz"])],
        vocab,
        CONFIG,
    )
    assert batch.item_idx.shape == (2, 4)
    # Row 0: two padding columns first, newest event in the last column.
    assert batch.item_idx[0].tolist() == [PAD_INDEX, PAD_INDEX, 2, 3]
    assert batch.attention_mask[0].tolist() == [0, 0, 1, 1]
    assert batch.event_type[0].tolist() == [0, 0, 2, 3]
    assert batch.time_bucket[0].tolist() == [0, 0, FIRST_EVENT_BUCKET, 3]  # 2 s gap -> 2+floor(log2 3)=3
    # Row 1: truncated to the newest 4 events; unknown item -> OOV; the oldest
    # kept event gets the "first" bucket because its predecessor was cut off.
    assert batch.item_idx[1].tolist() == [4, 2, 3, OOV_INDEX]
    assert batch.time_bucket[1, 0] == FIRST_EVENT_BUCKET
    assert batch.attention_mask[1].tolist() == [1, 1, 1, 1]


def test_featurize_unknown_event_type_and_empty_sequence():
    vocab = ItemVocab(["a"])
    batch = featurize([seq(["a"], ["refund"]), UserSequence([], [], [])], vocab, CONFIG)
    assert batch.event_type[0, -1] == OOV_INDEX
    # An empty history still gives the encoder one (OOV) position to read.
    assert batch.item_idx[1].tolist() == [OOV_INDEX]
    assert batch.attention_mask[1].tolist() == [1]


def test_featurize_pad_to_fixed_width():
    vocab = ItemVocab(["a"])
    batch = featurize([seq(["a"])], vocab, CONFIG, pad_to=4)
    assert batch.item_idx.tolist() == [[0, 0, 0, 2]]


def test_exclusion_indices_are_known_unique_items_padded_with_zero():
    vocab = ItemVocab(["a", "b", "c"])
    ex = exclusion_indices([seq(["a", "a", "zzz"]), seq(["c", "b", "a"])], vocab)
    assert ex.shape == (2, 3)
    assert ex[0].tolist() == [2, 0, 0]
    assert sorted(ex[1].tolist()) == [2, 3, 4]


def test_exclusion_indices_match_a_per_user_unique_on_random_batches():
    rng = np.random.default_rng(0)
    vocab = ItemVocab([f"i{n}" for n in range(50)])
    for _ in range(20):
        batch = [seq([f"i{n}" for n in rng.integers(0, 60, size=rng.integers(1, 30))]) for _ in range(rng.integers(1, 12))]
        ex = exclusion_indices(batch, vocab)
        long_enough = EncoderConfig(n_items=50, event_types=("view", "click"), max_len=30, n_time_buckets=10)
        assert (exclusion_from_features(featurize(batch, vocab, long_enough).item_idx, vocab) == ex).all()
        for row, s in enumerate(batch):
            expected = [i for i in np.unique(vocab.lookup(s.item_ids)).tolist() if i >= 2]  # 0 pad, 1 OOV
            assert ex[row][: len(expected)].tolist() == expected
            assert not ex[row][len(expected):].any()


def test_user_sequence_rejects_ragged_fields():
    with pytest.raises(ValueError, match="differ in length"):
        UserSequence(["a", "b"], ["view"], [1, 2])


def test_same_function_for_training_examples_and_serving():
    from streamrec.models.train import build_examples

    vocab = ItemVocab(["a", "b", "c"])
    s = seq(["a", "b", "c"], ["view", "click", "view"], [0, 1000, 5000])
    examples = build_examples([s], vocab, CONFIG)
    served = featurize([UserSequence(s.item_ids[:2], s.event_types[:2], s.timestamps_ms[:2])], vocab, CONFIG, pad_to=4)
    f = examples.features
    assert np.array_equal(f.item_idx.numpy(), served.item_idx)
    assert np.array_equal(f.time_bucket.numpy(), served.time_bucket)
    assert f.targets.tolist() == [[0, 0, 3, 4]]


def _featurize_one_user_at_a_time(sequences, vocab, config, pad_to=None):
    """The per-user reference featurize is measured against (the implementation before it was batched)."""
    kept = [min(len(s), config.max_len) for s in sequences]
    width = max([1, *kept]) if pad_to is None else max(pad_to, 1)
    out = {name: np.zeros((len(sequences), width), dtype=np.int64) for name in ("item", "type", "time", "mask")}
    for row, (s, n) in enumerate(zip(sequences, kept)):
        n = min(n, width)
        if n == 0:
            out["item"][row, -1], out["type"][row, -1], out["time"][row, -1], out["mask"][row, -1] = 1, 1, 1, 1
            continue
        start = len(s) - n
        out["item"][row, -n:] = vocab.lookup(s.item_ids[start:])
        out["type"][row, -n:] = event_type_ids(s.event_types[start:], config.event_types)
        out["time"][row, -n:] = time_gap_buckets(s.timestamps_ms[start:], config.n_time_buckets)
        out["mask"][row, -n:] = 1
    return out


def test_batched_featurize_equals_the_per_user_reference_on_random_batches():
    rng = np.random.default_rng(1)
    vocab = ItemVocab([f"i{n}" for n in range(40)])
    config = EncoderConfig(n_items=40, event_types=("view", "click"), max_len=8, n_time_buckets=10)
    for trial in range(40):
        batch = []
        for _ in range(rng.integers(1, 10)):
            n = int(rng.integers(0, 14))  # empty, short, and longer than max_len
            batch.append(UserSequence(
                item_ids=[f"i{k}" for k in rng.integers(0, 50, size=n)],  # some unknown
                event_types=[str(t) for t in rng.choice(["view", "click", "share"], size=n)],  # one unknown type
                timestamps_ms=[int(t) for t in rng.integers(0, 10**8, size=n)],  # out of order too
            ))
        pad_to = None if trial % 2 else int(rng.integers(1, 12))
        got = featurize(batch, vocab, config, pad_to=pad_to)
        want = _featurize_one_user_at_a_time(batch, vocab, config, pad_to=pad_to)
        assert (got.item_idx == want["item"]).all()
        assert (got.event_type == want["type"]).all()
        assert (got.time_bucket == want["time"]).all()
        assert (got.attention_mask == want["mask"]).all()
