"""Encoder contract, ONNX export parity and artifact verification (tiny model, seconds)."""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from streamrec.errors import ModelError
from streamrec.models.config import OOV_INDEX, EncoderConfig
from streamrec.models.encoder import EncoderInput, SequenceEncoder
from streamrec.models.features import ItemVocab, UserSequence, featurize
from streamrec.onnx.artifact import list_versions, load_artifact
from streamrec.onnx.writer import write_artifact
from streamrec.onnx.runtime import ServedModel, TopK

TINY = EncoderConfig(n_items=0, event_types=("view", "click"), max_len=8, hidden=16, layers=1, heads=2)
N_ITEMS = 30


def synthetic_events(n_users: int = 24, n_events: int = 10, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    events = []
    for u in range(n_users):
        t = 1_700_000_000_000
        for j in range(n_events):
            t += rng.randint(1_000, 600_000)
            events.append({"user_id": f"u{u}", "item_id": f"i{(u * 3 + j) % N_ITEMS}",
                           "event_type": rng.choice(["view", "click"]), "ts": t})
    return events


@pytest.fixture(scope="module")
def tiny_model() -> tuple[SequenceEncoder, ItemVocab]:
    torch.manual_seed(0)
    vocab = ItemVocab([f"i{n}" for n in range(N_ITEMS)])
    model = SequenceEncoder(EncoderConfig(**{**TINY.to_dict(), "n_items": len(vocab)})).eval()
    return model, vocab


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, tiny_model) -> Path:
    model, vocab = tiny_model
    real = [UserSequence([f"i{n}" for n in range(k)], ["view"] * k, list(range(0, 1000 * k, 1000))) for k in range(1, 12)]
    return write_artifact(model, vocab, tmp_path_factory.mktemp("models"), metrics={"test": {"ndcg@10": 0.5}},
                          real_sequences=real)


def test_losses_are_finite_and_backpropagate(tiny_model):
    model, vocab = tiny_model
    seqs = [UserSequence(["i1", "i2", "i3"], ["view", "click", "view"], [0, 1000, 2000]), UserSequence(["i4"], ["view"], [0])]
    feats = featurize(seqs, vocab, model.config)
    targets = torch.tensor([[3, 4, 5], [0, 0, 6]])
    for loss in ("full", "sampled"):
        m = SequenceEncoder(EncoderConfig(**{**model.config.to_dict(), "loss": loss, "num_negatives": 8}))
        out = m.calculate_loss(EncoderInput.from_features(feats, targets))
        assert out.n_targets == 4 and math.isfinite(float(out.loss.detach()))
        out.loss.backward()
        assert m.item_emb.weight.grad is not None


def test_full_sort_scores_never_rank_pad_or_oov(tiny_model):
    model, vocab = tiny_model
    feats = featurize([UserSequence(["i1"], ["view"], [0])], vocab, model.config)
    with torch.no_grad():
        scores = model.full_sort_scores(EncoderInput.from_features(feats))
    assert scores.shape == (1, N_ITEMS + 2)
    assert torch.isinf(scores[0, :2]).all() and torch.isfinite(scores[0, 2:]).all()


def test_left_padding_does_not_change_the_user_vector(tiny_model):
    model, vocab = tiny_model
    s = UserSequence(["i1", "i2"], ["view", "click"], [0, 5000])
    narrow = featurize([s], vocab, model.config)
    wide = featurize([s], vocab, model.config, pad_to=6)
    with torch.no_grad():
        a = model.user_vector(EncoderInput.from_features(narrow))
        b = model.user_vector(EncoderInput.from_features(wide))
    assert torch.allclose(a, b, atol=1e-5)


