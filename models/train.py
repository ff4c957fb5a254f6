"""Training: next-item loss at every position of chunked user sequences, early stopping on validation NDCG@10.

Each user's training sequence is cut into windows of ``max_len + 1`` events
ending at the newest event (stride ``max_len``), so every transition is a
target exactly once per epoch — no per-prefix samples as RecBole builds,
which keeps an epoch over ML-100k to seconds on 2 CPU cores.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from streamrec.errors import ModelError
from streamrec.models.config import EncoderConfig
from streamrec.models.content import ItemContent, attach_content
from streamrec.models.encoder import EncoderInput, SequenceEncoder
from streamrec.models.evaluate import evaluate_model
from streamrec.models.features import ItemVocab, UserSequence, build_context_values, featurize
from streamrec.models.splits import Split, slice_sequence

log = logging.getLogger(__name__)

EARLY_STOP_METRIC = "ndcg@10"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the model shape lives in :class:`EncoderConfig`)."""

    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 20
    seed: int = 0
    threads: int = 2
    progress: bool = True
    # Without the progress bar (benchmarks, logs), one INFO line every this many epochs (0 = none),
    # so a run of tens of minutes still shows it is moving and how far it got.
    log_every: int = 10
    # Safety net for very large logs: stop after this many seconds (0 = no limit).
    max_seconds: float = 0.0


@dataclass
class TrainResult:
    """The best model (by validation NDCG@10) and how training went."""

    model: SequenceEncoder
    vocab: ItemVocab
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0

    def metrics(self) -> dict[str, Any]:
        """JSON-ready summary stored with the artifact."""
        return {
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history),
            "train_seconds": round(self.train_seconds, 2),
            "valid": self.best_valid,
            "test": self.test,
            "history": self.history,
        }


@dataclass
class TrainingExamples:
    features: EncoderInput  # all chunks, left-padded to max_len

    def __len__(self) -> int:
        return int(self.features.item_idx.shape[0])

    def batch(self, rows: np.ndarray) -> EncoderInput:
        idx = torch.from_numpy(rows)
        f = self.features
        assert f.targets is not None
        return EncoderInput(
            item_idx=f.item_idx[idx],
            event_type=f.event_type[idx],
            time_bucket=f.time_bucket[idx],
            attention_mask=f.attention_mask[idx],
            targets=f.targets[idx],
            context=f.context[idx] if f.context is not None else None,
        )


def build_examples(sequences: Iterable[UserSequence], vocab: ItemVocab, config: EncoderConfig) -> TrainingExamples:
    """Chunk sequences into (input window, next-item targets) pairs, featurised like serving."""
    inputs: list[UserSequence] = []
    target_rows: list[np.ndarray] = []
    span = config.max_len
    for seq in sequences:
        end = len(seq)
        while end >= 2:
            start = max(0, end - span - 1)
            inputs.append(slice_sequence(seq, start, end - 1))
            target_rows.append(vocab.lookup(seq.item_ids[start + 1 : end]))
            end -= span
    if not inputs:
        raise ValueError("no training examples: every user needs at least 2 training events")
    feats = featurize(inputs, vocab, config, pad_to=span)
    targets = np.zeros((len(inputs), span), dtype=np.int64)
    for row, t in enumerate(target_rows):
        targets[row, span - len(t) :] = t
    return TrainingExamples(EncoderInput.from_features(feats, torch.from_numpy(targets)))


