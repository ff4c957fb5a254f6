"""Encoder configuration and its ONNX export spec, kept side by side.

Like transformers' ``configuration_gpt2.py`` keeps ``GPT2OnnxConfig`` next to
``GPT2Config``: whoever changes the model inputs sees the export contract in
the same file.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from streamrec.config import DEFAULT_EVENT_TYPES, parse_event_types

# Reserved indices shared by item, event-type and time-bucket vocabularies.
PAD_INDEX = 0
OOV_INDEX = 1
FIRST_REAL_INDEX = 2

CONTENT_FIELDS = ("item_content", "text_dim", "item_categories", "max_item_categories", "id_dropout")
CONTEXT_FIELDS = ("context_keys", "context_values")

# The context view's per-key local indices (see EncoderConfig.context_offsets): 0 is padding
# (shared by all keys: one global row 0), 1 a value never seen at training (OOV), 2 an event
# that does not carry the key at all (its own bucket: "no device sent" is not "an unknown device").
CONTEXT_OOV = 1
CONTEXT_MISSING = 2
CONTEXT_FIRST_VALUE = 3

PAD_TOKEN = "<pad>"
OOV_TOKEN = "<oov>"


# Full-catalogue softmax, or sampled negatives (``num_negatives``).
LossKind = Literal["full", "sampled"]
LOSS_KINDS: tuple[LossKind, ...] = ("full", "sampled")


@dataclass(frozen=True)
class EncoderConfig:
    """Everything needed to rebuild the encoder and its featurisation.

    ``n_items`` counts the reserved padding and OOV rows, so real items are
    indices ``2 .. n_items - 1``.
    """

    n_items: int
    # The worker's default event types (one spelling, in streamrec.config), in index order.
    event_types: tuple[str, ...] = tuple(parse_event_types(DEFAULT_EVENT_TYPES))
    max_len: int = 50
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    # Dropout on the summed input embeddings (item + event type + time gap).
    emb_dropout: float = 0.2
    # Log2 buckets of the gap to the previous event, in seconds; see features.py.
    n_time_buckets: int = 34
    # Any transformers model type AutoConfig knows that works as a causal
    # decoder over ``inputs_embeds`` (gpt2, llama, ...).
    backbone: str = "gpt2"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    loss: LossKind = "full"
    num_negatives: int = 256
    use_event_types: bool = True
    use_time_gaps: bool = True
    # --- the item content view (multi-view items; off = the id-only model) -------------
    # An item's vector is its id embedding + a projection of its (frozen, precomputed)
    # text vector + the sum of its category embeddings; see SequenceEncoder.item_table.
    item_content: bool = False
    text_dim: int = 384
    # Category vocabulary: index FIRST_REAL_INDEX + i is item_categories[i]; 1 = unknown category.
    item_categories: tuple[str, ...] = ()
    max_item_categories: int = 8
    # Share of items whose id embedding is dropped at each training step, so the content
    # views alone learn to place an item (a new item has no trained id embedding).
    id_dropout: float = 0.0
    # --- the context view (the event's own ``context`` object; off = no context input) ----
    # Named keys of the event's ``context`` (e.g. ``device``), each a categorical feature
    # whose embedding is summed into the input. ``context_values[j]`` is key j's vocabulary
    # learned at training (the values in index order); anything else is OOV at serving.
    context_keys: tuple[str, ...] = ()
    context_values: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        # Tuples as declared, whatever a caller passed (lists from JSON or a vocabulary builder):
        # the config is hashable, and so are the lookup tables derived from it (features._context_tables).
        object.__setattr__(self, "context_keys", tuple(self.context_keys))
        object.__setattr__(self, "context_values", tuple(tuple(v) for v in self.context_values))
        if len(set(self.context_keys)) != len(self.context_keys):
            raise ValueError(f"context keys repeat: {self.context_keys}")
        if self.context_values and len(self.context_values) != len(self.context_keys):
            raise ValueError(f"{len(self.context_keys)} context keys but {len(self.context_values)} value lists")

    @property
    def context_offsets(self) -> tuple[int, ...]:
        """Global row of each context key's local index 0 in the one shared context table.

        Row 0 is padding; key j owns rows ``offset_j + 1 ..`` (OOV, missing, its values),
        so a key's local index ``l >= 1`` is global row ``offset_j + l``.
        """
        offsets, start = [], 0
        for j in range(len(self.context_keys)):
            offsets.append(start)
            start += CONTEXT_FIRST_VALUE - 1 + len(self.context_values[j] if self.context_values else ())
        return tuple(offsets)

    @property
    def n_context_rows(self) -> int:
        """Rows of the shared context table (padding + per key: OOV, missing, values); 0 when off."""
        if not self.context_keys:
            return 0
        values = self.context_values or tuple(() for _ in self.context_keys)
        return 1 + sum(CONTEXT_FIRST_VALUE - 1 + len(v) for v in values)

    @property
    def n_event_types(self) -> int:
        """Event-type vocabulary size including padding and unknown."""
        return FIRST_REAL_INDEX + len(self.event_types)

    @property
    def n_category_rows(self) -> int:
        """Category vocabulary size including padding and unknown."""
        return FIRST_REAL_INDEX + len(self.item_categories)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["event_types"] = list(self.event_types)
        if not self.item_content:
            # An id-only model's config.json stays as it was before the content view existed.
            for name in CONTENT_FIELDS:
                data.pop(name)
        else:
            data["item_categories"] = list(self.item_categories)
        if not self.context_keys:
            # Likewise a model without the context view keeps its config.json as before.
            for name in CONTEXT_FIELDS:
                data.pop(name)
        else:
            data["context_keys"] = list(self.context_keys)
            data["context_values"] = [list(v) for v in self.context_values]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EncoderConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["event_types"] = tuple(values.get("event_types", ()))
        values["item_categories"] = tuple(values.get("item_categories", ()))
        values["context_keys"] = tuple(values.get("context_keys", ()))
        values["context_values"] = tuple(tuple(v) for v in values.get("context_values", ()))
        return cls(**values)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> "EncoderConfig":
        return cls.from_dict(json.loads(path.read_text()))


@dataclass(frozen=True)
class EncoderOnnxConfig:
    """The ONNX export contract of the encoder (inputs, outputs, dynamic axes, opset).

    Inputs are left-padded ``(batch, seq)`` int64 tensors, so the last
    position is always the newest event. ``exclude`` is ``(batch, n_exclude)``
    item indices that must not be recommended (pad with 0, which is excluded
    anyway); ``k`` is a scalar int64.
    """

    opset: int = 17
    inputs: tuple[str, ...] = ("item_idx", "event_type", "time_bucket", "attention_mask", "exclude", "k")
    outputs: tuple[str, ...] = ("user_vector", "topk_indices", "topk_scores")
    # With the context view on, one more input, last (so a graph without it keeps its exact
    # inputs): ``(batch, seq, n_keys)`` int64 global rows of the context table, 0 = padding.
    context_input: str = "context"
    # With the content view on, one more input after that: ``(n_new, dim)`` float vectors of
    # items the graph was exported without (content alone). Index ``n_items + j`` is row
    # ``j`` in ``item_idx`` (a window can hold an item that appeared after training), in
    # ``exclude`` and in ``topk_indices`` (new items are ranked with the rest). At least one
    # row: serving feeds a zero row, and excludes it, when it holds no new item.
    new_items_input: str = "new_item_vectors"

    def inputs_for(self, config: EncoderConfig) -> tuple[str, ...]:
        """The graph inputs of a model with this config (context and new-item inputs only with those views)."""
        inputs = (*self.inputs, self.context_input) if config.context_keys else self.inputs
        return (*inputs, self.new_items_input) if config.item_content else inputs

    def accepted_inputs(self, config: EncoderConfig) -> tuple[tuple[str, ...], ...]:
        """Graph inputs a served artifact of this config may have: today's, and a multi-view graph exported before new-item inputs."""
        current = self.inputs_for(config)
        return (current, current[:-1]) if config.item_content else (current,)

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        seq_axes = {0: "batch", 1: "seq"}
        return {
            "item_idx": seq_axes,
            "event_type": seq_axes,
            "time_bucket": seq_axes,
            "attention_mask": seq_axes,
            "exclude": {0: "batch", 1: "n_exclude"},
            self.context_input: seq_axes,
            self.new_items_input: {0: "n_new"},
            "user_vector": {0: "batch"},
            "topk_indices": {0: "batch", 1: "k"},
            "topk_scores": {0: "batch", 1: "k"},
        }


ONNX_CONFIG = EncoderOnnxConfig()
