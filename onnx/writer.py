"""Writing a model artifact: export, parity checks, files, manifest, atomic rename.

The read side (layout, :func:`~streamrec.onnx.artifact.load_artifact`,
checksums) is :mod:`streamrec.onnx.artifact`, which a worker imports without
torch; this module needs torch and is imported by whatever trains.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from streamrec.errors import ModelError
from streamrec.models.config import ONNX_CONFIG, EncoderConfig
from streamrec.models.content import ItemContent, content_config
from streamrec.models.data import events_from_dicts
from streamrec.models.encoder import SequenceEncoder
from streamrec.models.features import ItemVocab, UserSequence
from streamrec.models.splits import leave_one_out
from streamrec.models.train import TrainConfig, event_types_for, train
from streamrec.onnx.artifact import (
    FORMAT_VERSION,
    FP16_MODEL_FILE,
    MANIFEST,
    MODEL_FILE,
    OPTIONAL_FILES,
    REQUIRED_FILES,
    next_version,
    sha256_file,
    version_dir_name,
    write_json,
)
from streamrec.models.text import MODEL_ZIP_SHA256
from streamrec.onnx.content_head import CONTENT_FILE, ContentHead, save_content_head
from streamrec.onnx.export import export_onnx
from streamrec.onnx.parity import FP16_TOLERANCE, check_parity

log = logging.getLogger(__name__)


def write_artifact(
    model: SequenceEncoder,
    vocab: ItemVocab,
    root: Path,
    *,
    metrics: dict[str, Any] | None = None,
    real_sequences: Sequence[UserSequence] = (),
    version: int | None = None,
    extra_files: Mapping[str, Path] | None = None,
    include_fp16: bool = True,
) -> Path:
    """Export, parity-check and write ``model`` as the next version under ``root``; return its directory.

    ``include_fp16`` adds ``model_fp16.onnx`` for GPU serving when it passes its
    own (looser) parity check; it is left out with a warning otherwise.
    ``extra_files`` (e.g. the training-curve PNG) are copied in and checksummed too.
    Raises :class:`ModelError` (and writes nothing) when the ONNX graph does
    not match PyTorch within tolerance.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    config: EncoderConfig = model.config
    if len(vocab) != config.n_items:
        raise ModelError(f"vocabulary has {len(vocab)} entries but the model has {config.n_items} item rows")
    tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it private; workers under another user must read it
    try:
        export_onnx(model, tmp / MODEL_FILE)
        parity = check_parity(model, vocab, tmp / MODEL_FILE, real_sequences=real_sequences)
        if not parity.passed:
            raise ModelError(
                f"ONNX export failed the parity check (max abs diff {parity.max_abs_diff:.3g} > {parity.tolerance:g})"
            )
        parity_doc = parity.to_dict()
        optional = list(OPTIONAL_FILES)
        if include_fp16:
            export_onnx(model, tmp / FP16_MODEL_FILE, fp16=True)
            half = check_parity(model, vocab, tmp / FP16_MODEL_FILE, real_sequences=real_sequences,
                                tolerance=FP16_TOLERANCE, precision="fp16")
            parity_doc["fp16"] = half.to_dict()
            if half.passed:
                optional.append(FP16_MODEL_FILE)
            else:
                log.warning("fp16 export failed its parity check (max abs diff %.3g); artifact ships fp32 only", half.max_abs_diff)
                (tmp / FP16_MODEL_FILE).unlink()
        vocab.save(tmp / "vocab.json")
        config_doc = {**config.to_dict(), "onnx": {"opset": ONNX_CONFIG.opset, "inputs": list(ONNX_CONFIG.inputs_for(config)), "outputs": list(ONNX_CONFIG.outputs)}}
        write_json(tmp / "config.json", config_doc)
        write_json(tmp / "metrics.json", metrics or {})
        write_json(tmp / "parity.json", parity_doc)
        torch.save(model.state_dict(), tmp / "weights.pt")
        if config.item_content:
            # What a worker needs to serve items that appear after this version (README "Items
            # described by their content"): the graph only holds the items trained with.
            save_content_head(tmp / CONTENT_FILE, content_head(model))
            optional.append(CONTENT_FILE)
        extra = dict(extra_files or {})
        for name, source in extra.items():
            if name in (*REQUIRED_FILES, *optional, FP16_MODEL_FILE, MANIFEST) or "/" in name:
                raise ModelError(f"extra artifact file name {name!r} is reserved or not a plain name")
            shutil.copyfile(source, tmp / name)
        files = {
            name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
            for name in (*REQUIRED_FILES, *optional, *extra)
        }
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        version = version or next_version(root)
        while True:
            manifest = {"format": FORMAT_VERSION, "version": version, "created_at": created, "files": files}
            write_json(tmp / MANIFEST, manifest)
            final = root / version_dir_name(version)
            try:
                # rename() onto an existing non-empty directory fails: two
                # writers racing for the same number cannot overwrite each other.
                os.rename(tmp, final)
                break
            except OSError:
                if not final.exists():
                    raise
                version += 1
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote model artifact version %d at %s", version, final)
    return final


def content_head(model: Any) -> ContentHead:
    """The projection weights of a multi-view model, as :class:`ContentHead` (numpy, no torch at serving)."""
    config: EncoderConfig = model.config
    return ContentHead(
        text_proj=model.text_proj.weight.detach().cpu().float().numpy(),
        category_emb=model.category_emb.weight.detach().cpu().float().numpy(),
        categories=tuple(config.item_categories),
        max_item_categories=config.max_item_categories,
        # The training text vectors come from the pinned packaged encoder (streamrec.models.text).
        text_encoder_sha256=MODEL_ZIP_SHA256,
    )


def train_from_events(
    events: Iterable[Mapping[str, Any]],
    out_dir: Path,
    *,
    epochs: int = 5,
    seed: int = 0,
    model_config: EncoderConfig | None = None,
    event_types: Sequence[str] | None = None,
    progress: bool = False,
    item_content: ItemContent | None = None,
    id_dropout: float = 0.5,
    context_keys: Sequence[str] = (),
) -> Path:
    """Train a model from event dicts and write a verified artifact under ``out_dir``; return its path.

    Small and quick on purpose (the demo and tests call it): leave-one-out
    split when users have at least 3 events, the next artifact version in
    ``out_dir``. With ``item_content`` the model is multi-view (id + text +
    categories, ``id_dropout`` of the ids dropped per step) and the artifact
    ships its content head, so items that appear later can be served.
    ``context_keys`` turns the context view on for those keys of the events'
    ``context`` (vocabularies learned from the training events).
    """
    log_ = events_from_dicts(events)
    split = leave_one_out(log_)
    base = model_config or EncoderConfig(n_items=0)
    types = event_types_for(split.train.values(), event_types if event_types is not None else base.event_types)
    config = base.__class__(**{**asdict(base), "event_types": types})
    if context_keys:
        config = replace(config, context_keys=tuple(context_keys), context_values=())
    if item_content is not None:
        config = content_config(config, item_content, id_dropout=id_dropout)
    result = train(split, config, TrainConfig(epochs=epochs, seed=seed, patience=epochs, progress=progress),
                   item_content=item_content)
    real = [c.history for c in split.test] or list(split.train.values())
    return write_artifact(result.model, result.vocab, out_dir, metrics=result.metrics(), real_sequences=real)
