"""Model artifacts: one verified directory per integer version.

Layout of ``<root>/v000007/``::

    model.onnx      the ranking graph (see streamrec.onnx.export)
    vocab.json      item ids by index (0 = <pad>, 1 = <oov>)
    config.json     EncoderConfig (+ ONNX opset/inputs/outputs)
    metrics.json    training/validation/test metrics
    parity.json     ONNX Runtime vs PyTorch check result
    weights.pt      torch state dict (warm starts, torch-side evaluation)
    model_fp16.onnx optional half-precision graph for the CUDA provider
    content.npz     multi-view versions only: the content head (text projection, category
                    table) that turns a new item's content into its vector (onnx/content_head.py)
    manifest.json   version, created time, sha256 + size of every file above

A version directory appears atomically (written under a temporary name, then
renamed, by :func:`streamrec.onnx.writer.write_artifact`), and
:func:`load_artifact` refuses anything whose files are missing, resized or
changed. This module only reads: a worker imports it without torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamrec.errors import ModelError
from streamrec.models.config import ONNX_CONFIG, EncoderConfig
from streamrec.models.features import ItemVocab

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
REQUIRED_FILES = (MODEL_FILE, "vocab.json", "config.json", "metrics.json", "parity.json")
OPTIONAL_FILES = ("weights.pt",)
FP16_MODEL_FILE = "model_fp16.onnx"
_VERSION_DIR = re.compile(r"^v(\d{6,})$")


@dataclass(frozen=True)
class Artifact:
    """A verified artifact on disk."""

    path: Path
    version: int
    created_at: str
    config: EncoderConfig
    vocab: ItemVocab
    metrics: dict[str, Any]
    parity: dict[str, Any]

    @property
    def onnx_path(self) -> Path:
        return self.path / MODEL_FILE


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def version_dir_name(version: int) -> str:
    return f"v{version:06d}"


def list_versions(root: Path) -> list[int]:
    """Versions present under ``root`` (complete or not), ascending."""
    if not root.is_dir():
        return []
    found = (_VERSION_DIR.match(p.name) for p in root.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in found if m)


def next_version(root: Path) -> int:
    versions = list_versions(root)
    return (versions[-1] + 1) if versions else 1


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"artifact file {path} is unreadable: {exc}") from exc


def load_artifact(path: Path) -> Artifact:
    """Open an artifact directory after verifying its manifest, checksums and contents.

    Raises :class:`ModelError` naming the first problem: missing manifest or
    file, size or sha256 mismatch, an unparseable ONNX graph, a vocabulary that
    does not fit the config, or a failed parity record.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"model artifact {path} does not exist")
    if not (path / MANIFEST).is_file():
        raise ModelError(f"model artifact {path} is incomplete: no {MANIFEST}")
    manifest = _read_json(path / MANIFEST)
    if manifest.get("format") != FORMAT_VERSION:
        raise ModelError(f"model artifact {path}: unsupported format {manifest.get('format')!r}")
    files: dict[str, dict[str, Any]] = manifest.get("files") or {}
    for name in REQUIRED_FILES:
        if name not in files:
            raise ModelError(f"model artifact {path} is incomplete: manifest does not list {name}")
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            raise ModelError(f"model artifact {path} is incomplete: {name} is missing")
        size = file.stat().st_size
        if size != entry.get("bytes"):
            raise ModelError(f"model artifact {path}: {name} has {size} bytes, manifest says {entry.get('bytes')} (truncated or replaced)")
        if sha256_file(file) != entry.get("sha256"):
            raise ModelError(f"model artifact {path}: checksum mismatch for {name} (corrupted or modified)")
    config = EncoderConfig.from_dict(_read_json(path / "config.json"))
    vocab = ItemVocab(_read_json(path / "vocab.json"))
    if len(vocab) != config.n_items:
        raise ModelError(f"model artifact {path}: vocabulary has {len(vocab)} entries, config says {config.n_items}")
    parity = _read_json(path / "parity.json")
    if not parity.get("passed"):
        raise ModelError(f"model artifact {path}: its export parity check did not pass")
    _check_onnx(path / MODEL_FILE, ONNX_CONFIG.accepted_inputs(config))
    return Artifact(
        path=path,
        version=int(manifest["version"]),
        created_at=str(manifest.get("created_at", "")),
        config=config,
        vocab=vocab,
        metrics=_read_json(path / "metrics.json"),
        parity=parity,
    )


def _check_onnx(path: Path, accepted_inputs: tuple[tuple[str, ...], ...]) -> None:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except (DecodeError, onnx.checker.ValidationError, ValueError, OSError) as exc:
        raise ModelError(f"model artifact {path.parent}: {path.name} is not a valid ONNX model: {exc}") from exc
    names = tuple(i.name for i in proto.graph.input)
    if names not in accepted_inputs:
        raise ModelError(f"model artifact {path.parent}: graph inputs {list(names)} differ from {list(accepted_inputs[0])}")


def latest_artifact(root: Path) -> Artifact:
    """The newest version under ``root`` that verifies (broken ones are skipped with a warning)."""
    for version in reversed(list_versions(Path(root))):
        candidate = Path(root) / version_dir_name(version)
        try:
            return load_artifact(candidate)
        except ModelError as exc:
            log.warning("skipping model version %d: %s", version, exc)
    raise ModelError(f"no valid model artifact under {root}")
