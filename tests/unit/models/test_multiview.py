"""The multi-view item representation (id + text + categories): training, export, new items from content alone."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from streamrec.errors import ModelError
from streamrec.models.config import CONTENT_FIELDS, ONNX_CONFIG, EncoderConfig
from streamrec.models.content import ItemContent, add_items, attach_content, content_config
from streamrec.models.data import events_from_dicts
from streamrec.models.encoder import EncoderInput, SequenceEncoder, served_copy
from streamrec.models.evaluate import evaluate_model
from streamrec.models.features import ItemVocab, UserSequence, featurize
from streamrec.models.splits import EvalCase, leave_one_out
from streamrec.models.train import TrainConfig, train
from streamrec.onnx.artifact import load_artifact
from streamrec.onnx.runtime import ServedModel
from streamrec.onnx.writer import write_artifact

TINY = EncoderConfig(n_items=0, event_types=("view",), max_len=8, hidden=16, layers=1, heads=2, dropout=0.0, emb_dropout=0.0)
TEXT_DIM = 12
N_ITEMS = 40


def content_for(items: list[str], seed: int = 0) -> ItemContent:
    """Two clusters: even items share one direction of text and the category 'even', odd items the other."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(2, TEXT_DIM))
    text = np.stack([base[int(i[1:]) % 2] + 0.1 * rng.normal(size=TEXT_DIM) for i in items]).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    cats = [("even",) if int(i[1:]) % 2 == 0 else ("odd", "rare") for i in items]
    return ItemContent(items, text, cats)