def test_artifact_has_passing_parity_and_manifest(artifact):
    loaded = load_artifact(artifact)
    assert loaded.version == 1 and artifact.name == "v000001"
    assert loaded.parity["passed"] and loaded.parity["max_abs_diff"] <= 1e-4
    names = {c["name"] for c in loaded.parity["cases"]}
    assert any(n.startswith("random") for n in names) and any(n.startswith("real") for n in names)
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"model.onnx", "vocab.json", "config.json", "metrics.json", "parity.json"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    assert loaded.metrics["test"]["ndcg@10"] == 0.5
    assert loaded.vocab.ids[:2] == ["<pad>", "<oov>"]
    # The fp16 graph (for GPU serving) is shipped only with its own passing parity record.
    assert (artifact / "model_fp16.onnx").is_file() and "model_fp16.onnx" in manifest["files"]
    assert loaded.parity["fp16"]["passed"] and loaded.parity["fp16"]["precision"] == "fp16"


def test_versions_increase(tmp_path, tiny_model):
    model, vocab = tiny_model
    first = write_artifact(model, vocab, tmp_path)
    second = write_artifact(model, vocab, tmp_path)
    assert [load_artifact(first).version, load_artifact(second).version] == [1, 2]
    assert list_versions(tmp_path) == [1, 2]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".incoming")]


