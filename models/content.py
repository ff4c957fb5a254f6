"""Item content for the multi-view encoder: text vectors and categories aligned with the item vocabulary.

The model room does not know the catalogue contract (``streamrec.stream.items``):
callers hand it an :class:`ItemContent` (ids, precomputed text vectors from
:mod:`streamrec.models.text`, category names). :func:`attach_content` fills a
model's content buffers by vocabulary index; :func:`add_items` grows a trained
model by items it never saw (their vectors from content alone), which is what
the cold-item evaluation does and what the live path will do per item record.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from streamrec.errors import ModelError
from streamrec.models.config import FIRST_REAL_INDEX, OOV_INDEX, PAD_INDEX, EncoderConfig
from streamrec.models.encoder import SequenceEncoder
from streamrec.models.features import ItemVocab


@dataclass(frozen=True)
class ItemContent:
    """Content of some items: ``text_vectors[i]`` and ``categories[i]`` describe ``item_ids[i]``."""

    item_ids: Sequence[str]
    text_vectors: np.ndarray
    categories: Sequence[Sequence[str]]

    def __post_init__(self) -> None:
        if not (len(self.item_ids) == len(self.text_vectors) == len(self.categories)):
            raise ValueError(
                f"ItemContent fields differ in length: {len(self.item_ids)} ids, "
                f"{len(self.text_vectors)} text vectors, {len(self.categories)} category lists"
            )

    @property
    def text_dim(self) -> int:
        return int(self.text_vectors.shape[1]) if self.text_vectors.ndim == 2 else 0

    def rows(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.item_ids)}


def category_vocabulary(content: ItemContent, *, min_items: int = 1) -> tuple[str, ...]:
    """Category names used by at least ``min_items`` items, most used first (ties by first appearance)."""
    counts = Counter(c for cats in content.categories for c in dict.fromkeys(cats))
    return tuple(c for c in sorted(counts, key=lambda c: -counts[c]) if counts[c] >= min_items)


def content_config(base: EncoderConfig, content: ItemContent, *, id_dropout: float) -> EncoderConfig:
    """``base`` with the content view on, sized for ``content`` (text dimension, category vocabulary)."""
    categories = category_vocabulary(content)
    longest = max((len(c) for c in content.categories), default=1)
    return dataclasses.replace(
        base, item_content=True, text_dim=content.text_dim, item_categories=categories,
        max_item_categories=max(1, min(longest, base.max_item_categories)), id_dropout=id_dropout,
    )


def content_tensors(
    item_ids: Sequence[str], content: ItemContent, config: EncoderConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(len(item_ids), text_dim)`` text vectors and ``(len(item_ids), max_item_categories)`` category indices.

    Items without content get a zero text vector and no categories (their id
    embedding is all they have); unknown category names map to the OOV row.
    """
    rows = content.rows()
    cat_index = {name: FIRST_REAL_INDEX + i for i, name in enumerate(config.item_categories)}
    text = np.zeros((len(item_ids), config.text_dim), dtype=np.float32)
    cats = np.full((len(item_ids), config.max_item_categories), PAD_INDEX, dtype=np.int64)
    for i, item in enumerate(item_ids):
        row = rows.get(item)
        if row is None:
            continue
        text[i] = content.text_vectors[row]
        names = list(dict.fromkeys(content.categories[row]))[: config.max_item_categories]
        cats[i, : len(names)] = [cat_index.get(n, OOV_INDEX) for n in names]
    return torch.from_numpy(text), torch.from_numpy(cats)


def attach_content(model: SequenceEncoder, vocab: ItemVocab, content: ItemContent, trained_items: Iterable[str]) -> None:
    """Fill the model's content buffers by vocabulary index.

    Only items in ``trained_items`` (met in training sequences) keep their id
    embedding; every other item is represented by its content alone, exactly
    as a brand-new item would be.
    """
    if not model.config.item_content:
        raise ModelError("attach_content needs a model with the content view (item_content on)")
    ids = vocab.ids
    text, cats = content_tensors(ids, content, model.config)
    trained = set(trained_items)
    has_id = torch.tensor([1.0 if (i < FIRST_REAL_INDEX or item in trained) else 0.0 for i, item in enumerate(ids)])
    has_id[PAD_INDEX] = 0.0
    model.set_item_content(text, cats, has_id)


@torch.no_grad()
def add_items(model: SequenceEncoder, vocab: ItemVocab, content: ItemContent) -> tuple[SequenceEncoder, ItemVocab]:
    """A copy of ``model`` that also ranks the items of ``content`` it does not know, from their content alone.

    Known items keep their rows; new items are appended (no id embedding).
    No training happens: this is how an item that appears after training
    becomes recommendable.
    """
    if not model.config.item_content:
        raise ModelError("an id-only model cannot rank items it was not trained on; train with the content view")
    new_ids = [i for i in dict.fromkeys(content.item_ids) if i not in vocab]
    if not new_ids:
        return model, vocab
    grown_vocab = ItemVocab(vocab.ids[FIRST_REAL_INDEX:] + new_ids)
    grown = SequenceEncoder(dataclasses.replace(model.config, n_items=len(grown_vocab)))
    state = model.state_dict()
    fresh = grown.state_dict()
    n_old = model.config.n_items
    for name, tensor in state.items():
        if fresh[name].shape == tensor.shape:
            fresh[name] = tensor.clone()
        else:  # tables by item index: old rows copied, new rows set below
            fresh[name][:n_old] = tensor
    grown.load_state_dict(fresh)
    text, cats = content_tensors(new_ids, content, model.config)
    grown.item_text[n_old:] = text
    grown.item_category_idx[n_old:] = cats
    grown.item_has_id[n_old:] = 0.0
    grown.item_emb.weight[n_old:] = 0.0
    return grown.eval(), grown_vocab