def cluster_events(n_users: int = 40, n_events: int = 10, seed: int = 0) -> list[dict]:
    """Each user only ever meets items of one parity (their cluster)."""
    rng = np.random.default_rng(seed)
    events = []
    for u in range(n_users):
        parity = u % 2
        for j in range(n_events):
            item = 2 * int(rng.integers(0, N_ITEMS // 2 - 4)) + parity  # the last 4 of each parity never occur
            events.append({"user_id": f"u{u}", "item_id": f"i{item}", "event_type": "view", "ts": 1000 * (j + 1)})
    return events


@pytest.fixture(scope="module")
def trained() -> tuple[SequenceEncoder, ItemVocab]:
    split = leave_one_out(events_from_dicts(cluster_events()))
    seen = sorted({i for s in split.train.values() for i in s.item_ids} | {c.target for c in split.test + split.valid})
    config = content_config(TINY, content_for(seen), id_dropout=0.5)
    result = train(split, config, TrainConfig(epochs=15, patience=15, progress=False, seed=0),
                   item_content=content_for(seen))
    return result.model, result.vocab


def test_id_only_config_has_no_content_fields_and_content_needs_content() -> None:
    assert not set(CONTENT_FIELDS) & set(TINY.to_dict())
    config = content_config(TINY, content_for(["i0", "i1"]), id_dropout=0.3)
    assert config.item_categories == ("even", "odd", "rare") and config.max_item_categories == 2
    assert EncoderConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    split = leave_one_out(events_from_dicts(cluster_events(n_users=4)))
    with pytest.raises(ModelError, match="no item content"):
        train(split, config, TrainConfig(epochs=1, progress=False))


def test_id_dropout_only_while_training(trained: tuple[SequenceEncoder, ItemVocab]) -> None:
    model, _vocab = trained
    model.eval()
    assert torch.equal(model.item_table(), model.item_table())
    model.train()
    try:
        assert not torch.equal(model.item_table(), model.item_table())
    finally:
        model.eval()


def test_unseen_items_are_placed_by_content_alone(trained: tuple[SequenceEncoder, ItemVocab]) -> None:
    model, vocab = trained
    new = [f"i{n}" for n in range(N_ITEMS - 8, N_ITEMS)]  # never in any sequence
    assert not any(i in vocab for i in new)
    grown, grown_vocab = add_items(model, vocab, content_for(new))
    assert len(grown_vocab) == len(vocab) + len(new)
    # Known items keep their vectors exactly.
    np.testing.assert_allclose(grown.item_table()[: len(vocab)].detach().numpy(), model.item_table().detach().numpy(), atol=1e-6)
    # A user of the even cluster ranks the new even items above the new odd ones.
    history = UserSequence([f"i{2 * n}" for n in range(6)], ["view"] * 6, [1000 * (n + 1) for n in range(6)])
    with torch.no_grad():
        scores = grown.full_sort_scores(EncoderInput.from_features(featurize([history], grown_vocab, grown.config)))[0]
    new_idx = grown_vocab.lookup(new)
    even = [float(scores[i]) for i, item in zip(new_idx, new) if int(item[1:]) % 2 == 0]
    odd = [float(scores[i]) for i, item in zip(new_idx, new) if int(item[1:]) % 2 == 1]
    assert min(even) > max(odd)
    cases = [EvalCase("u", history, item) for item in new if int(item[1:]) % 2 == 0]
    assert evaluate_model(grown, grown_vocab, cases)["recall@10"] > 0.5
    # An id-only model cannot do this.
    plain = SequenceEncoder(dataclasses.replace(TINY, n_items=len(vocab)))
    with pytest.raises(ModelError, match="id-only"):
        add_items(plain, vocab, content_for(new))


def test_multi_view_export_serves_the_same_scores_as_torch(trained: tuple[SequenceEncoder, ItemVocab], tmp_path: Path) -> None:
    model, vocab = trained
    served = served_copy(model)
    assert not served.config.item_content
    torch.testing.assert_close(served.item_emb.weight, model.item_table())
    history = UserSequence(["i0", "i2", "i4"], ["view"] * 3, [1000, 2000, 3000])
    path = write_artifact(model, vocab, tmp_path / "models", real_sequences=[history], include_fp16=False)
    artifact = load_artifact(path)
    assert artifact.parity["passed"] and artifact.config.item_content  # parity: multi-view torch vs served graph
    session = ServedModel.load(path, device="cpu", threads=1)
    top = session.recommend([history], k=5)[0]
    with torch.no_grad():
        scores = model.full_sort_scores(EncoderInput.from_features(featurize([history], vocab, model.config)))[0]
    scores[vocab.lookup(history.item_ids)] = float("-inf")
    expected = [vocab.item_id(int(i)) for i in torch.topk(scores, 5).indices]
    assert top.item_ids == expected
    # The served graph holds the item table, not the views: no text vectors, no projection, no
    # category table in it, so serving costs what id-only serving costs (content is computed per item, at export).
    graph = onnx.load(str(path / "model.onnx")).graph
    shapes = [tuple(i.dims) for i in graph.initializer]
    assert (len(vocab), TINY.hidden) in shapes
    assert not [s for s in shapes if TEXT_DIM in s or model.config.n_category_rows in s]
    # One input more than id-only: the vectors of items that appear after training, read inside windows.
    assert [i.name for i in graph.input] == [*ONNX_CONFIG.inputs, ONNX_CONFIG.new_items_input]
    # The weights keep the content tower, so a new item's vector can be computed later from content alone.
    state = torch.load(path / "weights.pt")
    assert {"text_proj.weight", "category_emb.weight", "item_text", "item_has_id"} <= set(state)


def test_a_warm_started_multi_view_model_keeps_the_content_of_items_new_since(
    trained: tuple[SequenceEncoder, ItemVocab]
) -> None:
    # The retrainer's path: the live weights grown to a vocabulary with new items, then trained on.
    from streamrec.models.warm_start import grow_vocab, warm_state

    model, vocab = trained
    new = [f"i{n}" for n in range(N_ITEMS - 8, N_ITEMS)]
    events = cluster_events(n_users=10, seed=3) + [
        {"user_id": f"n{j}", "item_id": item, "event_type": "view", "ts": 1000 * (k + 1)}
        for j, item in enumerate(new) for k, item in enumerate(["i0", "i2", item, "i4"])
    ]
    split = leave_one_out(events_from_dicts(events))
    grown_vocab, _ = grow_vocab(vocab, list(events_from_dicts(events).item_ids))
    config = dataclasses.replace(model.config, n_items=len(grown_vocab))
    init = warm_state(model.state_dict(), SequenceEncoder(config).state_dict())
    content = content_for(list(grown_vocab.ids[2:]))
    result = train(split, config, TrainConfig(epochs=1, patience=1, progress=False), vocab=grown_vocab,
                   init_state=init, item_content=content)
    rows = grown_vocab.lookup(new)
    # The new items' text is theirs, not the empty rows of the grown live state.
    expected = content.text_vectors[[content.rows()[i] for i in new]]
    np.testing.assert_allclose(result.model.item_text[rows].numpy(), expected, atol=1e-6)
    assert float(result.model.item_text[rows].abs().sum()) > 0
