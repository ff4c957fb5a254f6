"""Model artifacts: one verified directory per integer version.

Layout of ``<root>/v000007/``::

    model.onnx      the ranking graph (see streamrec.onnx.export)
    vocab.json      item ids by index (0 = <pad>, 1 = <oov>)
    config.json     EncoderConfig (+ ONNX opset/inputs/outputs)
    metrics.json    training/validation/test metrics
    parity.json     ONNX Runtime vs PyTorch check result
    weights.pt      torch state dict (warm starts, torch-side evaluation)
    model_fp16.onnx optional half-precision graph for the CUDA provider
    manifest.json   version, created time, sha256 + size of every file above

A version directory appears atomically (written under a temporary name, then
renamed), and :func:`load_artifact` refuses anything whose files are missing,
resized or changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from streamrec.errors import ModelError
from streamrec.models.config import ONNX_CONFIG, EncoderConfig
from streamrec.models.features import ItemVocab, UserSequence

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


def write_artifact(
    model: Any,
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
    import torch

    from streamrec.onnx.export import export_onnx
    from streamrec.onnx.parity import FP16_TOLERANCE, check_parity

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
        config_doc = {**config.to_dict(), "onnx": {"opset": ONNX_CONFIG.opset, "inputs": list(ONNX_CONFIG.inputs), "outputs": list(ONNX_CONFIG.outputs)}}
        _write_json(tmp / "config.json", config_doc)
        _write_json(tmp / "metrics.json", metrics or {})
        _write_json(tmp / "parity.json", parity_doc)
        torch.save(model.state_dict(), tmp / "weights.pt")
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
            _write_json(tmp / MANIFEST, manifest)
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


def _write_json(path: Path, data: Any) -> None:
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
    _check_onnx(path / MODEL_FILE)
    return Artifact(
        path=path,
        version=int(manifest["version"]),
        created_at=str(manifest.get("created_at", "")),
        config=config,
        vocab=vocab,
        metrics=_read_json(path / "metrics.json"),
        parity=parity,
    )


def _check_onnx(path: Path) -> None:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except (DecodeError, onnx.checker.ValidationError, ValueError, OSError) as exc:
        raise ModelError(f"model artifact {path.parent}: {path.name} is not a valid ONNX model: {exc}") from exc
    names = [i.name for i in proto.graph.input]
    if names != list(ONNX_CONFIG.inputs):
        raise ModelError(f"model artifact {path.parent}: graph inputs {names} differ from {list(ONNX_CONFIG.inputs)}")


def latest_artifact(root: Path) -> Artifact:
    """The newest version under ``root`` that verifies (broken ones are skipped with a warning)."""
    for version in reversed(list_versions(Path(root))):
        candidate = Path(root) / version_dir_name(version)
        try:
            return load_artifact(candidate)
        except ModelError as exc:
            log.warning("skipping model version %d: %s", version, exc)
    raise ModelError(f"no valid model artifact under {root}")
