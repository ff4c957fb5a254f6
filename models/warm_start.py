"""Warm start: a candidate model that begins from the live one, grown for items first seen since."""

from __future__ import annotations

import torch

from streamrec.models.features import ItemVocab


def grow_vocab(live_vocab: ItemVocab, items: list[str]) -> tuple[ItemVocab, int]:
    """The live vocabulary plus items first seen since (appended, so live indices keep their rows)."""
    known = set(live_vocab.ids[2:])
    new = [i for i in dict.fromkeys(items) if i not in known]
    return ItemVocab(list(live_vocab.ids[2:]) + new), len(new)


def warm_state(live_state: dict[str, torch.Tensor], fresh_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The live weights, with embedding tables grown to the new sizes (new rows keep fresh init)."""
    state = dict(fresh_state)
    for name, tensor in live_state.items():
        if name not in state:
            continue
        target = state[name]
        if target.shape == tensor.shape:
            state[name] = tensor.clone()
        elif target.dim() == tensor.dim() and target.shape[1:] == tensor.shape[1:] and target.shape[0] > tensor.shape[0]:
            grown = target.clone()
            grown[: tensor.shape[0]] = tensor
            state[name] = grown
    return state
