"""The content head a multi-view artifact ships: how a new item's content becomes a served item vector.

The exported ONNX graph holds the item table of the items a version was
trained with (id + content views summed at export). An item that appears
later has no row there; its vector is its content alone, exactly
:meth:`streamrec.models.encoder.SequenceEncoder.content_vectors`: the frozen
text vector through the learned projection, plus the sum of its category
embeddings. Those two weight matrices are written beside the graph as
``content.npz`` (:func:`save_content_head`, called by the artifact writer), and
a worker computes new items' vectors from them with numpy alone
(:class:`ContentHead`), without torch.

``content.npz`` holds ``text_proj`` ``(hidden, text_dim)`` (torch ``Linear``
layout), ``category_emb`` ``(n_category_rows, hidden)``, ``categories`` (names
of rows ``FIRST_REAL_INDEX..``), ``max_item_categories`` and the SHA-256 of the
text encoder's weights that produced the training text vectors: a vector from
other weights lives in another space and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from streamrec.errors import ModelError
from streamrec.models.config import FIRST_REAL_INDEX, OOV_INDEX

CONTENT_FILE = "content.npz"


@dataclass(frozen=True)
class ContentHead:
    """Projection weights of a multi-view version: content in, item vector (as the graph scores it) out."""

    text_proj: np.ndarray
    category_emb: np.ndarray
    categories: tuple[str, ...]
    max_item_categories: int
    text_encoder_sha256: str

    @property
    def text_dim(self) -> int:
        return int(self.text_proj.shape[1])

    @property
    def hidden(self) -> int:
        return int(self.text_proj.shape[0])

    def vectors(self, text: np.ndarray, categories: Sequence[Sequence[str]]) -> np.ndarray:
        """``(n, hidden)`` float32 item vectors from ``(n, text_dim)`` text vectors and category names.

        Same arithmetic as ``SequenceEncoder.content_vectors`` over
        ``streamrec.models.content.content_tensors``: duplicates dropped, the
        first ``max_item_categories`` kept, unknown names on the OOV row.
        """
        text = np.asarray(text, dtype=np.float32)
        if text.ndim != 2 or text.shape[1] != self.text_dim or len(text) != len(categories):
            raise ValueError(f"expected ({len(categories)}, {self.text_dim}) text vectors, got {text.shape}")
        out = text @ self.text_proj.T
        index = {name: FIRST_REAL_INDEX + i for i, name in enumerate(self.categories)}
        for row, names in enumerate(categories):
            for name in list(dict.fromkeys(names))[: self.max_item_categories]:
                out[row] += self.category_emb[index.get(name, OOV_INDEX)]
        return out.astype(np.float32, copy=False)


def save_content_head(path: Path, head: ContentHead) -> Path:
    """Write ``head`` as ``content.npz`` (no pickles: loading never runs code)."""
    with Path(path).open("wb") as fh:
        np.savez(
            fh,
            text_proj=np.asarray(head.text_proj, dtype=np.float32),
            category_emb=np.asarray(head.category_emb, dtype=np.float32),
            categories=np.asarray(head.categories, dtype=np.str_),
            max_item_categories=np.asarray(head.max_item_categories, dtype=np.int64),
            text_encoder_sha256=np.asarray(head.text_encoder_sha256, dtype=np.str_),
        )
    return Path(path)


def load_content_head(artifact_dir: Path) -> ContentHead | None:
    """The content head of a verified artifact directory, or None when the version is id-only."""
    path = Path(artifact_dir) / CONTENT_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            head = ContentHead(
                text_proj=np.array(data["text_proj"], dtype=np.float32),
                category_emb=np.array(data["category_emb"], dtype=np.float32),
                categories=tuple(str(c) for c in data["categories"].tolist()),
                max_item_categories=int(data["max_item_categories"]),
                text_encoder_sha256=str(data["text_encoder_sha256"]),
            )
    except (OSError, KeyError, ValueError) as exc:
        raise ModelError(f"model artifact {artifact_dir}: {CONTENT_FILE} is unreadable: {exc}") from exc
    if head.category_emb.shape != (FIRST_REAL_INDEX + len(head.categories), head.hidden):
        raise ModelError(f"model artifact {artifact_dir}: {CONTENT_FILE} category table does not fit its names")
    return head