def _copy(artifact: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / artifact.name
    shutil.copytree(artifact, dst)
    return dst


def test_corrupted_file_is_refused(artifact, tmp_path):
    broken = _copy(artifact, tmp_path)
    vocab = json.loads((broken / "vocab.json").read_text())
    vocab[5], vocab[6] = vocab[6], vocab[5]  # same size, different content
    (broken / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ModelError, match="checksum mismatch for vocab.json"):
        load_artifact(broken)


def test_truncated_onnx_is_refused(artifact, tmp_path):
    broken = _copy(artifact, tmp_path)
    data = (broken / "model.onnx").read_bytes()
    (broken / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="model.onnx.*truncated"):
        load_artifact(broken)
    # Even with a manifest rewritten to match, a truncated graph does not parse.
    manifest = json.loads((broken / "manifest.json").read_text())
    from streamrec.onnx.artifact import sha256_file

    manifest["files"]["model.onnx"] = {"sha256": sha256_file(broken / "model.onnx"), "bytes": len(data) // 2}
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        load_artifact(broken)


def test_incomplete_artifact_is_refused(artifact, tmp_path):
    broken = _copy(artifact, tmp_path)
    (broken / "parity.json").unlink()
    with pytest.raises(ModelError, match="parity.json is missing"):
        load_artifact(broken)
    (broken / "manifest.json").unlink()
    with pytest.raises(ModelError, match="no manifest.json"):
        load_artifact(broken)
    with pytest.raises(ModelError, match="does not exist"):
        load_artifact(tmp_path / "nope")


def test_session_matches_torch_and_honours_the_contract(artifact, tiny_model):
    model, vocab = tiny_model
    session = ServedModel.load(artifact, device="cpu", threads=1)
    assert session.version == 1 and session.providers[0] == "CPUExecutionProvider"
    seqs = [
        UserSequence(["i1", "i2", "brand-new-item"], ["view", "click", "purchase"], [0, 1000, 90_000]),
        UserSequence([f"i{n}" for n in range(20)], ["view"] * 20, list(range(0, 20_000, 1000))),
        UserSequence([], [], []),
    ]
    out = session.recommend(seqs, k=5)
    assert len(out) == 3 and all(isinstance(t, TopK) and len(t.item_ids) == 5 for t in out)
    for seq, top in zip(seqs, out):
        assert not {"<pad>", "<oov>"} & set(top.item_ids)
        assert not set(seq.item_ids) & set(top.item_ids)  # seen items excluded
        assert top.scores == sorted(top.scores, reverse=True)
    # Same numbers as torch on the same featurised input.
    feats = featurize(seqs, vocab, model.config)
    with torch.no_grad():
        uv = model.user_vector(EncoderInput.from_features(feats)).numpy()
    assert np.abs(np.stack([t.user_vector for t in out]) - uv).max() <= 1e-4
    # Without exclusion, the whole catalogue is available; K = catalogue size works.
    full = session.recommend(seqs[:1], k=session.n_recommendable, exclude_seen=False)[0]
    assert len(full.item_ids) == N_ITEMS
    # With exclusion, what is left is returned (never padding/OOV/-inf filler).
    rest = session.recommend(seqs[1:2], k=session.n_recommendable)[0]
    assert len(rest.item_ids) == N_ITEMS - 20
    with pytest.raises(ValueError):
        session.recommend(seqs, k=N_ITEMS + 1)
    with pytest.raises(ValueError):
        session.recommend(seqs, k=0)
    assert session.recommend([], k=3) == []


def test_fp16_without_gpu_falls_back_to_fp32(artifact, caplog):
    with caplog.at_level("WARNING", logger="streamrec.onnx.runtime"):
        session = ServedModel.load(artifact, device="cpu", threads=1, fp16=True)
    assert not session.fp16 and "fp16 requested without a GPU" in caplog.text
    with pytest.raises(ModelError, match="unknown device"):
        ServedModel.load(artifact, device="tpu")


def test_train_from_events_writes_a_loadable_artifact(tmp_path):
    from streamrec.onnx.writer import train_from_events

    path = train_from_events(synthetic_events(), tmp_path, epochs=2, seed=0, model_config=TINY)
    art = load_artifact(path)
    assert art.metrics["epochs_run"] == 2 and "ndcg@10" in art.metrics["test"]
    assert art.vocab.index("i3") != OOV_INDEX
    top = ServedModel.load(path, device="cpu", threads=1).recommend(
        [UserSequence(["i3", "i4"], ["view", "click"], [0, 1000])], k=3)[0]
    assert len(top.item_ids) == 3


def test_training_is_deterministic_by_seed(tmp_path):
    from streamrec.models.data import events_from_dicts
    from streamrec.models.splits import leave_one_out
    from streamrec.models.train import TrainConfig, train

    split = leave_one_out(events_from_dicts(synthetic_events()))
    config = EncoderConfig(**{**TINY.to_dict(), "dropout": 0.1})
    runs = [train(split, config, TrainConfig(epochs=2, seed=s, progress=False, threads=1)) for s in (3, 3, 4)]
    a, b, c = (r.model.item_emb.weight.detach() for r in runs)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert [h["loss"] for h in runs[0].history] == [h["loss"] for h in runs[1].history]


def test_backbone_is_configurable(tmp_path):
    from streamrec.onnx.writer import train_from_events

    config = EncoderConfig(**{**TINY.to_dict(), "backbone": "llama"})
    art = load_artifact(train_from_events(synthetic_events(), tmp_path, epochs=1, model_config=config))
    assert art.config.backbone == "llama" and art.parity["passed"]
    with pytest.raises(ModelError, match="unknown transformers backbone"):
        SequenceEncoder(EncoderConfig(**{**TINY.to_dict(), "n_items": 5, "backbone": "no-such-model"}))


def test_a_top_k_beyond_the_catalogue_is_refused_at_load(artifact):
    from streamrec.stream.model_holder import load_served_model

    assert load_served_model(artifact, top_k=5).version >= 1
    with pytest.raises(ModelError, match="fewer than STREAMREC_TOP_K=500"):
        load_served_model(artifact, top_k=500)



def test_training_without_a_progress_bar_logs_how_far_it_got(caplog):
    from streamrec.models.data import events_from_dicts
    from streamrec.models.splits import leave_one_out
    from streamrec.models.train import TrainConfig, train

    split = leave_one_out(events_from_dicts(synthetic_events()))
    with caplog.at_level(logging.INFO, logger="streamrec.models.train"):
        train(split, TINY, TrainConfig(epochs=4, patience=4, progress=False, threads=1, log_every=2))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 2/4", "epoch 4/4"]
    assert "valid ndcg@10" in lines[0] and "best" in lines[0]