def seed_everything(seed: int) -> None:
    """Same seed, same data, same threads -> the same model."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def event_types_for(sequences: Iterable[UserSequence], configured: Sequence[str]) -> tuple[str, ...]:
    """Configured event types first, then any other type present in the training data."""
    seen = list(configured)
    for seq in sequences:
        for t in seq.event_types:
            if t not in seen:
                seen.append(t)
    return tuple(seen)


def with_context_vocab(config: EncoderConfig, sequences: Iterable[UserSequence]) -> EncoderConfig:
    """``config`` with each context key's vocabulary learned from ``sequences`` (unchanged without context keys, or when it has one).

    A warm start keeps the live version's vocabularies (their rows keep their
    meaning); values first seen since then are OOV until a fresh training.
    """
    if not config.context_keys or config.context_values:
        return config
    values = build_context_values(
        (c for seq in sequences if seq.contexts is not None for c in seq.contexts), config.context_keys
    )
    for key, vocab in zip(config.context_keys, values):
        log.info("context key %r: %d values%s", key, len(vocab), f" (e.g. {list(vocab[:5])})" if vocab else " (never present: all events missing)")
    return replace(config, context_values=values)


def train(
    split: Split,
    model_config: EncoderConfig,
    train_config: TrainConfig = TrainConfig(),
    *,
    vocab: ItemVocab | None = None,
    init_state: Mapping[str, torch.Tensor] | None = None,
    item_content: ItemContent | None = None,
) -> TrainResult:
    """Train an encoder on ``split.train``; early-stop on ``split.valid``; score ``split.test``.

    ``model_config.n_items`` is replaced by the vocabulary size. The vocabulary
    defaults to every item of the split (the catalogue): items met only in
    validation/test keep their initial embedding but stay rankable. With the
    content view (``model_config.item_content``, see
    :func:`streamrec.models.content.content_config`) ``item_content`` gives
    every item's text vector and categories; items never met in training
    sequences are then represented by their content alone.
    """
    seed_everything(train_config.seed)
    if train_config.threads:
        torch.set_num_threads(train_config.threads)
    if vocab is None:
        vocab = split_vocab(split)
    config = with_context_vocab(replace(model_config, n_items=len(vocab)), split.train.values())
    examples = build_examples(split.train.values(), vocab, config)
    model = SequenceEncoder(config)
    if init_state is not None:  # warm start (the retrainer grows embedding tables before passing them)
        model.load_state_dict(init_state)
    if config.item_content:
        if item_content is None:
            raise ModelError("the content view is on (item_content) but no item content was given")
        # After the warm start: the content buffers describe this vocabulary's items (a warm
        # state carries the live version's, with empty rows for items new since).
        attach_content(model, vocab, item_content, (i for seq in split.train.values() for i in seq.item_ids))
    optim = torch.optim.AdamW(model.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay)
    rng = np.random.default_rng(train_config.seed)
    log.info(
        "training %s on %d chunks (%d users, %d items), %s",
        config.backbone, len(examples), len(split.train), len(vocab), split.summary(),
    )

    result = TrainResult(model=model, vocab=vocab)
    best_state: dict[str, torch.Tensor] | None = None
    best_score = -1.0
    stale = 0
    started = time.perf_counter()
    bar = tqdm(range(1, train_config.epochs + 1), disable=not train_config.progress, desc="train", unit="epoch")
    for epoch in bar:
        model.train()
        order = rng.permutation(len(examples))
        total, n_batches = 0.0, 0
        for start in range(0, len(order), train_config.batch_size):
            batch = examples.batch(order[start : start + train_config.batch_size])
            out = model.calculate_loss(batch)
            optim.zero_grad(set_to_none=True)
            out.loss.backward()
            optim.step()
            total += float(out.loss.detach())
            n_batches += 1
        row: dict[str, float] = {"epoch": float(epoch), "loss": total / max(n_batches, 1)}
        if split.valid:
            valid = evaluate_model(model, vocab, split.valid)
            row.update({f"valid_{k}": v for k, v in valid.items() if k != "n_cases"})
            score = valid[EARLY_STOP_METRIC]
        else:
            score = -row["loss"]  # no validation cases: keep the lowest training loss
        row["seconds"] = time.perf_counter() - started
        result.history.append(row)
        log.debug("epoch %d: %s", epoch, row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", ndcg10=f"{row.get('valid_ndcg@10', float('nan')):.4f}")
        improved = score > best_score
        if improved:
            best_score, stale = score, 0
            best_state = copy.deepcopy(model.state_dict())
            result.best_epoch = epoch
            result.best_valid = {k[6:]: v for k, v in row.items() if k.startswith("valid_")}
        else:
            stale += 1
        if not train_config.progress and train_config.log_every and epoch % train_config.log_every == 0:
            log.info("epoch %d/%d: loss %.4f, valid %s %.4f (best %.4f at epoch %d), %.0f s",
                     epoch, train_config.epochs, row["loss"], EARLY_STOP_METRIC if split.valid else "-loss", score,
                     best_score, result.best_epoch, row["seconds"])
        if not improved and stale >= train_config.patience:
            log.info("early stop at epoch %d (best %d, valid %s %.4f)", epoch, result.best_epoch, EARLY_STOP_METRIC, best_score)
            break
        if train_config.max_seconds and row["seconds"] > train_config.max_seconds:
            log.warning("stopping after %.0f s (max_seconds)", row["seconds"])
            break
    bar.close()
    result.train_seconds = time.perf_counter() - started
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    if split.test:
        result.test = evaluate_model(model, vocab, split.test)
    log.info("best epoch %d valid %s test %s (%.1f s)", result.best_epoch, result.best_valid, result.test, result.train_seconds)
    return result


def split_vocab(split: Split) -> ItemVocab:
    """The vocabulary :func:`train` gives a model by default: every item of the split's sequences and targets."""
    items: list[str] = []
    for seq in split.train.values():
        items.extend(seq.item_ids)
    for case in (*split.valid, *split.test):
        items.append(case.target)
    return ItemVocab.build(items)


def plot_curves(history: Sequence[Mapping[str, float]], path: Path) -> Path:
    """Save training loss and validation NDCG@10/Recall@10 per epoch as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["loss"] for r in history])
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    for key in ("valid_ndcg@10", "valid_recall@10"):
        if history and key in history[0]:
            ax_metric.plot(epochs, [r[key] for r in history], label=key[6:])
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel("validation")
    ax_metric.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
