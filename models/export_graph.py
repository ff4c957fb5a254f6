"""The user-vector part of the export graph (what `onnx/export.py` traces): the newest position only.

Training needs a hidden state at every position (a loss at each). Serving
needs one vector per user, the newest position's. In a causal decoder the
layers below the last still need every position (they are the keys and values
the newest one attends to), but the last layer only has to run its query,
projection, MLP and norms for that one position. With the default two layers
that removes about 40% of the arithmetic; the result is the same function,
which the export parity check proves against the full model on every export.

This is written against GPT-2's block structure and reuses the trained
submodules (no weight copies). Other backbones serve through the full
backbone call: :func:`user_vector_graph` picks.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from streamrec.models.encoder import SequenceEncoder, position_ids

log = logging.getLogger(__name__)


class FullSequenceUserVector(nn.Module):
    """Any backbone: run the whole model and keep the newest position (the reference computation)."""

    def __init__(self, model: SequenceEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, item_idx: torch.Tensor, event_type: torch.Tensor, time_bucket: torch.Tensor, attention_mask: torch.Tensor,
        context: torch.Tensor | None = None, new_items: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.model(item_idx, event_type, time_bucket, attention_mask, context=context, new_items=new_items).user_vector


class NewestPositionUserVector(nn.Module):
    """GPT-2 backbone: every layer but the last over all positions, the last one for the newest only."""

    def __init__(self, model: SequenceEncoder) -> None:
        super().__init__()
        if not supports_newest_position(model):
            raise ValueError(f"newest-position serving needs a plain GPT-2 backbone, not {model.config.backbone!r}")
        self.model = model
        backbone = model.backbone
        self.blocks = backbone.h
        self.n_heads = backbone.config.n_head
        self.head_dim = backbone.config.n_embd // self.n_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def forward(
        self, item_idx: torch.Tensor, event_type: torch.Tensor, time_bucket: torch.Tensor, attention_mask: torch.Tensor,
        context: torch.Tensor | None = None, new_items: torch.Tensor | None = None,
    ) -> torch.Tensor:
        backbone = self.model.backbone
        hidden = self.model.embed(item_idx, event_type, time_bucket, context=context, new_items=new_items)
        hidden = backbone.drop(hidden + backbone.wpe(position_ids(attention_mask)))
        bias = self._attention_bias(attention_mask, hidden.dtype)
        for block in self.blocks[:-1]:
            hidden = self._block(block, hidden, bias, newest_only=False)
        newest = self._block(self.blocks[-1], hidden, bias[:, :, -1:, :], newest_only=True)
        return backbone.ln_f(newest[:, -1])

    @staticmethod
    def _attention_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``(batch, 1, seq, seq)`` additive mask: causal and no padded keys.

        Blocked scores get the dtype's minimum, not ``-inf``, as transformers'
        eager attention does, so a fully padded query row stays finite.
        """
        seq = attention_mask.shape[-1]
        causal = torch.ones(seq, seq, dtype=torch.bool, device=attention_mask.device).tril()
        allowed = causal[None, None, :, :] & attention_mask.bool()[:, None, None, :]
        return torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)

    def _block(self, block: nn.Module, hidden: torch.Tensor, bias: torch.Tensor, *, newest_only: bool) -> torch.Tensor:
        """One GPT-2 block (pre-norm attention + MLP); ``newest_only`` keeps just the last query."""
        attn = block.attn
        normed = block.ln_1(hidden)
        query, key, value = attn.c_attn(normed).split(attn.split_size, dim=2)
        residual = hidden
        if newest_only:
            query, residual = query[:, -1:], hidden[:, -1:]
        weights = torch.softmax(self._heads(query) @ self._heads(key).transpose(-1, -2) * self.scale + bias, dim=-1)
        context = (weights @ self._heads(value)).transpose(1, 2)
        context = context.reshape(context.shape[0], context.shape[1], -1)
        hidden = residual + attn.resid_dropout(attn.c_proj(context))
        return hidden + block.mlp(block.ln_2(hidden))


def supports_newest_position(model: SequenceEncoder) -> bool:
    """True when the backbone is GPT-2 with the attention variant this module reproduces."""
    cfg = model.backbone.config
    return (
        model.config.backbone == "gpt2"
        and bool(getattr(cfg, "scale_attn_weights", False))
        and not getattr(cfg, "scale_attn_by_inverse_layer_idx", False)
        and not getattr(cfg, "reorder_and_upcast_attn", False)
        and not getattr(cfg, "add_cross_attention", False)
    )


def user_vector_graph(model: SequenceEncoder, *, newest_only: bool = True) -> nn.Module:
    """The module that maps a left-padded batch to ``(batch, dim)`` user vectors for serving."""
    if newest_only and supports_newest_position(model):
        return NewestPositionUserVector(model)
    if newest_only:
        log.info("backbone %s serves through the full-sequence computation", model.config.backbone)
    return FullSequenceUserVector(model)
