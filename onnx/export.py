"""Export the encoder to ONNX with ranking inside the graph (MatMul with the item table + TopK).

Graph contract (see :class:`streamrec.models.config.EncoderOnnxConfig`):
inputs ``item_idx``, ``event_type``, ``time_bucket``, ``attention_mask``
(left-padded ``(batch, seq)`` int64), ``exclude`` (``(batch, n)`` item
indices never to return, 0-padded) and a scalar int64 ``k``; outputs
``user_vector`` ``(batch, dim)``, ``topk_indices`` and ``topk_scores``
``(batch, k)``. Padding and OOV columns are always masked with ``-inf``.
A model with context keys has one more input: ``context``
(``(batch, seq, n_keys)`` int64 context-table rows). A multi-view model has one
more, last: ``new_item_vectors`` (``(n_new, dim)``, at least one row), the
vectors of items that appeared after training, which ``item_idx`` and
``exclude`` address as ``n_items + j`` and ``topk_indices`` return as such:
they are window inputs and ranked with the rest. Without those views the
graph's inputs are exactly the ones above, so older artifacts and workers are
unaffected.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from streamrec.models.config import CONTEXT_MISSING, FIRST_REAL_INDEX, ONNX_CONFIG, EncoderOnnxConfig
from streamrec.models.encoder import SequenceEncoder, served_copy
from streamrec.models.export_graph import user_vector_graph

log = logging.getLogger(__name__)


class RankingHead(nn.Module):
    """Encoder + full-catalogue scoring + exclusion + TopK: the exported computation.

    ``newest_only`` (the served graph) computes the user vector through
    :class:`~streamrec.models.export_graph.NewestPositionUserVector` where the
    backbone allows; ``False`` is the trained model's full computation, the
    reference the parity check compares against.
    """

    def __init__(self, model: SequenceEncoder, *, newest_only: bool = True, reads_new_items: bool | None = None) -> None:
        super().__init__()
        self.model = model
        self.user_vector = user_vector_graph(model, newest_only=newest_only)
        self.reads_context = bool(model.config.context_keys)
        # The served copy of a multi-view model is id-only, so the caller says whether it reads new items.
        self.reads_new_items = model.config.item_content if reads_new_items is None else reads_new_items
        reserved = torch.zeros(1, model.config.n_items, dtype=torch.bool)
        reserved[:, :FIRST_REAL_INDEX] = True
        self.register_buffer("reserved", reserved, persistent=False)

    def forward(
        self,
        item_idx: torch.Tensor,
        event_type: torch.Tensor,
        time_bucket: torch.Tensor,
        attention_mask: torch.Tensor,
        exclude: torch.Tensor,
        k: torch.Tensor,
        *views: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``views``: ``context`` when the model has context keys, then ``new_item_vectors`` when it reads new items (the contract's order)."""
        optional = list(views)
        context = optional.pop(0) if self.reads_context and optional else None
        new_items = optional.pop(0) if self.reads_new_items and optional else None
        if optional:
            raise TypeError(f"{len(optional)} graph inputs more than this model reads")
        user_vector = self.user_vector(item_idx, event_type, time_bucket, attention_mask, context, new_items)
        scores = user_vector @ self.model.item_table().T
        scores = scores.masked_fill(self.reserved, float("-inf"))
        if new_items is not None:  # new items are ranked with the rest: columns n_items + j
            scores = torch.cat([scores, user_vector @ new_items.T], dim=1)
        # Exclusion inside the graph: ScatterElements writes -inf at seen items.
        scores = scores.scatter(1, exclude, float("-inf"))
        top_scores, top_idx = torch.topk(scores, k)  # k stays a graph input (dynamic K)
        return user_vector, top_idx, top_scores


def example_inputs(
    n_items: int, batch: int = 2, seq: int = 6, *, context_offsets: tuple[int, ...] = (), new_item_dim: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, ...]:
    """Small valid inputs for tracing (with left padding in row 0).

    A context input when ``context_offsets`` names keys; new-item vectors
    (three, one of them in the window) when ``new_item_dim`` is set.
    """
    gen = torch.Generator().manual_seed(0)
    item_idx = torch.randint(FIRST_REAL_INDEX, n_items, (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[0, : seq // 2] = 0
    item_idx = item_idx * mask
    etype = torch.full((batch, seq), FIRST_REAL_INDEX, dtype=torch.int64) * mask
    tbucket = torch.full((batch, seq), FIRST_REAL_INDEX, dtype=torch.int64) * mask
    exclude = item_idx[:, -2:].clone()
    k = torch.tensor(min(5, n_items - FIRST_REAL_INDEX), dtype=torch.int64)
    inputs: tuple[torch.Tensor, ...] = (item_idx, etype, tbucket, mask, exclude, k)
    if context_offsets:
        # Every key's "missing" row: valid for any vocabulary.
        context = (torch.tensor(context_offsets, dtype=torch.int64) + CONTEXT_MISSING).expand(batch, seq, -1) * mask[..., None]
        inputs = (*inputs, context.contiguous())
    if new_item_dim:
        item_idx[1, -1] = n_items + 2
        inputs = (*inputs, torch.randn(3, new_item_dim, generator=gen).to(dtype))
    return inputs


def export_onnx(
    model: SequenceEncoder, path: Path, onnx_config: EncoderOnnxConfig = ONNX_CONFIG, *, fp16: bool = False
) -> Path:
    """Write ``model`` as an ONNX graph at ``path`` (TorchScript exporter, dynamic batch/seq/k).

    ``fp16`` exports a half-precision copy (for the CUDA provider): integer
    inputs unchanged, float outputs in fp16.
    """
    import onnx  # the real package: this folder has no __init__.py on purpose

    # A multi-view model is exported as its served copy: the item table computed
    # from the views once, here, so the graph is the id-only graph.
    served = served_copy(model)
    source = copy.deepcopy(served).half() if fp16 else served
    config = model.config
    head = RankingHead(source, reads_new_items=config.item_content).eval()
    inputs = list(onnx_config.inputs_for(config))
    names_in_graph = {*inputs, *onnx_config.outputs}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about transformers' Python-side mask checks; the
        # parity check on other shapes is what proves the graph right.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            head,
            example_inputs(config.n_items, context_offsets=config.context_offsets,
                           new_item_dim=config.hidden if config.item_content else 0,
                           dtype=torch.float16 if fp16 else torch.float32),
            str(path),
            dynamo=False,
            opset_version=onnx_config.opset,
            input_names=inputs,
            output_names=list(onnx_config.outputs),
            dynamic_axes={name: axes for name, axes in onnx_config.dynamic_axes.items() if name in names_in_graph},
            do_constant_folding=True,
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    names = [i.name for i in proto.graph.input]
    if names != inputs:
        raise RuntimeError(f"exported graph inputs {names} differ from the contract {inputs}")
    log.info("exported %s ONNX (opset %d) to %s (%.1f KiB)", "fp16" if fp16 else "fp32", onnx_config.opset, path, path.stat().st_size / 1024)
    return path
