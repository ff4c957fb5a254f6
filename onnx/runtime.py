"""The served model: an ONNX Runtime session over one artifact, answering ``recommend``.

:class:`ServedModel` loads a verified artifact, picks the execution
provider (CUDA when a GPU is present, checked with ``get_providers()``; a
fallback to CPU is logged as a WARNING), sets CPU threads explicitly, warms
up, and answers :meth:`ServedModel.recommend` — one batched call per
micro-batch of user sequences.

On CPU a batch is split into one shard per thread (rows sorted by length and
cut to their own longest sequence, so short windows are not padded to the
batch's longest), each run single-threaded and all at once (``InferenceSession.run`` is thread-safe and releases the
GIL). At serving sizes (a few to a few hundred sequences of 50 events) the
ops are too small for ONNX Runtime's intra-op pool to pay for waking its
threads: two intra-op threads measured about 1.1x one, two shards about 1.5x
one call with two intra-op threads at batch 64 (``streamrec bench encoder``). Featurisation is :func:`streamrec.models.features.featurize`,
the same function training uses.
"""

from __future__ import annotations

import ctypes
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import onnxruntime as ort

from streamrec.errors import ModelError
from streamrec.models.config import FIRST_REAL_INDEX, ONNX_CONFIG
from streamrec.models.features import FeatureBatch, UserSequence, exclusion_from_features, exclusion_indices, featurize
from streamrec.onnx.artifact import FP16_MODEL_FILE, Artifact, load_artifact

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# Below this many rows per shard, splitting costs more than it saves.
MIN_SHARD_ROWS = 8
# Length-sorted chunks per shard when that cuts the padded work enough.
CHUNKS_PER_SHARD = 3
# Inputs laid out ``(batch, seq, ...)``: a row chunk is cut to its own length on axis 1.
SEQUENCE_INPUTS = ("item_idx", "event_type", "time_bucket", "attention_mask", ONNX_CONFIG.context_input)
# Inputs that belong to the whole batch, not to a row: every chunk gets them whole.
BATCH_INPUTS = (ONNX_CONFIG.new_items_input,)


class NewItems(Protocol):
    """Items a served version ranks though its graph was exported without them (vectors from their content)."""

    @property
    def index(self) -> Mapping[str, int]:
        """Item id -> row of :attr:`vectors`."""
        ...

    @property
    def vectors(self) -> np.ndarray:
        """``(n, hidden)`` float32 item vectors, as the version scores them."""
        ...

    @property
    def item_ids(self) -> Sequence[str]:
        """Item id of each row of :attr:`vectors`."""
        ...


