"""The context view through export, parity, the artifact and the served model (ONNX Runtime)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from streamrec.models.config import ONNX_CONFIG, EncoderConfig
from streamrec.models.encoder import SequenceEncoder
from streamrec.models.features import ItemVocab, UserSequence
from streamrec.onnx.artifact import load_artifact
from streamrec.onnx.explain import Explainer
from streamrec.onnx.runtime import ServedModel
from streamrec.onnx.writer import train_from_events, write_artifact
from streamrec.stream.generator import ContextWorldConfig, context_events

CONTEXT = EncoderConfig(n_items=0, event_types=("view",), max_len=8, hidden=16, layers=1, heads=2,
                        context_keys=("device", "channel"), context_values=(("tv", "phone"), ("web", "app")))
ITEMS = [f"i{n}" for n in range(20)]
DEVICES = ("tv", "phone", "fridge", None)


def _sequences(n: int = 40, seed: int = 0) -> list[UserSequence]:
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n):
        length = int(rng.integers(1, 12))
        contexts = [None if (d := DEVICES[int(rng.integers(len(DEVICES)))]) is None else {"device": d, "channel": "web"}
                    for _ in range(length)]
        out.append(UserSequence([ITEMS[int(i)] for i in rng.integers(0, len(ITEMS), length)], ["view"] * length,
                                list(range(0, 1000 * length, 1000)), contexts if u % 5 else None))
    return out


@pytest.fixture(scope="module")
def context_artifact(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    vocab = ItemVocab(ITEMS)
    model = SequenceEncoder(EncoderConfig(**{**CONTEXT.to_dict(), "n_items": len(vocab)})).eval()
    with torch.no_grad():  # large enough context rows that every key visibly moves the vectors
        model.context_emb.weight[1:].normal_(std=1.0)
    return write_artifact(model, vocab, tmp_path_factory.mktemp("ctx"), real_sequences=_sequences())


def test_the_graph_has_the_context_input_last_and_parity_covers_it(context_artifact: Path) -> None:
    names = [i.name for i in onnx.load(str(context_artifact / "model.onnx")).graph.input]
    assert names == [*ONNX_CONFIG.inputs, "context"]
    config = json.loads((context_artifact / "config.json").read_text())
    assert config["onnx"]["inputs"] == names
    assert config["context_keys"] == ["device", "channel"] and config["context_values"] == [["tv", "phone"], ["web", "app"]]
    parity = json.loads((context_artifact / "parity.json").read_text())
    assert parity["passed"] and any(c["name"].startswith("real_") for c in parity["cases"])
    artifact = load_artifact(context_artifact)
    assert artifact.config.context_keys == ("device", "channel")


def test_an_artifact_without_context_keys_keeps_its_exact_inputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vocab = ItemVocab(ITEMS)
    plain = EncoderConfig(n_items=len(vocab), event_types=("view",), max_len=8, hidden=16, layers=1, heads=2)
    path = write_artifact(SequenceEncoder(plain).eval(), vocab, tmp_path, real_sequences=_sequences())
    assert [i.name for i in onnx.load(str(path / "model.onnx")).graph.input] == list(ONNX_CONFIG.inputs)
    config = json.loads((path / "config.json").read_text())
    assert "context_keys" not in config and config["onnx"]["inputs"] == list(ONNX_CONFIG.inputs)
    served = ServedModel.load(path, device="cpu", threads=1)
    assert served.context_keys == ()
    # Contexts in the sequences are ignored by a model that has no context view.
    with_ctx = served.recommend([UserSequence(["i1"], ["view"], [0], [{"device": "tv"}])], k=5)[0]
    without = served.recommend([UserSequence(["i1"], ["view"], [0])], k=5)[0]
    assert with_ctx.item_ids == without.item_ids


def test_the_served_model_reads_the_context_and_unknown_values_share_the_oov_row(context_artifact: Path) -> None:
    served = ServedModel.load(context_artifact, device="cpu", threads=1)
    assert served.context_keys == ("device", "channel")

    def vector(device: str | None) -> np.ndarray:
        ctx = None if device is None else [{"device": device}]
        return served.recommend([UserSequence(["i3"], ["view"], [0], ctx)], k=3)[0].user_vector

    assert not np.allclose(vector("tv"), vector("phone"))
    assert not np.allclose(vector("tv"), vector(None))
    np.testing.assert_allclose(vector("fridge"), vector("oven"))  # both unseen in training: OOV


def test_sharded_serving_with_context_is_the_unsharded_answer(context_artifact: Path) -> None:
    seqs = _sequences(64, seed=3)
    one = ServedModel.load(context_artifact, device="cpu", threads=1).recommend(seqs, k=5)
    two = ServedModel.load(context_artifact, device="cpu", threads=2).recommend(seqs, k=5)
    for a, b in zip(one, two):
        assert a.item_ids == b.item_ids
        np.testing.assert_allclose(a.user_vector, b.user_vector, atol=1e-5)


def test_explanations_run_on_a_context_graph(context_artifact: Path) -> None:
    served = ServedModel.load(context_artifact, device="cpu", threads=1)
    seqs = _sequences(4, seed=5)
    recs = served.recommend(seqs, k=3)
    explainer = Explainer.for_session(served)
    attributions = explainer.attribute(seqs, [r.item_ids for r in recs])
    for seq, rec, attribution in zip(seqs, recs, attributions):
        # The window's own scores from the cut graph equal the served scores.
        np.testing.assert_allclose(attribution.scores, rec.scores, atol=1e-4)
        assert attribution.contributions.shape == (min(len(seq), CONTEXT.max_len), len(rec.item_ids))


def test_a_model_trained_where_context_decides_the_next_item_follows_the_context(tmp_path: Path) -> None:
    events = context_events(ContextWorldConfig(num_users=240, pairs_per_user=6, group_size=4, seed=1))
    path = train_from_events(events, tmp_path, epochs=12, context_keys=("device",),
                             model_config=EncoderConfig(n_items=0, hidden=32, layers=1, heads=2))
    served = ServedModel.load(path, device="cpu", threads=1)
    assert served.config.context_values == (("tv", "phone"),) or served.config.context_values == (("phone", "tv"),)
    for device, other in (("tv", "phone"), ("phone", "tv")):
        top = served.recommend([UserSequence(["n3"], ["view"], [0], [{"device": device}])], k=4)[0].item_ids
        # The same item history, only the context differs: the device's own items, none of the other's.
        assert sum(i.startswith(f"{device}-") for i in top) >= 2 and not any(i.startswith(f"{other}-") for i in top), (device, top)


def test_train_context_keys_option_parses_a_comma_list() -> None:
    from streamrec.onnx.cli import parse_context_keys

    assert parse_context_keys("") == ()
    assert parse_context_keys(" device, channel,,device ") == ("device", "channel")
