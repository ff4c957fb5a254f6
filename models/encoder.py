"""The sequence encoder: event embeddings -> transformers causal decoder -> user vector.

One interface in RecBole's shape (``calculate_loss`` / ``user_vector`` /
``full_sort_scores``), outputs as dataclasses. Scores are dot products with
the item embedding table (input and output embeddings are tied), so the
ONNX graph can rank the whole catalogue with one MatMul.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel, PretrainedConfig

from streamrec.errors import ModelError
from streamrec.models.config import FIRST_REAL_INDEX, PAD_INDEX, EncoderConfig
from streamrec.models.features import FeatureBatch

log = logging.getLogger(__name__)


@dataclass
class EncoderInput:
    """Torch view of a :class:`FeatureBatch`, plus next-item targets for training (0 = no target)."""

    item_idx: torch.Tensor
    event_type: torch.Tensor
    time_bucket: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor | None = None

    @classmethod
    def from_features(cls, batch: FeatureBatch, targets: torch.Tensor | None = None) -> "EncoderInput":
        return cls(
            item_idx=torch.from_numpy(batch.item_idx),
            event_type=torch.from_numpy(batch.event_type),
            time_bucket=torch.from_numpy(batch.time_bucket),
            attention_mask=torch.from_numpy(batch.attention_mask),
            targets=targets,
        )


@dataclass
class EncoderOutput:
    """``hidden``: ``(batch, seq, dim)`` states; ``user_vector``: ``(batch, dim)`` at the newest position."""

    hidden: torch.Tensor
    user_vector: torch.Tensor


@dataclass
class LossOutput:
    loss: torch.Tensor
    n_targets: int


def _backbone_config(config: EncoderConfig) -> PretrainedConfig:
    """A randomly initialised transformers config for the chosen backbone (nothing is downloaded)."""
    common = dict(config.backbone_kwargs)
    if config.backbone == "gpt2":
        values = dict(
            vocab_size=1,  # we feed inputs_embeds; the backbone's token table is unused
            n_positions=config.max_len,
            n_embd=config.hidden,
            n_layer=config.layers,
            n_head=config.heads,
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.dropout,
            bos_token_id=None,
            eos_token_id=None,
        )
    else:
        values = dict(
            vocab_size=1,
            hidden_size=config.hidden,
            intermediate_size=4 * config.hidden,
            num_hidden_layers=config.layers,
            num_attention_heads=config.heads,
            num_key_value_heads=config.heads,
            max_position_embeddings=config.max_len,
            attention_dropout=config.dropout,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
        )
    values.update(common)
    try:
        return AutoConfig.for_model(config.backbone, **values)
    except ValueError as exc:
        raise ModelError(f"unknown transformers backbone {config.backbone!r}: {exc}") from exc


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions count real events from the oldest kept one.

    Left padding then does not shift them, so training chunks and serving
    windows of the same events see the same positions.
    """
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


class SequenceEncoder(nn.Module):
    """Transformer encoder over item, event-type and time-gap embeddings of left-padded sequences."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.item_emb = nn.Embedding(config.n_items, config.hidden, padding_idx=PAD_INDEX)
        self.event_emb = nn.Embedding(config.n_event_types, config.hidden, padding_idx=PAD_INDEX)
        self.time_emb = nn.Embedding(config.n_time_buckets, config.hidden, padding_idx=PAD_INDEX)
        self.emb_norm = nn.LayerNorm(config.hidden)
        self.emb_dropout = nn.Dropout(config.emb_dropout)
        # Eager attention: exports to plain ONNX ops and left padding never
        # yields NaN rows (masked scores use the dtype minimum, not -inf).
        self.backbone = AutoModel.from_config(_backbone_config(config), attn_implementation="eager")
        for emb in (self.item_emb, self.event_emb, self.time_emb):
            nn.init.normal_(emb.weight, std=0.02)
            with torch.no_grad():
                emb.weight[PAD_INDEX].zero_()

    # --- encoding -------------------------------------------------------------
    def forward(
        self,
        item_idx: torch.Tensor,
        event_type: torch.Tensor,
        time_bucket: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> EncoderOutput:
        x = self.embed(item_idx, event_type, time_bucket)
        hidden = self.backbone(
            inputs_embeds=x, attention_mask=attention_mask, position_ids=position_ids(attention_mask)
        ).last_hidden_state
        return EncoderOutput(hidden=hidden, user_vector=hidden[:, -1])

    def embed(self, item_idx: torch.Tensor, event_type: torch.Tensor, time_bucket: torch.Tensor) -> torch.Tensor:
        """``(batch, seq, dim)`` input embeddings: item + event type + time gap, normalised."""
        x = self.item_emb(item_idx)
        if self.config.use_event_types:
            x = x + self.event_emb(event_type)
        if self.config.use_time_gaps:
            x = x + self.time_emb(time_bucket)
        return self.emb_dropout(self.emb_norm(x))

    def encode(self, batch: EncoderInput) -> EncoderOutput:
        return self(batch.item_idx, batch.event_type, batch.time_bucket, batch.attention_mask)

    def user_vector(self, batch: EncoderInput) -> torch.Tensor:
        """``(batch, dim)`` user vectors: the hidden state at the newest (last) position."""
        return self.encode(batch).user_vector

    def item_scores(self, vectors: torch.Tensor) -> torch.Tensor:
        """Dot products with every item; padding and OOV rows get -inf so they are never ranked."""
        scores = vectors @ self.item_emb.weight.T
        scores[..., :FIRST_REAL_INDEX] = float("-inf")
        return scores

    def full_sort_scores(self, batch: EncoderInput) -> torch.Tensor:
        """``(batch, n_items)`` scores over the whole catalogue."""
        return self.item_scores(self.user_vector(batch))

    # --- training --------------------------------------------------------------
    def calculate_loss(self, batch: EncoderInput) -> LossOutput:
        """Next-item cross-entropy at every position that has a target.

        ``full``: softmax over the whole catalogue. ``sampled``: softmax over
        the positive and ``num_negatives`` uniformly sampled items shared by
        the batch (accidental hits masked).
        """
        if batch.targets is None:
            raise ValueError("calculate_loss needs targets")
        hidden = self.encode(batch).hidden
        has_target = batch.targets >= FIRST_REAL_INDEX
        states = hidden[has_target]
        targets = batch.targets[has_target]
        if self.config.loss == "full":
            logits = self.item_scores(states)
            loss = F.cross_entropy(logits, targets)
        else:
            negatives = torch.randint(
                FIRST_REAL_INDEX, self.config.n_items, (self.config.num_negatives,), device=states.device
            )
            pos = (states * self.item_emb(targets)).sum(-1, keepdim=True)
            neg = states @ self.item_emb(negatives).T
            neg = neg.masked_fill(negatives.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
            logits = torch.cat([pos, neg], dim=1)
            loss = F.cross_entropy(logits, torch.zeros_like(targets))
        return LossOutput(loss=loss, n_targets=int(targets.numel()))
