"""The context view: what it buys on a stream whose next item depends on the context, and what it costs per event.

``streamrec bench context`` trains two models on the same synthetic context
world (``stream/generator.py`` ``context_events``) with the same seed, one
with the ``device`` key as a view and one without, and reports:

* offline ranking quality (NDCG@10, HR@10, MRR) on held-out last events,
  through the torch model and through the exported graph as it serves;
* the serving cost per event of ``ServedModel.recommend`` (featurisation +
  graph call) on the same windows, interleaved so a shared machine's load
  falls on both alike, and the featurisation alone;
* the bytes of a stored 50-event window with and without the kept key.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from streamrec.models.config import EncoderConfig
from streamrec.models.data import EventLog, events_from_dicts
from streamrec.models.evaluate import evaluate_session
from streamrec.models.features import UserSequence, featurize
from streamrec.models.splits import EvalCase, Split, slice_sequence
from streamrec.models.train import TrainConfig, train
from streamrec.onnx.runtime import ServedModel
from streamrec.onnx.writer import write_artifact
from streamrec.stream.generator import ContextWorldConfig, context_events
from streamrec.stream.window import WindowEntry, encode_window

log = logging.getLogger(__name__)

KEY = "device"
WORLD = ContextWorldConfig(num_users=1000, pairs_per_user=10, devices=("tv", "phone", "web"), neutral_items=50,
                           group_size=20, p_aligned=0.7, p_missing=0.05)


def last_event_split(log_: EventLog, *, seed: int) -> Split:
    """Every user's last event is a case: half the users validate, the other half test; the rest trains.

    In the context world the last event is always a context-dependent item, so
    early stopping and the test both look at what the view is for (a plain
    leave-one-out would validate on the context-free neutral items).
    """
    train_seqs: dict[str, UserSequence] = {}
    valid: list[EvalCase] = []
    test: list[EvalCase] = []
    users = sorted(log_.user_sequences().items())
    random.Random(seed).shuffle(users)
    for n, (user, seq) in enumerate(users):
        history = slice_sequence(seq, None, len(seq) - 1)
        train_seqs[user] = history
        (valid if n % 2 == 0 else test).append(EvalCase(user, history, seq.item_ids[-1]))
    return Split(kind="last_event", train=train_seqs, valid=valid, test=test)


def _serving_cost(sessions: dict[str, ServedModel], sequences: Sequence[UserSequence], repeats: int) -> dict[str, dict[str, float]]:
    """Median µs per event of ``recommend`` and of ``featurize`` alone, interleaved across the sessions."""
    calls: dict[str, list[float]] = {name: [] for name in sessions}
    feats: dict[str, list[float]] = {name: [] for name in sessions}
    for session in sessions.values():
        session.recommend(sequences, k=10)
    for _ in range(repeats):
        for name, session in sessions.items():
            t0 = time.perf_counter()
            session.recommend(sequences, k=10)
            t1 = time.perf_counter()
            featurize(sequences, session.vocab, session.config)
            t2 = time.perf_counter()
            calls[name].append(t1 - t0)
            feats[name].append(t2 - t1)
    per_event = 1e6 / len(sequences)
    return {name: {"recommend_us_per_event": round(float(np.median(calls[name])) * per_event, 1),
                   "featurize_us_per_event": round(float(np.median(feats[name])) * per_event, 1)} for name in sessions}


def run_context_bench(work_dir: Path, *, seed: int = 0, epochs: int = 40, patience: int = 8, threads: int = 1,
                      batch: int = 64, repeats: int = 100, progress: bool = False) -> dict[str, Any]:
    """Train without and with the context view (same data, same seed) and measure both; see the module docstring."""
    world = replace(WORLD, seed=seed)
    events = context_events(world)
    split = last_event_split(events_from_dicts(events), seed=seed)
    base = EncoderConfig(n_items=0, event_types=("view",))
    tcfg = TrainConfig(epochs=epochs, patience=patience, seed=seed, progress=progress)
    variants = {"without context": base, f"with context ({KEY})": replace(base, context_keys=(KEY,))}
    rows: dict[str, dict[str, Any]] = {}
    sessions: dict[str, ServedModel] = {}
    for name, config in variants.items():
        log.info("training %s", name)
        result = train(split, config, tcfg)
        path = write_artifact(result.model, result.vocab, work_dir / name.split()[0],
                              real_sequences=[c.history for c in split.test[:256]])
        session = ServedModel.load(path, device="cpu", threads=threads)
        sessions[name] = session
        served = evaluate_session(session, split.test)
        rows[name] = {
            "test_torch": {k: round(v, 4) for k, v in result.test.items()},
            "test_served": {k: round(v, 4) for k, v in served.items()},
            "best_epoch": result.best_epoch, "epochs_run": len(result.history),
            "train_seconds": round(result.train_seconds, 1),
            "context_values": [list(v) for v in result.model.config.context_values],
        }
    windows = [c.history for c in split.test[:batch]]
    cost = _serving_cost(sessions, windows, repeats)
    for name in rows:
        rows[name].update(cost[name])
    entries = [WindowEntry(f"e-{n:08d}", f"phone-{n % 20}", "view", 1_700_000_000_000 + n) for n in range(50)]
    plain_bytes = len(encode_window(entries))
    keyed_bytes = len(encode_window([replace(e, context={KEY: "phone"}) for e in entries]))
    return {
        "benchmark": "context-view", "seed": seed, "world": asdict(world),
        "events": len(events), "train_users": len(split.train), "valid_cases": len(split.valid),
        "test_cases": len(split.test), "epochs": epochs, "patience": patience, "threads": threads,
        "serving_batch": len(windows), "repeats": repeats, "rows": rows,
        "window_bytes_50_events": {"without context": plain_bytes, f"with {KEY}=phone": keyed_bytes},
    }


def format_table(result: dict[str, Any]) -> str:
    """The side-by-side table the README quotes."""
    lines = [f"context view, seed {result['seed']}: {result['events']} events, {result['test_cases']} test cases "
             f"(held-out last events), serving batch {result['serving_batch']} windows, {result['threads']} thread(s)",
             f"{'':28} {'NDCG@10':>8} {'HR@10':>7} {'MRR':>7} {'served NDCG@10':>15} {'best ep':>7} "
             f"{'recommend us/ev':>16} {'featurize us/ev':>16}"]
    for name, row in result["rows"].items():
        t, s = row["test_torch"], row["test_served"]
        lines.append(f"{name:28} {t['ndcg@10']:8.4f} {t['recall@10']:7.4f} {t['mrr']:7.4f} {s['ndcg@10']:15.4f} "
                     f"{row['best_epoch']:7d} {row['recommend_us_per_event']:16.1f} {row['featurize_us_per_event']:16.1f}")
    sizes = result["window_bytes_50_events"]
    lines.append("stored 50-event window: " + ", ".join(f"{k} {v} bytes" for k, v in sizes.items()))
    return "\n".join(lines)
