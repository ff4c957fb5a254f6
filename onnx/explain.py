"""Why an item was recommended: leave-one-out attribution on the served ONNX graph.

For a user's window and the items recommended from it, the contribution of an
event to an item is the item's score with the whole window minus its score
with that one event removed (the rest of the window featurised again, so the
next event's time gap is recomputed as if the removed one never happened).

Why occlusion and not gradient × input or attention: it is computed by the
very graph that served the recommendation (ONNX Runtime, no torch), so it
explains what the user actually got, and it is faithful by construction for
single-event removal, the question asked ("which event led to this item?").
Gradients and attention weights need the torch model (not in a worker) and are
only a local or indirect proxy for that removal; ``streamrec bench explain``
measures how much less faithful they are. The price is one extra encoder row
per event explained, all variants of all users in one batched call; the
events considered are bounded to the newest ``max_events`` of the window.

The variants run through the served graph cut at its ``user_vector`` output
(the same nodes and weights; ONNX Runtime would otherwise rank the whole
catalogue for every variant row: 40 % of the time at 20,000 items), and the
recommended items are scored against the graph's own item table (the
initializer of the scoring ``MatMul``); both are read once per model version.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from streamrec.errors import ModelError
from streamrec.models.config import OOV_INDEX
from streamrec.models.features import FeatureBatch, UserSequence
from streamrec.onnx.artifact import FP16_MODEL_FILE
from streamrec.onnx.runtime import (
    BATCH_INPUTS, MIN_SHARD_ROWS, SEQUENCE_INPUTS, NewItems, ServedModel, chunk_feeds, graph_feeds, length_chunks,
    session_options,
)

log = logging.getLogger(__name__)

USER_VECTOR_OUTPUT = "user_vector"


@dataclass(frozen=True)
class Attribution:
    """How much each of a user's recent events adds to each recommended item's score.

    ``positions`` index the user's sequence (0 = oldest), oldest first;
    ``contributions[e, i]`` is ``scores[i]`` minus item ``i``'s score without
    event ``positions[e]``: positive means the event pushed the item up.
    """

    item_ids: tuple[str, ...]
    scores: np.ndarray  # (n_items,) float32
    positions: tuple[int, ...]
    contributions: np.ndarray  # (n_events, n_items) float32

    def top_positions(self, n: int) -> list[list[int]]:
        """Per item, up to ``n`` positions with a positive contribution, largest first."""
        out: list[list[int]] = []
        for column in range(len(self.item_ids)):
            values = self.contributions[:, column]
            order = np.argsort(-values, kind="stable")[:n]
            out.append([self.positions[e] for e in order.tolist() if values[e] > 0])
        return out


def served_graph(session: ServedModel) -> Path:
    """The ONNX file ``session`` runs (the fp16 graph when it serves fp16)."""
    return session.artifact.path / FP16_MODEL_FILE if session.fp16 else session.artifact.onnx_path


def split_graph(onnx_path: Path) -> tuple[bytes, np.ndarray]:
    """The graph cut at ``user_vector`` (serialised) and the ``(hidden, n_items)`` item table it scores against."""
    import onnx  # the real package (onnx/ has no __init__.py)
    from onnx import numpy_helper
    from onnx.utils import Extractor

    proto = onnx.load(str(onnx_path))
    initializers = {init.name: init for init in proto.graph.initializer}
    table = next(
        (numpy_helper.to_array(initializers[node.input[1]]).astype(np.float32) for node in proto.graph.node
         if node.op_type == "MatMul" and node.input[0] == USER_VECTOR_OUTPUT and node.input[1] in initializers),
        None,
    )
    if table is None:
        raise ModelError(f"{onnx_path}: no MatMul of {USER_VECTOR_OUTPUT!r} with an item table; cannot explain this graph")
    graph_inputs = {i.name for i in proto.graph.input}  # context and new items only in graphs with those views
    encoder_only = Extractor(proto).extract_model(
        [n for n in (*SEQUENCE_INPUTS, *BATCH_INPUTS) if n in graph_inputs], [USER_VECTOR_OUTPUT]
    )
    return encoder_only.SerializeToString(), table


def without(sequence: UserSequence, position: int) -> UserSequence:
    """``sequence`` as if the event at ``position`` had not happened."""
    keep = slice(None, position), slice(position + 1, None)
    return UserSequence(
        item_ids=[*sequence.item_ids[keep[0]], *sequence.item_ids[keep[1]]],
        event_types=[*sequence.event_types[keep[0]], *sequence.event_types[keep[1]]],
        timestamps_ms=[*sequence.timestamps_ms[keep[0]], *sequence.timestamps_ms[keep[1]]],
        contexts=None if sequence.contexts is None else [*sequence.contexts[keep[0]], *sequence.contexts[keep[1]]],
    )


def model_view(sequence: UserSequence, max_len: int) -> tuple[UserSequence, int]:
    """The newest ``max_len`` events (what the model reads) and the offset of the first one in ``sequence``."""
    start = max(0, len(sequence) - max_len)
    if start == 0:
        return sequence, 0
    return (
        UserSequence(sequence.item_ids[start:], sequence.event_types[start:], sequence.timestamps_ms[start:],
                     None if sequence.contexts is None else sequence.contexts[start:]),
        start,
    )


class Explainer:
    """Leave-one-out attribution for one loaded model version (see the module docstring)."""

    def __init__(self, session: ServedModel, encoder_graph: bytes, table: np.ndarray) -> None:
        if table.shape != (session.config.hidden, len(session.vocab)):
            raise ModelError(f"item table {table.shape} does not fit the model ({session.config.hidden}, {len(session.vocab)})")
        self.session = session
        self.table = table
        # Same options and provider as serving; shards as many as the served session's.
        self._encoder = ort.InferenceSession(encoder_graph, session_options(), providers=session.providers)
        self._pool = ThreadPoolExecutor(max_workers=session.shards - 1, thread_name_prefix="explain-shard") if session.shards > 1 else None

    @classmethod
    def for_session(cls, session: ServedModel) -> "Explainer":
        """Read the graph ``session`` serves: its encoder part and its item table."""
        encoder_graph, table = split_graph(served_graph(session))
        return cls(session, encoder_graph, table)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def user_vectors(self, features: FeatureBatch, new_items: NewItems | None = None) -> np.ndarray:
        """``(batch, hidden)`` float32 user vectors, in length-sorted chunks (each cut to its longest row) across shards.

        ``new_items``: the vectors behind indices after the table in
        ``features`` (featurized with :meth:`ServedModel.featurize`).
        """
        lengths = features.attention_mask.sum(axis=1)
        n_shards = max(1, min(self.session.shards, len(lengths) // MIN_SHARD_ROWS))
        chunks = length_chunks(lengths, n_shards)
        out = np.empty((len(lengths), self.table.shape[0]), dtype=np.float32)
        all_feeds = graph_feeds(features, np.zeros((len(lengths), 1), dtype=np.int64), self.session.new_item_rows(new_items))
        arrays = {name: array for name, array in all_feeds.items() if name in (*SEQUENCE_INPUTS, *BATCH_INPUTS)}

        def run(rows: np.ndarray) -> None:
            width = max(1, int(lengths[rows].max()))  # left padding: the last columns hold every real event
            feeds = {name: np.ascontiguousarray(array) for name, array in chunk_feeds(arrays, rows, width).items()}
            out[rows] = self._encoder.run([USER_VECTOR_OUTPUT], feeds)[0]

        if self._pool is None or len(chunks) < 2:
            for rows in chunks:
                run(rows)
        else:
            list(self._pool.map(run, chunks))
        return out

    def item_scores(
        self, user_vectors: np.ndarray, item_ids: Sequence[str], new_items: NewItems | None = None
    ) -> np.ndarray:
        """``(rows, len(item_ids))`` scores of the given items for each user vector.

        An item the graph does not know is scored with its vector in
        ``new_items`` (as the version served it), not with the OOV row.
        """
        indices = self.session.vocab.lookup(list(item_ids))
        columns = self.table[:, indices]  # a copy: fancy indexing
        if new_items is not None:
            for column, item in enumerate(item_ids):
                if indices[column] == OOV_INDEX and (row := new_items.index.get(item)) is not None:
                    columns[:, column] = new_items.vectors[row]
        return np.asarray(user_vectors, dtype=np.float32) @ columns

    def attribute(
        self, sequences: Sequence[UserSequence], recommended: Sequence[Sequence[str]], *, max_events: int | None = None,
        new_items: NewItems | None = None,
    ) -> list[Attribution]:
        """Attribution of each user's recommended items to their newest ``max_events`` events (all when None).

        One batched encoder call for all users: each user's window, then the
        window without each considered event. ``new_items``: the vectors of
        items the version serves from their content, as scored items (see
        :meth:`item_scores`) and as window inputs (as the served ranking used them).
        """
        if len(sequences) != len(recommended):
            raise ValueError(f"{len(sequences)} sequences but {len(recommended)} recommendation lists")
        max_len = self.session.config.max_len
        variants: list[UserSequence] = []
        plans: list[tuple[int, tuple[int, ...]]] = []  # (row of the full window, positions explained)
        for sequence in sequences:
            view, offset = model_view(sequence, max_len)
            limit = len(view) if max_events is None else min(max_events, len(view))
            local = range(len(view) - limit, len(view))
            plans.append((len(variants), tuple(offset + p for p in local)))
            variants.append(view)
            variants.extend(without(view, p) for p in local)
        if not variants:
            return []
        user_vectors = self.user_vectors(self.session.featurize(variants, new_items), new_items)
        out: list[Attribution] = []
        for (row, positions), items in zip(plans, recommended):
            scores = self.item_scores(user_vectors[row : row + 1 + len(positions)], items, new_items)
            out.append(
                Attribution(
                    item_ids=tuple(items),
                    scores=scores[0],
                    positions=positions,
                    contributions=(scores[0][None, :] - scores[1:]).astype(np.float32),
                )
            )
        return out
