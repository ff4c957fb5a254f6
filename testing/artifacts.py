"""An untrained model written as a servable artifact: for what does not depend on training (latency, the registry, sessions)."""

from __future__ import annotations

from pathlib import Path

import torch

from streamrec.models.config import FIRST_REAL_INDEX, EncoderConfig
from streamrec.models.encoder import SequenceEncoder
from streamrec.models.features import ItemVocab
from streamrec.onnx.writer import write_artifact


def random_artifact(out_dir: Path, config: EncoderConfig, *, item_prefix: str = "item", seed: int = 0,
                    include_fp16: bool = True) -> Path:
    """Write a randomly initialised encoder for ``config`` under ``out_dir``; its artifact directory.

    Items are named ``<item_prefix>0 ..``, one per real row of ``config.n_items``.
    The same ``seed`` writes the same weights.
    """
    torch.manual_seed(seed)
    model = SequenceEncoder(config).eval()
    vocab = ItemVocab([f"{item_prefix}{i}" for i in range(config.n_items - FIRST_REAL_INDEX)])
    return write_artifact(model, vocab, out_dir, metrics={"note": "untrained model"}, include_fp16=include_fp16)
