"""The context view: value normalisation, per-key vocabularies with OOV and missing rows, featurisation, data, encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from streamrec.errors import ModelError
from streamrec.models.config import CONTEXT_MISSING, CONTEXT_OOV, CONTEXT_FIRST_VALUE, EncoderConfig
from streamrec.models.data import events_from_dicts, load_csv, load_jsonl
from streamrec.models.encoder import EncoderInput, SequenceEncoder
from streamrec.models.features import (
    MAX_CONTEXT_VALUE_CHARS,
    ItemVocab,
    UserSequence,
    build_context_values,
    context_value,
    featurize,
    pick_context,
)
from streamrec.models.splits import leave_one_out, slice_sequence
from streamrec.models.train import with_context_vocab

CONFIG = EncoderConfig(n_items=6, event_types=("view",), max_len=6, hidden=16, layers=1, heads=2,
                       context_keys=("device", "channel"), context_values=(("tv", "phone"), ("web",)))
VOCAB = ItemVocab(["a", "b", "c", "d"])


def test_context_values_are_short_strings_whatever_the_producer_sent() -> None:
    assert context_value("tv") == "tv"
    assert context_value("x" * 10_000) == "x" * MAX_CONTEXT_VALUE_CHARS
    assert context_value(1) == "1" and context_value(1.5) == "1.5" and context_value(True) == "true"
    assert context_value({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    assert len(context_value({"k": "v" * 1000})) == MAX_CONTEXT_VALUE_CHARS
    assert context_value(None) is None


def test_pick_context_keeps_the_named_keys_only_and_never_raises() -> None:
    raw = {"device": "tv", "channel": 7, "location": "Paris", "junk": None}
    assert pick_context(raw, ("device", "channel")) == {"device": "tv", "channel": "7"}
    assert pick_context(raw, ("other",)) is None
    assert pick_context(raw) == {"device": "tv", "channel": "7", "location": "Paris"}
    for bad in (None, "tv", 3, [1], {}):
        assert pick_context(bad, ("device",)) is None


def test_vocabularies_are_most_frequent_first_and_capped() -> None:
    contexts = [{"device": "phone"}, {"device": "tv"}, {"device": "tv"}, None, {"channel": "web"}, {"device": "web"}]
    assert build_context_values(contexts, ("device", "channel")) == (("tv", "phone", "web"), ("web",))
    assert build_context_values(contexts, ("device",), max_values=2) == (("tv", "phone"),)


def test_rows_per_key_padding_oov_and_missing() -> None:
    offsets = CONFIG.context_offsets
    assert offsets == (0, 4)  # device: OOV 1, missing 2, tv 3, phone 4; channel: OOV 5, missing 6, web 7
    assert CONFIG.n_context_rows == 8
    seq = UserSequence(["a", "b", "c", "d"], ["view"] * 4, [0, 1, 2, 3],
                       [{"device": "tv", "channel": "web"}, {"device": "fridge"}, None, {"device": "phone", "channel": "tv"}])
    feats = featurize([seq, UserSequence(["a"], ["view"], [0])], VOCAB, CONFIG)
    assert feats.context is not None and feats.context.shape == (2, 4, 2)
    assert feats.context[0].tolist() == [
        [CONTEXT_FIRST_VALUE, 4 + CONTEXT_FIRST_VALUE],  # tv, web
        [CONTEXT_OOV, 4 + CONTEXT_MISSING],               # a value never seen in training: OOV; no channel: missing
        [CONTEXT_MISSING, 4 + CONTEXT_MISSING],           # no context at all: both missing
        [CONTEXT_FIRST_VALUE + 1, 4 + CONTEXT_OOV],       # phone; "tv" is not a channel value: OOV
    ]
    # The second user has no contexts: padding (0) before its one event, missing at it.
    assert feats.context[1].tolist() == [[0, 0], [0, 0], [0, 0], [CONTEXT_MISSING, 4 + CONTEXT_MISSING]]
    empty = featurize([UserSequence([], [], [])], VOCAB, CONFIG)
    assert empty.context.tolist() == [[[CONTEXT_MISSING, 4 + CONTEXT_MISSING]]]


def test_a_value_that_is_not_a_string_in_a_sequence_is_oov_not_an_error() -> None:
    seq = UserSequence(["a"], ["view"], [0], [{"device": {"nested": 1}}])  # type: ignore[dict-item]
    assert featurize([seq], VOCAB, CONFIG).context[0, -1, 0] == CONTEXT_OOV


def test_without_context_keys_there_is_no_context_array_and_the_config_is_as_before() -> None:
    plain = EncoderConfig(n_items=6)
    seq = UserSequence(["a"], ["view"], [0], [{"device": "tv"}])
    assert featurize([seq], VOCAB, plain).context is None
    assert "context_keys" not in plain.to_dict() and "context_values" not in plain.to_dict()
    assert EncoderConfig.from_dict(json.loads(json.dumps(CONFIG.to_dict()))) == CONFIG
    assert EncoderConfig.from_dict(plain.to_dict()) == plain


def test_the_vocabulary_is_learned_from_training_sequences_once() -> None:
    config = EncoderConfig(n_items=6, context_keys=("device",))
    seqs = [UserSequence(["a", "b"], ["view"] * 2, [0, 1], [{"device": "tv"}, {"device": "tv"}]),
            UserSequence(["a"], ["view"], [0], [{"device": "phone"}])]
    learned = with_context_vocab(config, seqs)
    assert learned.context_values == (("tv", "phone"),)
    assert with_context_vocab(learned, []) is learned  # a warm start keeps the live vocabulary
    assert with_context_vocab(EncoderConfig(n_items=6), seqs) == EncoderConfig(n_items=6)


def test_loaders_read_the_context_object_and_splits_carry_it(tmp_path: Path) -> None:
    lines = [
        {"user_id": "u", "item_id": "a", "ts": 1, "context": {"device": "tv", "n": 3}},
        {"user_id": "u", "item_id": "b", "ts": 2},
        {"user_id": "u", "item_id": "c", "ts": 3, "context": "not an object"},
        {"user_id": "u", "item_id": "d", "ts": 4, "context": {"device": "phone"}},
    ]
    path = tmp_path / "e.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines))
    log = load_jsonl(path)
    assert log.contexts == [{"device": "tv", "n": "3"}, None, None, {"device": "phone"}]
    seq = log.user_sequences()["u"]
    assert seq.contexts == log.contexts
    assert slice_sequence(seq, 1, 3).contexts == [None, None]
    split = leave_one_out(log)
    assert split.test[0].history.contexts[-1] is None and split.train["u"].contexts == [{"device": "tv", "n": "3"}, None]
    csv_path = tmp_path / "e.csv"
    csv_path.write_text("user_id,item_id,ts,context.device\nu,a,1,tv\nu,b,2,\n")
    assert load_csv(csv_path).contexts == [{"device": "tv"}, None]
    # A Parquet string column holding the JSON object.
    assert events_from_dicts([{"user_id": "u", "item_id": "a", "ts": 1, "context": '{"device": "tv"}'}]).contexts == [{"device": "tv"}]
    # A log without any context builds sequences without contexts (nothing to carry).
    assert events_from_dicts([{"user_id": "u", "item_id": "a", "ts": 1}]).user_sequences()["u"].contexts is None


def _encode(model: SequenceEncoder, contexts) -> torch.Tensor:
    seq = UserSequence(["a", "b"], ["view"] * 2, [0, 1000], contexts)
    return model.user_vector(EncoderInput.from_features(featurize([seq], VOCAB, model.config)))


def test_the_encoder_adds_the_context_embeddings_and_needs_them() -> None:
    torch.manual_seed(0)
    model = SequenceEncoder(CONFIG).eval()
    assert model.context_emb.weight.shape == (CONFIG.n_context_rows, CONFIG.hidden)
    assert torch.all(model.context_emb.weight[0] == 0)  # padding row
    tv = _encode(model, [{"device": "tv"}, {"device": "tv"}])
    phone = _encode(model, [{"device": "tv"}, {"device": "phone"}])
    assert not torch.allclose(tv, phone)
    # An unknown value and another unknown value are the same input (the key's OOV row).
    assert torch.allclose(_encode(model, [None, {"device": "fridge"}]), _encode(model, [None, {"device": "oven"}]))
    with pytest.raises(ModelError, match="context"):
        model(*(torch.zeros(1, 2, dtype=torch.long) for _ in range(4)))


def test_an_encoder_without_context_keys_has_no_context_table_and_ignores_contexts() -> None:
    torch.manual_seed(0)
    model = SequenceEncoder(EncoderConfig(n_items=6, event_types=("view",), max_len=6, hidden=16, layers=1, heads=2)).eval()
    assert not hasattr(model, "context_emb")
    assert torch.allclose(_encode(model, [{"device": "tv"}, None]), _encode(model, None))
    np.testing.assert_array_equal(sorted(model.state_dict()), sorted(k for k in model.state_dict() if "context" not in k))


def test_a_warm_started_round_keeps_the_live_context_vocabulary_and_rows() -> None:
    from streamrec.models.train import TrainConfig, train
    from streamrec.models.warm_start import warm_state

    events = [{"user_id": f"u{u}", "item_id": f"i{(u + n) % 5}", "ts": n, "context": {"device": ("tv", "car")[n % 2]}}
              for u in range(6) for n in range(5)]
    split = leave_one_out(events_from_dicts(events))
    live_config = EncoderConfig(n_items=7, event_types=("view",), max_len=6, hidden=16, layers=1, heads=2,
                                context_keys=("device",), context_values=(("tv", "phone"),))
    torch.manual_seed(0)
    live = SequenceEncoder(live_config)
    vocab = ItemVocab([f"i{n}" for n in range(5)])
    init = warm_state(live.state_dict(), SequenceEncoder(live_config).state_dict())
    result = train(split, live_config, TrainConfig(epochs=1, patience=1, progress=False), vocab=vocab, init_state=init)
    # "car" is new since the live version: OOV for the candidate, whose rows keep their meaning.
    assert result.model.config.context_values == (("tv", "phone"),)
    assert result.model.context_emb.weight.shape == live.context_emb.weight.shape