def length_chunks(lengths: np.ndarray, n_shards: int) -> list[np.ndarray]:
    """Row indices split into chunks of similar ``lengths`` (real events per row; shortest first).

    A batch is padded to its longest sequence; in a worker's batch most
    windows are short. Cutting the length-sorted rows into ``n_shards``
    chunks, or ``CHUNKS_PER_SHARD`` times as many when that removes over a
    quarter of the padded positions, lets each chunk run at its own length.
    """
    order = np.argsort(lengths, kind="stable")

    def split(n: int) -> list[np.ndarray]:
        bounds = np.linspace(0, len(order), n + 1).astype(int)
        return [order[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]

    def padded_positions(chunks: list[np.ndarray]) -> int:
        return sum(len(rows) * int(lengths[rows].max()) for rows in chunks)

    few = split(n_shards)
    n_many = min(n_shards * CHUNKS_PER_SHARD, len(order) // MIN_SHARD_ROWS)
    if n_many > n_shards:
        many = split(n_many)
        if padded_positions(many) < 0.75 * padded_positions(few):
            return many
    return few


@dataclass(frozen=True)
class TopK:
    """Top-K recommendations for one user, best first."""

    item_ids: list[str]
    scores: list[float]
    user_vector: np.ndarray


def chunk_feeds(feeds: Mapping[str, np.ndarray], rows: np.ndarray, width: int) -> dict[str, np.ndarray]:
    """The graph inputs of ``rows`` only, their sequences cut to the newest ``width`` positions (left padding).

    Inputs of the whole batch (:data:`BATCH_INPUTS`) go to every chunk whole.
    """
    return {
        name: value if name in BATCH_INPUTS else value[rows, -width:] if name in SEQUENCE_INPUTS else value[rows]
        for name, value in feeds.items()
    }


def gpu_present() -> bool:
    """True when the CUDA driver reports at least one device (no torch import needed)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return False
    return count.value > 0


def serving_threads() -> int:
    """CPU shards a served model uses when none are asked for: physical cores (ORT's own default), or logical cores when psutil cannot tell."""
    try:
        import psutil

        return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except ImportError:
        return os.cpu_count() or 1


def graph_feeds(features: FeatureBatch, exclude: np.ndarray, new_item_vectors: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The graph's inputs by name, ``k`` aside (see ``EncoderOnnxConfig``).

    ``context`` only when the features have it; ``new_item_vectors`` only when
    given (a graph that reads them: :meth:`ServedModel.new_item_rows`).
    """
    feeds = {
        "item_idx": features.item_idx,
        "event_type": features.event_type,
        "time_bucket": features.time_bucket,
        "attention_mask": features.attention_mask,
        "exclude": exclude,
    }
    if features.context is not None:
        feeds[ONNX_CONFIG.context_input] = features.context
    if new_item_vectors is not None:
        feeds[ONNX_CONFIG.new_items_input] = new_item_vectors
    return feeds


def session_options() -> ort.SessionOptions:
    """The options every ONNX Runtime session is opened with (serving, parity check, benchmark).

    Single-threaded runs: parallelism comes from shards (module docstring).
    Denormals flushed to zero: masked attention scores (the dtype minimum)
    underflow in Softmax's ``exp`` into denormal floats, which made the
    Softmax 8x slower (0.85 vs 0.10 ms for ``(32, 2, 50, 50)``); flushing
    changes only values below 1.2e-38. ONNX Runtime sets the flag on the
    thread that calls ``run``, where it stays: the worker's encoder thread,
    and its event loop, which encodes small batches itself (nothing there
    computes with values that small).
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    return opts


def _preload_cuda_libraries() -> None:
    # onnxruntime-gpu >= 1.21 can load CUDA/cuDNN from the nvidia-* pip wheels.
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except (OSError, RuntimeError) as exc:
        log.warning("onnxruntime.preload_dlls() failed (%s); relying on the system CUDA libraries", exc)


def _known_or_new(known_id: Callable[[int], str], n_items: int, new_ids: Sequence[str], index: int) -> str:
    """The item at a graph index: the vocabulary's, or a new item's (indices after the table)."""
    return known_id(index) if index < n_items else new_ids[index - n_items]


class ServedModel:
    """One artifact version loaded in ONNX Runtime, ready to rank: ``recommend(sequences, k)``."""

    def __init__(
        self, artifact: Artifact, session: ort.InferenceSession, *, fp16: bool = False, shards: int = 1
    ) -> None:
        self.artifact = artifact
        self.session = session
        self.version: int = artifact.version
        self.config = artifact.config
        self.vocab = artifact.vocab
        # The event context keys this version reads: the worker keeps these in each window entry.
        self.context_keys: tuple[str, ...] = artifact.config.context_keys
        self.providers: list[str] = list(session.get_providers())
        self.device = "cuda" if self.providers and self.providers[0] == CUDA else "cpu"
        self.fp16 = fp16
        self._use_iobinding = self.device == "cuda"
        # One shard per CPU thread; the calling thread runs the first shard itself.
        self.shards = 1 if self.device == "cuda" else max(1, shards)
        self._shard_pool = (
            ThreadPoolExecutor(max_workers=self.shards - 1, thread_name_prefix="encoder-shard")
            if self.shards > 1 else None
        )
        graph_inputs = {i.name: i.type for i in session.get_inputs()}
        # Multi-view graphs exported since 2026-12-02 read new items inside windows; older ones see them as OOV.
        self.reads_new_items = ONNX_CONFIG.new_items_input in graph_inputs
        self._new_items_dtype = np.float16 if graph_inputs.get(ONNX_CONFIG.new_items_input) == "tensor(float16)" else np.float32
        self._no_new_items = np.zeros((1, self.config.hidden), dtype=self._new_items_dtype)

    # --- construction -------------------------------------------------------------
    @classmethod
    def load(
        cls,
        artifact_dir: Path,
        *,
        device: str = "auto",
        threads: int = 0,
        fp16: bool = False,
        warmup: bool = True,
    ) -> "ServedModel":
        """Verify and open an artifact.

        ``device``: ``auto`` (CUDA if a GPU is present), ``cuda`` (fail if CUDA
        cannot be had) or ``cpu``. ``threads``: CPU cores one batch may use
        (0 = physical cores), as that many concurrent single-threaded shards.
        ``fp16`` needs a GPU and an artifact with ``model_fp16.onnx``.
        """
        if device not in {"auto", "cuda", "cpu"}:
            raise ModelError(f"unknown device {device!r}; use auto, cuda or cpu")
        artifact = load_artifact(Path(artifact_dir))
        want_cuda = device == "cuda" or (device == "auto" and gpu_present())
        if device == "auto" and not want_cuda:
            log.info("no GPU found; ONNX Runtime uses the CPU provider")
        model_path = artifact.onnx_path
        if fp16:
            if not want_cuda:
                log.warning("fp16 requested without a GPU; serving the fp32 model on CPU")
                fp16 = False
            elif not (artifact.path / FP16_MODEL_FILE).is_file():
                raise ModelError(f"fp16 requested but artifact {artifact.path} has no {FP16_MODEL_FILE}")
            else:
                model_path = artifact.path / FP16_MODEL_FILE

        opts = session_options()
        cpu_threads = threads or serving_threads()
        providers: list[Any] = [CPU]
        if want_cuda:
            _preload_cuda_libraries()
            providers = [(CUDA, {"device_id": 0}), CPU]
        session = ort.InferenceSession(str(model_path), opts, providers=providers)
        got = session.get_providers()
        if want_cuda and (not got or got[0] != CUDA):
            message = (
                f"CUDA execution provider requested but ONNX Runtime fell back to {got}: "
                "check the CUDA 13 / cuDNN libraries (onnxruntime.preload_dlls) and the driver"
            )
            if device == "cuda":
                raise ModelError(message)
            log.warning("!!! %s — serving on CPU !!!", message)
        served = cls(artifact, session, fp16=fp16, shards=cpu_threads)
        log.info(
            "model v%d loaded from %s on %s (CPU shards=%d, fp16=%s)",
            artifact.version, artifact.path, got, served.shards, fp16,
        )
        if warmup:
            served.warmup()
        return served

    # --- inference ------------------------------------------------------------------
    @property
    def n_recommendable(self) -> int:
        """Real items in the catalogue (excludes padding and OOV)."""
        return len(self.vocab) - FIRST_REAL_INDEX

    def warmup(self, batch: int = 8) -> None:
        """One full-shape run so the first real request does not pay allocation/tuning costs."""
        seq = UserSequence(["__warmup__"] * self.config.max_len, ["view"] * self.config.max_len, list(range(self.config.max_len)))
        self.recommend([seq] * batch, k=min(10, self.n_recommendable))

    def taken_new_items(self, new_items: NewItems | None) -> NewItems | None:
        """``new_items`` when this graph takes them and there are some; None otherwise (the one place that decides)."""
        return new_items if self.reads_new_items and new_items is not None and len(new_items.index) else None

    def new_item_rows(self, new_items: NewItems | None) -> np.ndarray | None:
        """The graph's ``new_item_vectors`` input for ``new_items`` (one zero row when there are none); None when the graph has no such input."""
        if not self.reads_new_items:
            return None
        taken = self.taken_new_items(new_items)
        return self._no_new_items if taken is None else np.ascontiguousarray(taken.vectors, dtype=self._new_items_dtype)

    def featurize(self, sequences: Sequence[UserSequence], new_items: NewItems | None = None) -> FeatureBatch:
        """Model inputs for ``sequences``; items of ``new_items`` get their indices after the table when the graph takes them."""
        taken = self.taken_new_items(new_items)
        return featurize(sequences, self.vocab, self.config, extra_items=None if taken is None else taken.index)

    def run(
        self, features: FeatureBatch, exclude: np.ndarray, k: int, new_item_vectors: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw graph call: ``(user_vector, topk_indices, topk_scores)``, sharded across CPU threads.

        ``new_item_vectors``: see :meth:`new_item_rows` (a zero row is fed when the graph needs one and none is given).
        """
        if new_item_vectors is None:
            new_item_vectors = self.new_item_rows(None)
        if new_item_vectors is self._no_new_items:
            # The placeholder row is ranked like any other: excluded, so it is never recommended.
            exclude = np.concatenate([exclude, np.full((len(exclude), 1), len(self.vocab), dtype=exclude.dtype)], axis=1)
        feeds = graph_feeds(features, exclude, new_item_vectors)
        n_shards = min(self.shards, len(exclude) // MIN_SHARD_ROWS)
        if self._shard_pool is None or n_shards < 2:
            return self._run_one(feeds, k)
        lengths = features.attention_mask.sum(axis=1)
        chunks = length_chunks(lengths, n_shards)
        # Round-robin over length-sorted chunks gives every shard a similar mix.
        groups = [chunks[shard::n_shards] for shard in range(n_shards)]
        try:
            others = [self._shard_pool.submit(self._run_chunks, feeds, lengths, group, k) for group in groups[1:]]
        except RuntimeError:  # closed while a caller still held this session: answer, unsharded
            return self._run_one(feeds, k)
        parts = self._run_chunks(feeds, lengths, groups[0], k) + [part for future in others for part in future.result()]
        first = parts[0][1]
        outputs = [np.empty((len(exclude), *array.shape[1:]), dtype=array.dtype) for array in first]
        for rows, answers in parts:
            for output, answer in zip(outputs, answers):
                output[rows] = answer
        uv, idx, scores = outputs
        return uv, idx, scores

    def _run_chunks(
        self, feeds: dict[str, np.ndarray], lengths: np.ndarray, chunks: Sequence[np.ndarray], k: int
    ) -> list[tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
        """Run row chunks one after another, each cut to its own longest sequence."""
        answers = []
        for rows in chunks:
            # Left padding: the last ``width`` columns hold every real event of these rows.
            width = max(1, int(lengths[rows].max()))
            answers.append((rows, self._run_one(chunk_feeds(feeds, rows, width), k)))
        return answers

    def _run_one(self, feeds: dict[str, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        feeds = {**feeds, "k": np.array(k, dtype=np.int64)}
        if not self._use_iobinding:
            uv, idx, scores = self.session.run(list(ONNX_CONFIG.outputs), feeds)
            return uv, idx, scores
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in ONNX_CONFIG.outputs:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        uv, idx, scores = binding.copy_outputs_to_cpu()
        return uv, idx, scores

    def close(self) -> None:
        """Stop the shard threads (worker shutdown). A later ``run`` still answers, unsharded."""
        if self._shard_pool is not None:
            self._shard_pool.shutdown(wait=False)

    def recommend(
        self, sequences: Sequence[UserSequence], k: int, exclude_seen: bool = True, new_items: NewItems | None = None
    ) -> list[TopK]:
        """Top-``k`` items per sequence in one batched call (padded to the longest sequence).

        Unknown items map to the OOV bucket, except those of ``new_items``
        when the graph takes them (then their content vectors are the
        window's input, and the graph ranks them with its own items; a graph
        that does not leaves them to the caller); padding/OOV are never
        returned; with ``exclude_seen`` every known item in the sequence is
        excluded, so fewer than ``k`` items come back only when the catalogue
        runs out.
        """
        if not sequences:
            return []
        if not 1 <= k <= self.n_recommendable:
            raise ValueError(f"k must be within 1..{self.n_recommendable} (the catalogue size), got {k}")
        new_items = self.taken_new_items(new_items)
        features = self.featurize(sequences, new_items)
        n_new = 0 if new_items is None else len(new_items.index)
        if exclude_seen and max(len(s) for s in sequences) <= features.item_idx.shape[1]:
            exclude = exclusion_from_features(features.item_idx, self.vocab, n_new)  # nothing cut: same items, no lookup
        elif exclude_seen:
            exclude = exclusion_indices(sequences, self.vocab, None if new_items is None else new_items.index)
        else:
            exclude = np.zeros((len(sequences), 1), dtype=np.int64)
        uv, idx, scores = self.run(features, exclude, k, self.new_item_rows(new_items))
        item_id = self.vocab.item_id  # not ``vocab.ids``: that copies the whole catalogue
        if new_items is not None:
            item_id = partial(_known_or_new, item_id, len(self.vocab), new_items.item_ids)

        out: list[TopK] = []
        for row in range(len(sequences)):
            keep = np.isfinite(scores[row])  # -inf = excluded/reserved: never recommended
            out.append(
                TopK(
                    item_ids=[item_id(i) for i in idx[row][keep].tolist()],
                    scores=scores[row][keep].astype(np.float32).tolist(),
                    user_vector=np.asarray(uv[row], dtype=np.float32),
                )
            )
        return out

