"""The sequence encoder: event embeddings -> transformers causal decoder -> user vector.

One interface in RecBole's shape (``calculate_loss`` / ``user_vector`` /
``full_sort_scores``), outputs as dataclasses. Scores are dot products with
the item embedding table (input and output embeddings are tied), so the
ONNX graph can rank the whole catalogue with one MatMul.

With the content view on (``EncoderConfig.item_content``) an item is several
views summed: id embedding, projected text vector, category embeddings
(:meth:`SequenceEncoder.item_table`); the exported graph gets the resulting
table as its item embedding (:func:`served_copy`), so serving costs the same.
"""

from __future__ import annotations

import dataclasses
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
    context: torch.Tensor | None = None  # (batch, seq, n_keys); only for a model with context keys

    @classmethod
    def from_features(cls, batch: FeatureBatch, targets: torch.Tensor | None = None) -> "EncoderInput":
        return cls(
            item_idx=torch.from_numpy(batch.item_idx),
            event_type=torch.from_numpy(batch.event_type),
            time_bucket=torch.from_numpy(batch.time_bucket),
            attention_mask=torch.from_numpy(batch.attention_mask),
            targets=targets,
            context=torch.from_numpy(batch.context) if batch.context is not None else None,
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
    """Transformer encoder over item, event-type, time-gap (and context) embeddings of left-padded sequences."""

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
        embeddings = [self.item_emb, self.event_emb, self.time_emb]
        if config.context_keys:
            # The context view: one table for all keys (each key its own block of rows,
            # see EncoderConfig.context_offsets), row 0 padding for every key.
            self.context_emb = nn.Embedding(config.n_context_rows, config.hidden, padding_idx=PAD_INDEX)
            embeddings.append(self.context_emb)
        if config.item_content:
            # The content views. Their inputs are buffers (saved with the weights,
            # never trained): each item's frozen text vector, its category indices
            # (0-padded), and whether its id embedding was ever trained.
            self.text_proj = nn.Linear(config.text_dim, config.hidden, bias=False)
            self.category_emb = nn.Embedding(config.n_category_rows, config.hidden, padding_idx=PAD_INDEX)
            embeddings.append(self.category_emb)
            self.register_buffer("item_text", torch.zeros(config.n_items, config.text_dim))
            self.register_buffer("item_category_idx", torch.zeros(config.n_items, config.max_item_categories, dtype=torch.long))
            self.register_buffer("item_has_id", torch.ones(config.n_items))
        for emb in embeddings:
            nn.init.normal_(emb.weight, std=0.02)
            with torch.no_grad():
                emb.weight[PAD_INDEX].zero_()

    # --- items -------------------------------------------------------------------
    def item_table(self) -> torch.Tensor:
        """``(n_items, dim)`` item vectors, used both as inputs and for scoring (tied).

        Id-only: the id embedding table itself. With the content view: id
        embedding (zero for items whose id was never trained, and for a random
        ``id_dropout`` share of items at each training step) + projected text
        vector + summed category embeddings, so an item the model never saw in
        a sequence still gets a vector from its content alone.
        """
        if not self.config.item_content:
            return self.item_emb.weight
        keep = self.item_has_id
        if self.training and self.config.id_dropout > 0:
            keep = keep * (torch.rand_like(keep) >= self.config.id_dropout).to(keep.dtype)
        ids = self.item_emb.weight * keep.unsqueeze(-1)
        content = self.text_proj(self.item_text) + self.category_emb(self.item_category_idx).sum(1)
        return ids + content

    def content_vectors(self, text: torch.Tensor, category_idx: torch.Tensor) -> torch.Tensor:
        """Vectors of items from their content alone (``(n, text_dim)`` text vectors, ``(n, m)`` category indices).

        What an item the model was never trained on gets: the live path computes
        a new item's row with this (text from the packaged encoder) and no retrain.
        """
        if not self.config.item_content:
            raise ModelError("this model has no content view (item_content is off)")
        return self.text_proj(text) + self.category_emb(category_idx).sum(1)

    @torch.no_grad()
    def set_item_content(self, text: torch.Tensor, category_idx: torch.Tensor, has_id: torch.Tensor) -> None:
        """Fill the content buffers (rows by item index; see :mod:`streamrec.models.content`)."""
        if not self.config.item_content:
            raise ModelError("this model has no content view (item_content is off)")
        self.item_text.copy_(text)
        self.item_category_idx.copy_(category_idx)
        self.item_has_id.copy_(has_id)

    # --- encoding -------------------------------------------------------------
    def forward(
        self,
        item_idx: torch.Tensor,
        event_type: torch.Tensor,
        time_bucket: torch.Tensor,
        attention_mask: torch.Tensor,
        item_table: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        new_items: torch.Tensor | None = None,
    ) -> EncoderOutput:
        x = self.embed(item_idx, event_type, time_bucket, item_table, context, new_items)
        hidden = self.backbone(
            inputs_embeds=x, attention_mask=attention_mask, position_ids=position_ids(attention_mask)
        ).last_hidden_state
        return EncoderOutput(hidden=hidden, user_vector=hidden[:, -1])

    def embed(
        self, item_idx: torch.Tensor, event_type: torch.Tensor, time_bucket: torch.Tensor,
        item_table: torch.Tensor | None = None, context: torch.Tensor | None = None,
        new_items: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(batch, seq, dim)`` input embeddings: item + event type + time gap (+ context keys), normalised.

        ``item_table``: the item vectors of this step (:meth:`item_table`), so
        that inputs and scores share one id-dropout draw; computed when absent.
        ``context``: ``(batch, seq, n_keys)`` context rows, required when the
        config has context keys. ``new_items``: ``(n_new, dim)`` vectors of
        items after the table (serving: items that appeared after training,
        from their content); index ``n_items + j`` reads row ``j``.
        """
        if self.config.item_content:
            table = self.item_table() if item_table is None else item_table
            x = F.embedding(item_idx, table) if new_items is None else rows_beyond_table(item_idx, table, new_items)
        elif new_items is None:
            x = self.item_emb(item_idx)  # keeps padding_idx: the padding row gets no gradient
        else:  # the served copy of a multi-view model
            x = rows_beyond_table(item_idx, self.item_emb.weight, new_items)
        if self.config.use_event_types:
            x = x + self.event_emb(event_type)
        if self.config.use_time_gaps:
            x = x + self.time_emb(time_bucket)
        if self.config.context_keys:
            if context is None:
                raise ModelError(f"this model has context keys {list(self.config.context_keys)} but no context input was given")
            x = x + self.context_emb(context).sum(-2)
        return self.emb_dropout(self.emb_norm(x))

    def encode(self, batch: EncoderInput, item_table: torch.Tensor | None = None) -> EncoderOutput:
        return self(batch.item_idx, batch.event_type, batch.time_bucket, batch.attention_mask, item_table, batch.context)

    def user_vector(self, batch: EncoderInput) -> torch.Tensor:
        """``(batch, dim)`` user vectors: the hidden state at the newest (last) position."""
        return self.encode(batch).user_vector

    def item_scores(self, vectors: torch.Tensor, item_table: torch.Tensor | None = None) -> torch.Tensor:
        """Dot products with every item; padding and OOV rows get -inf so they are never ranked."""
        scores = vectors @ (self.item_table() if item_table is None else item_table).T
        scores[..., :FIRST_REAL_INDEX] = float("-inf")
        return scores

    def full_sort_scores(self, batch: EncoderInput) -> torch.Tensor:
        """``(batch, n_items)`` scores over the whole catalogue.

        With the content view the item table is computed once for inputs and
        scores (in eval mode both calls would give the same table).
        """
        table = self.item_table() if self.config.item_content else None
        return self.item_scores(self.encode(batch, table).user_vector, table)

    # --- training --------------------------------------------------------------
    def calculate_loss(self, batch: EncoderInput) -> LossOutput:
        """Next-item cross-entropy at every position that has a target.

        ``full``: softmax over the whole catalogue. ``sampled``: softmax over
        the positive and ``num_negatives`` uniformly sampled items shared by
        the batch (accidental hits masked).
        """
        if batch.targets is None:
            raise ValueError("calculate_loss needs targets")
        table = self.item_table() if self.config.item_content else None  # one id-dropout draw per step
        hidden = self.encode(batch, table).hidden
        has_target = batch.targets >= FIRST_REAL_INDEX
        states = hidden[has_target]
        targets = batch.targets[has_target]
        if self.config.loss == "full":
            logits = self.item_scores(states, table)
            loss = F.cross_entropy(logits, targets)
        else:
            negatives = torch.randint(
                FIRST_REAL_INDEX, self.config.n_items, (self.config.num_negatives,), device=states.device
            )
            rows = self.item_emb.weight if table is None else table
            pos = (states * F.embedding(targets, rows)).sum(-1, keepdim=True)
            neg = states @ F.embedding(negatives, rows).T
            neg = neg.masked_fill(negatives.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
            logits = torch.cat([pos, neg], dim=1)
            loss = F.cross_entropy(logits, torch.zeros_like(targets))
        return LossOutput(loss=loss, n_targets=int(targets.numel()))


def rows_beyond_table(item_idx: torch.Tensor, table: torch.Tensor, new_items: torch.Tensor) -> torch.Tensor:
    """Embedding lookup in ``table`` followed by ``new_items`` without concatenating them.

    Two gathers and a select cost what the window costs; a concatenation
    would copy the whole item table on every served batch. ``new_items``
    needs at least one row (index 0 is read for positions that are not new).
    """
    n_items = table.shape[0]
    known = item_idx < n_items
    old = F.embedding(torch.where(known, item_idx, torch.zeros_like(item_idx)), table)
    new = F.embedding((item_idx - n_items).clamp(min=0), new_items)
    return torch.where(known.unsqueeze(-1), old, new)


@torch.no_grad()
def served_copy(model: SequenceEncoder) -> SequenceEncoder:
    """The model as it is served: for the content view, an id-only copy whose item table is the views' sum.

    The exported ONNX graph then has exactly the id-only structure and cost
    (content vectors are computed per item at export, not per event). An id-only
    model is returned as is.
    """
    if not model.config.item_content:
        return model
    was_training = model.training
    model.eval()
    try:
        table = model.item_table().detach().clone()
    finally:
        model.train(was_training)
    plain = SequenceEncoder(dataclasses.replace(model.config, item_content=False, item_categories=(), id_dropout=0.0))
    state = {k: v for k, v in model.state_dict().items() if k in plain.state_dict()}
    state["item_emb.weight"] = table
    plain.load_state_dict(state)
    return plain.eval()
