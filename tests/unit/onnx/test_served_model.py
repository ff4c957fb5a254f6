"""The served computation: the export graph (newest position only) and sharded ONNX Runtime runs match the full model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamrec.models.config import FIRST_REAL_INDEX, EncoderConfig
from streamrec.models.encoder import SequenceEncoder
from streamrec.models.features import UserSequence
from streamrec.models.export_graph import FullSequenceUserVector, NewestPositionUserVector, user_vector_graph
from streamrec.onnx.runtime import ServedModel
from streamrec.testing.artifacts import random_artifact

N_ITEMS = 40


def left_padded_batch(config: EncoderConfig, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    seq = max(lengths)
    mask = torch.tensor([[0] * (seq - n) + [1] * n for n in lengths])
    items = torch.randint(2, config.n_items, (len(lengths), seq), generator=gen) * mask
    etypes = torch.randint(2, config.n_event_types, (len(lengths), seq), generator=gen) * mask
    buckets = torch.randint(2, config.n_time_buckets, (len(lengths), seq), generator=gen) * mask
    return items, etypes, buckets, mask


@pytest.mark.parametrize("layers", [1, 3])
def test_newest_position_vector_equals_the_full_model(layers):
    torch.manual_seed(layers)
    config = EncoderConfig(n_items=N_ITEMS, max_len=12, hidden=32, layers=layers, heads=4)
    model = SequenceEncoder(config).eval()
    batch = left_padded_batch(config, [12, 1, 5, 12, 7])
    with torch.no_grad():
        full = model(*batch).user_vector
        newest = NewestPositionUserVector(model)(*batch)
    assert newest.shape == full.shape == (5, 32)
    torch.testing.assert_close(newest, full, atol=1e-5, rtol=1e-5)


def test_other_backbones_serve_through_the_full_computation():
    config = EncoderConfig(n_items=N_ITEMS, max_len=8, hidden=16, layers=1, heads=2, backbone="llama")
    model = SequenceEncoder(config).eval()
    assert isinstance(user_vector_graph(model), FullSequenceUserVector)
    with pytest.raises(ValueError, match="GPT-2"):
        NewestPositionUserVector(model)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    config = EncoderConfig(n_items=N_ITEMS + FIRST_REAL_INDEX, max_len=10, hidden=16, layers=2, heads=2)
    return random_artifact(tmp_path_factory.mktemp("models"), config, item_prefix="i", include_fp16=False)


def test_sharded_runs_answer_like_one_run_in_order(artifact):
    rng = np.random.default_rng(0)
    sequences = []
    for user in range(70):  # above the sharding threshold, rows of different lengths
        n = int(rng.integers(1, 11))
        sequences.append(UserSequence([f"i{rng.integers(0, N_ITEMS)}" for _ in range(n)], ["view"] * n,
                                      list(range(0, 1000 * n, 1000))))
    one = ServedModel.load(artifact, device="cpu", threads=1)
    sharded = ServedModel.load(artifact, device="cpu", threads=3)
    try:
        assert sharded.shards == 3
        for a, b in zip(one.recommend(sequences, k=5), sharded.recommend(sequences, k=5), strict=True):
            assert a.item_ids == b.item_ids
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
            np.testing.assert_allclose(a.user_vector, b.user_vector, atol=1e-6)
    finally:
        sharded.close()
        one.close()


def _shard_threads() -> int:
    import threading

    return sum(1 for t in threading.enumerate() if t.name.startswith("encoder-shard"))


def test_a_closed_session_still_answers_and_a_dropped_one_leaves_no_threads(artifact):
    import gc
    import time

    sequences = [UserSequence([f"i{n % N_ITEMS}", f"i{(n + 1) % N_ITEMS}"], ["view", "view"], [0, 1000]) for n in range(40)]
    session = ServedModel.load(artifact, device="cpu", threads=2)
    expected = [r.item_ids for r in session.recommend(sequences, k=3)]
    assert _shard_threads() >= 1
    # A hot swap can happen while a batch still encodes on the old version.
    session.close()
    assert [r.item_ids for r in session.recommend(sequences, k=3)] == expected
    session = ServedModel.load(artifact, device="cpu", threads=2)
    session.recommend(sequences, k=3)
    del session
    gc.collect()
    deadline = time.monotonic() + 5
    while _shard_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _shard_threads() == 0  # swapped-out versions do not leak threads


def test_a_swap_does_not_close_the_model_a_batch_may_still_use():
    import asyncio

    from streamrec.stream.model_holder import ModelHolder

    class FakeModel:
        def __init__(self, version: int) -> None:
            self.version = version
            self.closed = False

        def close(self) -> None:
            self.closed = True

    old, new = FakeModel(1), FakeModel(2)
    holder = ModelHolder(loader=lambda path: new)
    holder.current = old
    holder.request(Path("/models/v000002"))
    while holder._pending is not None and not holder._pending.done():  # noqa: SLF001
        pass
    assert asyncio.run(holder.maybe_swap()) is True
    assert holder.current is new and not old.closed
    holder.close()
    assert new.closed


def test_length_chunks_partition_the_rows_and_group_similar_lengths():
    from streamrec.onnx.runtime import length_chunks

    lengths = np.array([50] * 8 + [1] * 40)  # a worker batch: a few long windows, many short
    chunks = length_chunks(lengths, 2)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(48))
    assert len(chunks) > 2  # cut finer: the short rows no longer pay for the long ones
    assert [int(lengths[c].max()) for c in chunks][:-1] == [1] * (len(chunks) - 1)
    uniform = np.full(48, 50)
    assert len(length_chunks(uniform, 2)) == 2  # nothing to gain: one chunk per shard
