"""New items served without a retrain: the content head, item vectors, the merged top-K, the embedder's batch logic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from streamrec.config import Settings
from streamrec.models.content import add_items, content_config, content_tensors
from streamrec.models.data import events_from_dicts
from streamrec.models.encoder import EncoderInput, SequenceEncoder
from streamrec.models.config import ONNX_CONFIG
from streamrec.models.features import ItemVocab, UserSequence, featurize
from streamrec.models.splits import leave_one_out
from streamrec.models.text import MODEL_ZIP_SHA256
from streamrec.models.train import TrainConfig, train
from streamrec.onnx.artifact import load_artifact
from streamrec.onnx.content_head import CONTENT_FILE, load_content_head
from streamrec.onnx.runtime import ServedModel
from streamrec.onnx.writer import train_from_events, write_artifact
from streamrec.stream.item_embedder import ItemRecord, embed_records
from streamrec.stream.item_vectors import ItemVector, LiveItems, load_content_aware
from tests.unit.models.test_multiview import N_ITEMS, TINY, cluster_events, content_for

NEW = [f"i{n}" for n in range(N_ITEMS - 8, N_ITEMS)]  # never in any training sequence
EVEN_USER = UserSequence([f"i{2 * n}" for n in range(6)], ["view"] * 6, [1000 * (n + 1) for n in range(6)])


@pytest.fixture(scope="module")
def trained() -> tuple[SequenceEncoder, ItemVocab]:
    split = leave_one_out(events_from_dicts(cluster_events()))
    seen = sorted({i for s in split.train.values() for i in s.item_ids} | {c.target for c in split.test + split.valid})
    content = content_for(seen)
    result = train(split, content_config(TINY, content, id_dropout=0.5),
                   TrainConfig(epochs=15, patience=15, progress=False, seed=0), item_content=content)
    return result.model, result.vocab


@pytest.fixture(scope="module")
def artifact(trained: tuple[SequenceEncoder, ItemVocab], tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, vocab = trained
    return write_artifact(model, vocab, tmp_path_factory.mktemp("models"), real_sequences=[EVEN_USER], include_fp16=False)


def vectors_of(items: list[str], sha: str = MODEL_ZIP_SHA256) -> list[ItemVector]:
    content = content_for(items)
    return [ItemVector(i, content.text_vectors[r], tuple(content.categories[r]), sha, 1, 2) for r, i in enumerate(items)]


def test_a_multi_view_artifact_ships_its_content_head_and_it_matches_torch(
    trained: tuple[SequenceEncoder, ItemVocab], artifact: Path
) -> None:
    model, _ = trained
    assert CONTENT_FILE in orjson.loads((artifact / "manifest.json").read_bytes())["files"]  # checksummed with the rest
    head = load_content_head(load_artifact(artifact).path)
    assert head is not None and head.text_encoder_sha256 == MODEL_ZIP_SHA256
    content = content_for(NEW + ["i0"])
    cats = [list(c) + ["never-seen-category"] for c in content.categories]  # unknown names: the OOV row, as in torch
    content = type(content)(content.item_ids, content.text_vectors, cats)
    with torch.no_grad():
        expected = model.content_vectors(*content_tensors(content.item_ids, content, model.config)).numpy()
    np.testing.assert_allclose(head.vectors(content.text_vectors, content.categories), expected, atol=1e-5)


def test_an_id_only_artifact_has_no_content_head(tmp_path: Path) -> None:
    path = train_from_events(cluster_events(n_users=6, n_events=5), tmp_path, epochs=1,
                             model_config=TINY)
    assert load_content_head(path) is None and not (path / CONTENT_FILE).exists()
    live = LiveItems()
    for item in vectors_of(NEW):
        live.put(item)
    session = load_content_aware(path, live, threads=1)
    plain = ServedModel.load(path, device="cpu", threads=1)
    history = UserSequence(["i0", "i2"], ["view", "view"], [1000, 2000])
    assert session.new_item_table().item_ids == ()
    assert [r.item_ids for r in session.recommend([history], k=5)] == [r.item_ids for r in plain.recommend([history], k=5)]


def _grown_top(grown: SequenceEncoder, grown_vocab: ItemVocab, user: UserSequence, k: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """What the model grown offline by add_items recommends: ids, scores, user vector."""
    with torch.no_grad():
        batch = EncoderInput.from_features(featurize([user], grown_vocab, grown.config))
        user_vector = grown.user_vector(batch)[0].numpy()
        scores = grown.full_sort_scores(batch)[0]
    scores[grown_vocab.lookup(user.item_ids)] = float("-inf")
    top = torch.topk(scores, k)
    return [grown_vocab.item_id(int(i)) for i in top.indices], top.values.numpy(), user_vector


def test_new_items_join_the_served_ranking_as_the_offline_grown_model_ranks_them(
    trained: tuple[SequenceEncoder, ItemVocab], artifact: Path
) -> None:
    model, vocab = trained
    live = LiveItems()
    session = load_content_aware(artifact, live, threads=1)
    before = session.recommend([EVEN_USER], k=8)[0]
    assert not set(before.item_ids) & set(NEW)

    for item in vectors_of(NEW):
        live.put(item)
    after = session.recommend([EVEN_USER], k=8)[0]
    # The same ranking as the model grown offline by add_items (content alone, no retrain).
    expected_ids, expected_scores, _ = _grown_top(*add_items(model, vocab, content_for(NEW)), EVEN_USER, 8)
    assert after.item_ids == expected_ids
    np.testing.assert_allclose(after.scores, expected_scores, atol=1e-4)
    # A user of the even cluster is offered new even items, never the new odd ones.
    offered = set(after.item_ids) & set(NEW)
    assert offered and all(int(i[1:]) % 2 == 0 for i in offered)

    # A new item the user already met is not offered again.
    met = sorted(offered)[0]
    again = session.recommend([UserSequence([*EVEN_USER.item_ids, met], ["view"] * 7, [*EVEN_USER.timestamps_ms, 7000])], k=8)[0]
    assert met not in again.item_ids
    # A tombstone takes an item out of serving.
    live.remove(met)
    assert met not in session.recommend([EVEN_USER], k=8)[0].item_ids


def test_without_new_items_the_graphs_placeholder_row_is_never_recommended(artifact: Path) -> None:
    session = load_content_aware(artifact, LiveItems(), threads=1)
    assert session.reads_new_items
    # The whole catalogue asked for: every known item the user has not met, and nothing else.
    everything = session.recommend([EVEN_USER], k=session.n_recommendable)[0].item_ids
    assert sorted(everything) == sorted(set(session.vocab.ids[2:]) - set(EVEN_USER.item_ids))


def test_a_window_holding_new_items_is_encoded_from_their_content_not_as_unknown_items(
    trained: tuple[SequenceEncoder, ItemVocab], artifact: Path
) -> None:
    model, vocab = trained
    live = LiveItems()
    session = load_content_aware(artifact, live, threads=1)
    for item in vectors_of(NEW):
        live.put(item)
    new_even = [i for i in NEW if int(i[1:]) % 2 == 0]
    met_new = UserSequence([*EVEN_USER.item_ids[:3], *new_even[:3]], ["view"] * 6, [1000 * (n + 1) for n in range(6)])
    only_new = UserSequence(new_even, ["view"] * len(new_even), [1000 * (n + 1) for n in range(len(new_even))])
    grown, grown_vocab = add_items(model, vocab, content_for(NEW))
    for user in (met_new, only_new):
        served = session.recommend([user], k=8)[0]
        expected_ids, expected_scores, expected_vector = _grown_top(grown, grown_vocab, user, 8)
        # The user is encoded as the grown model encodes them: the new items' content is the input, not the OOV row.
        np.testing.assert_allclose(served.user_vector, expected_vector, atol=1e-4)
        assert served.item_ids == expected_ids
        np.testing.assert_allclose(served.scores, expected_scores, atol=1e-4)
    # Someone who has so far met only new even items is offered even items.
    assert all(int(i[1:]) % 2 == 0 for i in session.recommend([only_new], k=8)[0].item_ids)
    # Explanations encode the window as serving did: every explained score is the served score.
    from streamrec.stream.explanations import Explanations

    top = session.recommend([met_new], k=8)[0]
    explainer = Explanations(Settings(explain=True))._explainer_for(session)  # noqa: SLF001 - the attribution behind `because`
    [attribution] = explainer.attribute([met_new], [top.item_ids], new_items=session.new_item_table())
    np.testing.assert_allclose(attribution.scores, top.scores, atol=1e-4)

    # Batched and sharded (new-item vectors go whole to every shard), each row is its single-user answer.
    sharded = load_content_aware(artifact, live, threads=2)
    users = [met_new, only_new, EVEN_USER] * 6
    for user, answer in zip(users, sharded.recommend(users, k=8)):
        alone = session.recommend([user], k=8)[0]
        assert answer.item_ids == alone.item_ids
        np.testing.assert_allclose(answer.scores, alone.scores, atol=1e-4)


def test_a_multi_view_graph_exported_before_new_item_inputs_still_serves_new_items_beside_it(
    trained: tuple[SequenceEncoder, ItemVocab], artifact: Path, tmp_path: Path
) -> None:
    import shutil
    import warnings

    from streamrec.models.encoder import served_copy
    from streamrec.onnx.artifact import MANIFEST, sha256_file
    from streamrec.onnx.export import RankingHead, example_inputs

    model, _ = trained
    old = Path(shutil.copytree(artifact, tmp_path / artifact.name))
    # The graph as exported before 2026-12-02: no new_item_vectors input.
    head = RankingHead(served_copy(model), reads_new_items=False).eval()
    names = list(ONNX_CONFIG.inputs)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes, as in export_onnx
        torch.onnx.export(head, example_inputs(model.config.n_items), str(old / "model.onnx"), dynamo=False,
                          opset_version=ONNX_CONFIG.opset, input_names=names, output_names=list(ONNX_CONFIG.outputs),
                          dynamic_axes={n: a for n, a in ONNX_CONFIG.dynamic_axes.items() if n in {*names, *ONNX_CONFIG.outputs}})
    manifest = orjson.loads((old / MANIFEST).read_bytes())
    manifest["files"]["model.onnx"] = {"sha256": sha256_file(old / "model.onnx"), "bytes": (old / "model.onnx").stat().st_size}
    (old / MANIFEST).write_bytes(orjson.dumps(manifest))

    live = LiveItems()
    for item in vectors_of(NEW):
        live.put(item)
    session = load_content_aware(old, live, threads=1)
    assert not session.reads_new_items
    current = load_content_aware(artifact, live, threads=1)
    # Windows without new items: the same answer as today's graph; new items are still offered.
    old_top, new_top = session.recommend([EVEN_USER], k=8)[0], current.recommend([EVEN_USER], k=8)[0]
    assert old_top.item_ids == new_top.item_ids and set(old_top.item_ids) & set(NEW)
    # A window holding a new item is answered (the item is unknown to that graph: the OOV input, as before).
    assert session.recommend([UserSequence([*EVEN_USER.item_ids, NEW[0]], ["view"] * 7, [*EVEN_USER.timestamps_ms, 7000])], k=8)[0].item_ids


def test_vectors_from_another_text_encoder_are_not_served(artifact: Path) -> None:
    live = LiveItems()
    for item in vectors_of(NEW, sha="0" * 64):
        live.put(item)
    session = load_content_aware(artifact, live, threads=1)
    assert session.new_item_table().item_ids == ()
    assert not set(session.recommend([EVEN_USER], k=8)[0].item_ids) & set(NEW)


def test_item_vector_messages_round_trip_and_malformed_ones_are_refused() -> None:
    item = vectors_of(["i1"])[0]
    back = ItemVector.from_json(item.to_json())
    assert back.item_id == "i1" and back.categories == item.categories
    np.testing.assert_array_equal(back.vector, item.vector)
    for raw in (b"not json", b'{"item_id": "x"}', orjson.dumps({**orjson.loads(item.to_json()), "vector": "!!"}),
                orjson.dumps({**orjson.loads(item.to_json()), "v": 9})):
        with pytest.raises(ValueError):
            ItemVector.from_json(raw)


def test_the_embedder_encodes_good_records_forwards_tombstones_and_dead_letters_bad_ones() -> None:
    settings = Settings(topic_prefix="t")
    encoded: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        encoded.append(texts)
        return np.arange(len(texts) * 3, dtype=np.float32).reshape(len(texts), 3)

    records = [
        ItemRecord(0, 10, b"a", b'{"item_id": "a", "title": "Old A"}', 111),
        ItemRecord(0, 11, b"b", b'{"item_id": "b", "title": ""}', 112),
        ItemRecord(1, 5, b"c", b"not json", 113),
        ItemRecord(1, 6, b"d", None, 114),
        ItemRecord(0, 12, b"a", b'{"item_id": "a", "title": "New A", "categories": ["x"]}', 115),
    ]
    out = embed_records(records, encode, settings=settings, text_encoder_sha256="sha", worker_id="emb")
    assert encoded == [["New A. x"]]  # the latest record of an item only, encoded once
    assert [k for k, _ in out.vectors] == [b"d", b"a"]
    assert out.vectors[0][1] is None  # a tombstone stays a tombstone
    message = ItemVector.from_json(out.vectors[1][1] or b"")
    assert (message.item_id, message.categories, message.record_ts_ms) == ("a", ("x",), 115)
    assert [(l.reason, l.source_topic, l.source_partition, l.source_offset, l.worker_id) for l in out.letters] == [
        ("empty_field", "t.items", 0, 11, "emb"), ("malformed_json", "t.items", 1, 5, "emb"),
    ]


def test_a_new_items_explanation_uses_the_vector_it_was_ranked_by(artifact: Path) -> None:
    from streamrec.onnx.explain import without
    from streamrec.stream.explanations import Explanations
    from streamrec.stream.window import WindowEntry

    live = LiveItems()
    session = load_content_aware(artifact, live, threads=1)
    for item in vectors_of(NEW):
        live.put(item)
    top = session.recommend([EVEN_USER], k=8)[0]
    new = [i for i in top.item_ids if i in NEW]
    assert new, "the even user is offered new even items (previous test)"
    table = session.new_item_table()
    served = dict(zip(top.item_ids, top.scores))

    # The worker's path: a window of EVEN_USER's events, explained with the model that served it.
    window = [WindowEntry(f"e{n}", item, "view", ts) for n, (item, ts) in enumerate(zip(EVEN_USER.item_ids, EVEN_USER.timestamps_ms))]
    explanations = Explanations(Settings(explain=True, explain_events=6, explain_top=6))
    explainer = explanations._explainer_for(session)  # noqa: SLF001 - the attribution behind `because`
    [attribution] = explainer.attribute([EVEN_USER], [top.item_ids], max_events=6, new_items=table)
    # Every item's explained score is the score it was served with, new items included...
    np.testing.assert_allclose(attribution.scores, [served[i] for i in top.item_ids], atol=1e-4)
    # ...and a new item's contribution is that score minus its score without the event.
    for e, position in enumerate(attribution.positions):
        user_vector = session.recommend([without(EVEN_USER, position)], k=1)[0].user_vector
        for column, item in enumerate(top.item_ids):
            if item in new:
                expected = served[item] - float(user_vector @ table.vectors[table.index[item]])
                assert abs(float(attribution.contributions[e, column]) - expected) < 1e-3
    # The message's `because` lists, per new item, the events that raised that score.
    [because] = explanations.because(session, [window], [top.item_ids])
    tops = attribution.top_positions(6)
    for column, item in enumerate(top.item_ids):
        assert because[column] == tuple(window[p].event_id for p in tops[column])
