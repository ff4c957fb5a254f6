"""Export the encoder to ONNX with ranking inside the graph (MatMul with the item table + TopK).

Graph contract (see :class:`streamrec.models.config.EncoderOnnxConfig`):
inputs ``item_idx``, ``event_type``, ``time_bucket``, ``attention_mask``
(left-padded ``(batch, seq)`` int64), ``exclude`` (``(batch, n)`` item
indices never to return, 0-padded) and a scalar int64 ``k``; outputs
``user_vector`` ``(batch, dim)``, ``topk_indices`` and ``topk_scores``
``(batch, k)``. Padding and OOV columns are always masked with ``-inf``.
A model with context keys has one more input, last: ``context``
(``(batch, seq, n_keys)`` int64 context-table rows); without them the graph's
inputs are exactly the ones above, so older artifacts and workers are unaffected.
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

    def __init__(self, model: SequenceEncoder, *, newest_only: bool = True) -> None:
        super().__init__()
        self.model = model
        self.user_vector = user_vector_graph(model, newest_only=newest_only)
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
        context: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        user_vector = self.user_vector(item_idx, event_type, time_bucket, attention_mask, context)
        scores = user_vector @ self.model.item_table().T
        scores = scores.masked_fill(self.reserved, float("-inf"))
        # Exclusion inside the graph: ScatterElements writes -inf at seen items.
        scores = scores.scatter(1, exclude, float("-inf"))
        top_scores, top_idx = torch.topk(scores, k)  # k stays a graph input (dynamic K)
        return user_vector, top_idx, top_scores


def example_inputs(n_items: int, batch: int = 2, seq: int = 6, *, context_offsets: tuple[int, ...] = ()) -> tuple[torch.Tensor, ...]:
    """Small valid inputs for tracing (with left padding in row 0); a context input when ``context_offsets`` names keys."""
    gen = torch.Generator().manual_seed(0)
    item_idx = torch.randint(FIRST_REAL_INDEX, n_items, (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[0, : seq // 2] = 0
    item_idx = item_idx * mask
    etype = torch.full((batch, seq), FIRST_REAL_INDEX, dtype=torch.int64) * mask
    tbucket = torch.full((batch, seq), FIRST_REAL_INDEX, dtype=torch.int64) * mask
    exclude = item_idx[:, -2:].clone()
    k = torch.tensor(min(5, n_items - FIRST_REAL_INDEX), dtype=torch.int64)
    if not context_offsets:
        return item_idx, etype, tbucket, mask, exclude, k
    # Every key's "missing" row: valid for any vocabulary.
    context = (torch.tensor(context_offsets, dtype=torch.int64) + CONTEXT_MISSING).expand(batch, seq, -1) * mask[..., None]
    return item_idx, etype, tbucket, mask, exclude, k, context.contiguous()


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
    head = RankingHead(source).eval()
    config = model.config
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
            example_inputs(config.n_items, context_offsets=config.context_offsets),
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
