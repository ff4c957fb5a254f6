"""Offline quality benchmark: our encoder over several seeds, optionally RecBole SASRec on the same split.

RecBole needs ``numpy<2`` (and other pins) that clash with streamrec's own
environment, so it runs in its own virtualenv (``~/.streamrec/recbole-venv``,
created on demand) as a subprocess. That venv reuses streamrec's torch through
a ``.pth`` path entry rather than downloading a second multi-GB torch; its own
site-packages (numpy<2, pandas, scipy, ...) come first on ``sys.path``.

Both sides see the same leave-one-out split: we hand RecBole a ``.inter``
file whose timestamps are each user's event positions in our order, so ties
in the original timestamps are broken identically.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from streamrec.bench.report import save_figure
from streamrec.errors import StreamrecError
from streamrec.models.config import FIRST_REAL_INDEX, EncoderConfig
from streamrec.models.content import ItemContent, add_items, content_config
from streamrec.models.data import EventLog, load_events, load_recbole_items
from streamrec.models.evaluate import case_scores, evaluate_model, exclude_seen
from streamrec.models.features import ItemVocab
from streamrec.models.ranking_metrics import mean_std, metrics_from_ranks, target_ranks
from streamrec.models.splits import EvalCase, Split, leave_one_out, slice_sequence
from streamrec.models.text import MODEL_NAME, MODEL_ZIP_SHA256, encode_texts_cached
from streamrec.models.train import TrainConfig, event_types_for, split_vocab, train
from streamrec.stream.items import parse_items, records_from_dicts

log = logging.getLogger(__name__)

RECBOLE_VERSION = "1.2.1"
# Tested together with streamrec's torch 2.x on Python 3.11; ray/hyperopt are
# only for RecBole's hyper-parameter search, which we do not import.
RECBOLE_DEPS = (
    "numpy<2",
    "scipy<1.14",
    "pandas<2.3",
    "scikit-learn<1.6",
    "colorlog==4.7.2",
    "colorama==0.4.4",
    "pyyaml",
    "tensorboard<2.19",
    "thop",
    "tabulate",
    "texttable",
    "psutil",
    "tqdm",
)

MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "4294967296",
    "MALLOC_TOP_PAD_": "1073741824",
}

# Reference: RecBole 1.2.1 SASRec with cross-entropy, measured once to convergence on a 2-core box.
RECBOLE_REFERENCE = {"ndcg@10": 0.064, "recall@10": 0.135, "ndcg@20": 0.090, "recall@20": 0.240}


def run_ours(
    data_path: Path,
    seeds: Sequence[int],
    model_config: EncoderConfig,
    train_config: TrainConfig,
) -> dict[str, Any]:
    """Train one model per seed on the leave-one-out split; test metrics per seed and mean/std."""
    events = load_events(data_path)
    split = leave_one_out(events)
    config = replace(model_config, event_types=event_types_for(split.train.values(), model_config.event_types))
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        result = train(split, config, replace(train_config, seed=seed))
        runs.append({
            "seed": seed,
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "train_seconds": round(result.train_seconds, 1),
            "valid": result.best_valid,
            "test": result.test,
        })
        log.info("seed %d: test %s in %.0f s", seed, result.test, result.train_seconds)
    summary = mean_std([{**r["test"], "train_seconds": r["train_seconds"]} for r in runs])
    return {
        "model": "streamrec-encoder",
        "split": split.summary(),
        "model_config": config.to_dict(),
        "train_config": asdict(train_config),
        "runs": runs,
        "test_mean_std": summary,
    }


# --- RecBole, in its own environment -----------------------------------------------

_RECBOLE_SCRIPT = r'''
import json, os, sys
args = json.loads(sys.argv[1])
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender import SASRec
from recbole.trainer import Trainer
from recbole.utils import init_seed, init_logger
import time
config = Config(model="SASRec", dataset=args["dataset"], config_dict=args["config"])
init_seed(config["seed"], config["reproducibility"])
init_logger(config)
dataset = create_dataset(config)
train_data, valid_data, test_data = data_preparation(config, dataset)
model = SASRec(config, train_data._dataset).to(config["device"])
trainer = Trainer(config, model)
start = time.perf_counter()
best_valid_score, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
seconds = time.perf_counter() - start
test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
print("RECBOLE_RESULT " + json.dumps({"valid": dict(best_valid), "test": dict(test), "train_seconds": seconds}))
'''


def recbole_python(venv: Path) -> Path:
    """Create (once) the RecBole virtualenv and return its interpreter."""
    python = venv / "bin" / "python"
    marker = venv / ".streamrec-ready"
    if marker.is_file():
        return python
    log.info("creating the RecBole environment in %s (one-off, a few minutes)", venv)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    # Reuse our torch (and its CUDA wheels) instead of a second download: a
    # .pth entry appends streamrec's site-packages *after* the venv's own, so
    # the venv's numpy<2 wins over our numpy 2.
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    Path(site, "zz_streamrec_torch.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *RECBOLE_DEPS], check=True)
    subprocess.run([*pip, "--no-deps", f"recbole=={RECBOLE_VERSION}"], check=True)
    marker.write_text(RECBOLE_VERSION + "\n")
    return python


def write_recbole_dataset(data_path: Path, out_dir: Path, name: str) -> Path:
    """Our leave-one-out order as a RecBole atomic file (timestamp = position in the user's sequence)."""
    events = load_events(data_path)
    folder = out_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user, seq in events.user_sequences().items():
        lines.extend(f"{user}\t{item}\t{pos}" for pos, item in enumerate(seq.item_ids))
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    return folder


def run_recbole(
    data_path: Path,
    *,
    venv: Path,
    epochs: int,
    seed: int = 2020,
    timeout_s: float | None = None,
    device: str = "cpu",
    log_path: Path | None = None,
) -> dict[str, Any]:
    """RecBole SASRec (CE loss, max length 50, lr 0.002, batch 1024, early stop on valid NDCG@10)."""
    python = recbole_python(venv)
    with tempfile.TemporaryDirectory(prefix="streamrec-recbole-") as tmp:
        name = "streamrec_loo"
        write_recbole_dataset(data_path, Path(tmp), name)
        config = {
            "data_path": tmp,
            "checkpoint_dir": str(Path(tmp) / "saved"),
            "log_wandb": False,
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "USER_ID_FIELD": "user_id",
            "ITEM_ID_FIELD": "item_id",
            "TIME_FIELD": "timestamp",
            "MAX_ITEM_LIST_LENGTH": 50,
            "loss_type": "CE",
            "train_neg_sample_args": None,
            "learning_rate": 0.002,
            "train_batch_size": 1024,
            "eval_batch_size": 4096,
            "epochs": epochs,
            "stopping_step": 10,
            "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
            "metrics": ["Recall", "NDCG", "MRR"],
            "topk": [10, 20],
            "valid_metric": "NDCG@10",
            "seed": seed,
            "reproducibility": True,
            "device": device,
            "use_gpu": device != "cpu",
            "show_progress": False,
            "state": "INFO",
        }
        env = {
            **os.environ,
            # RecBole 1.2.1 checkpoints pickle its Config; torch >= 2.6 loads weights-only by default.
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
            "PYTHONWARNINGS": "ignore",
        }
        # Measured on 2-core boxes: without these glibc returns and re-maps big
        # tensor buffers every step (most CPU time in the kernel).
        for key, value in MALLOC_ENV.items():
            env.setdefault(key, value)
        started = time.perf_counter()
        log_file = log_path or Path(tmp) / "recbole.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log.info("running RecBole SASRec (epoch cap %d); its log: %s", epochs, log_file)
        with log_file.open("w") as sink:
            # RecBole logs per epoch; streaming to a file lets a long run be watched with tail -f.
            proc = subprocess.run(
                [str(python), "-c", _RECBOLE_SCRIPT, json.dumps({"dataset": name, "config": config})],
                stdout=sink, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp, timeout=timeout_s, check=False,
            )
        wall = time.perf_counter() - started
        output = log_file.read_text()
    result_lines = [l for l in output.splitlines() if l.startswith("RECBOLE_RESULT ")]
    if proc.returncode != 0 or not result_lines:
        raise StreamrecError(f"RecBole SASRec run failed (exit {proc.returncode}):\n{output[-3000:]}")
    out = json.loads(result_lines[-1].removeprefix("RECBOLE_RESULT "))
    out["test"] = {k.lower(): v for k, v in out["test"].items()}
    out["valid"] = {k.lower(): v for k, v in out["valid"].items()}
    # RecBole logs "epoch N training [time: ...]" once per epoch.
    out["epochs_run"] = len(re.findall(r"epoch \d+ training", output))
    out.update({"model": f"recbole-{RECBOLE_VERSION}-SASRec", "epochs_cap": epochs, "wall_seconds": round(wall, 1), "seed": seed})
    return out


def compare(ours: dict[str, Any] | None, recbole: dict[str, Any] | None) -> dict[str, Any]:
    """Side-by-side rows: ours (mean over seeds), RecBole measured (if run) and the reference figure."""
    rows = []
    mean = {k: v["mean"] for k, v in ours["test_mean_std"].items()} if ours else {}
    if ours:
        rows.append({"model": f"streamrec (mean of {len(ours['runs'])} seeds)", **{k: mean.get(k) for k in RECBOLE_REFERENCE}, "train_seconds": mean.get("train_seconds")})
    if recbole is not None:
        rows.append({"model": f"RecBole SASRec (measured, epoch cap {recbole['epochs_cap']})", **{k: recbole["test"].get(k) for k in RECBOLE_REFERENCE}, "train_seconds": recbole.get("train_seconds")})
    rows.append({"model": "RecBole SASRec (reference run, converged)", **RECBOLE_REFERENCE, "train_seconds": 7200.0})
    beats = {k: mean[k] > RECBOLE_REFERENCE[k] for k in ("ndcg@10", "recall@10")} if ours else {}
    if ours and recbole is not None:
        beats.update({f"{k}_vs_measured": mean[k] > recbole["test"].get(k, 0.0) for k in ("ndcg@10", "recall@10")})
    return {"rows": rows, "beats_reference": beats}


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    cols = ["ndcg@10", "recall@10", "ndcg@20", "recall@20", "train_seconds"]
    lines = [f"{'model':<52}" + "".join(f"{c:>14}" for c in cols)]
    for row in rows:
        cells = "".join(f"{row[c]:>14.4f}" if isinstance(row.get(c), float) and c != "train_seconds" else f"{(row.get(c) or 0):>14.1f}" for c in cols)
        lines.append(f"{row['model']:<52}{cells}")
    return "\n".join(lines)


# --- items described by their content: id-only vs multi-view, and cold items -----------

MULTI_VIEW_KS = (10, 20)
# One colour per model in both panels of the plot.
# The cold-item row of the multi-view model once its new items take only their share of
# interactions of the top-10 slots (see offset_for_share): ranking apart from placement.
AT_SHARE = "multi-view, new items at their share"
# Popularity as counted up to each case's own event (what a live ranking knows then).
AS_OF = "popularity, counts so far"
MODEL_COLOURS = {"id-only": "#999999", "popularity": "#4c72b0", AS_OF: "#8fa8d6", "multi-view": "#dd8452", AT_SHARE: "#f2b880"}


def ml100k_item_content(items_path: Path, cache_dir: Path, *, progress: bool = False) -> tuple[ItemContent, dict[str, Any]]:
    """RecBole's ``ml-100k.item`` validated as item records and read by the packaged text encoder.

    Returns the content (text vector + genres per item) and a summary (items,
    rejected records, the encoder and its pinned checksum).
    """
    records = records_from_dicts(load_recbole_items(items_path), str(items_path))
    items, rejected = parse_items(records)
    for record, why in rejected:
        log.warning("item record %s rejected: %s (%s)", record.location, why.reason, why.detail)
    vectors = encode_texts_cached([item.text() for item in items], cache_dir, progress=progress)
    content = ItemContent([i.item_id for i in items], vectors, [i.categories for i in items])
    summary = {"items": len(items), "rejected": len(rejected), "text_encoder": MODEL_NAME,
               "text_encoder_zip_sha256": MODEL_ZIP_SHA256, "example_text": items[0].text() if items else ""}
    return content, summary


def _multi_view_config(base: EncoderConfig, content: ItemContent, id_dropout: float) -> EncoderConfig:
    return content_config(base, content, id_dropout=id_dropout)


def _run_row(result: Any) -> dict[str, Any]:
    return {"best_epoch": result.best_epoch, "epochs_run": len(result.history),
            "train_seconds": round(result.train_seconds, 1), "test": result.test}


def choose_cold_items(item_ids: Sequence[str], frac: float, seed: int) -> set[str]:
    """``frac`` of the items, drawn with ``seed`` (each seed holds out a different set)."""
    rng = np.random.default_rng(seed)
    ordered = sorted(set(item_ids))
    n = max(1, int(round(frac * len(ordered))))
    return {ordered[i] for i in rng.choice(len(ordered), size=n, replace=False)}


def without_items(events: EventLog, items: set[str]) -> EventLog:
    """The log with every event of ``items`` removed (they never reach training)."""
    out = EventLog()
    for u, i, e, t in zip(events.user_ids, events.item_ids, events.event_types, events.ts_ms):
        if i not in items:
            out.append(u, i, e, t)
    return out


def cold_cases(events: EventLog, cold: set[str]) -> list[EvalCase]:
    """Every event whose item is held out and that has an earlier event: predict it from the user's history."""
    cases: list[EvalCase] = []
    for user, seq in events.user_sequences().items():
        for pos in range(1, len(seq)):
            if seq.item_ids[pos] in cold:
                cases.append(EvalCase(user, slice_sequence(seq, None, pos), seq.item_ids[pos]))
    return cases


def popularity_metrics(events: EventLog, cases: Sequence[EvalCase], ks: Sequence[int] = MULTI_VIEW_KS) -> dict[str, float]:
    """Rank every item by its interaction count over the whole log (seen items excluded, the target kept).

    The counts include the held-out items' own interactions: an oracle that
    knows how popular each new item will become, so a generous baseline.
    """
    vocab = ItemVocab.build(events.item_ids)
    counts = np.zeros(len(vocab), dtype=np.float64)
    np.add.at(counts, vocab.lookup(events.item_ids), 1.0)
    return metrics_from_ranks(count_ranks(vocab, cases, lambda rows: np.tile(counts, (rows.stop - rows.start, 1))), ks)


def popularity_as_of_metrics(events: EventLog, cases: Sequence[EvalCase], ks: Sequence[int] = MULTI_VIEW_KS) -> dict[str, float]:
    """Rank every item by its count of events *before* the case's own event (seen items excluded, target kept).

    What a live popularity ranking knows at that moment, where
    :func:`popularity_metrics` knows the whole log. On ML-100k's cold cases it
    is the stronger of the two (recently popular items are what people rate
    next), so the oracle is not the generous baseline its name suggests.
    """
    vocab = ItemVocab.build(events.item_ids)
    index = vocab.lookup(events.item_ids)
    stamps = np.asarray(events.ts_ms, dtype=np.int64)
    order = np.argsort(index, kind="stable")
    bounds = np.searchsorted(index[order], np.arange(len(vocab) + 1))
    per_item = [np.sort(stamps[order[bounds[i]:bounds[i + 1]]]) for i in range(len(vocab))]
    sequences = events.user_sequences()
    at = np.array([sequences[c.user_id].timestamps_ms[len(c.history.item_ids)] for c in cases], dtype=np.int64)

    def counts_before(rows: slice) -> np.ndarray:
        return np.stack([np.searchsorted(times, at[rows], side="left") for times in per_item], axis=1).astype(np.float64)

    return metrics_from_ranks(count_ranks(vocab, cases, counts_before), ks)


def count_ranks(vocab: ItemVocab, cases: Sequence[EvalCase], counts: Callable[[slice], np.ndarray],
                chunk: int = 512) -> np.ndarray:
    """Targets' ranks under per-case item counts (``counts(rows)``: ``(rows, n_items)``), seen items excluded."""
    ranks = []
    for start in range(0, len(cases), chunk):
        rows = slice(start, min(start + chunk, len(cases)))
        scores = counts(rows)
        scores[:, :FIRST_REAL_INDEX] = -np.inf
        ranks.append(target_ranks(scores, exclude_seen(scores, cases[rows], vocab)))
    return np.concatenate(ranks) if ranks else np.zeros(0)


def id_only_cold_metrics(warm_split: Split, cases: Sequence[EvalCase], ks: Sequence[int] = MULTI_VIEW_KS) -> dict[str, float]:
    """The id-only row of the cold-item table, without training the id-only model it describes.

    That model's vocabulary is the warm split's items (:func:`split_vocab`, what
    :func:`train` uses), and every case's target is a held-out item, so it has
    no row to rank: :func:`evaluate_model` gives each case rank ``inf`` whatever
    the weights. Training it (a quarter of a seed's time) changed nothing in
    the table. A target the vocabulary does know would break that argument, so
    it is an error rather than a silent zero.
    """
    vocab = split_vocab(warm_split)
    known = sorted({case.target for case in cases if case.target in vocab})
    if known:
        raise StreamrecError(f"cold-item targets present in the training vocabulary: {known[:5]}")
    return metrics_from_ranks(np.full(len(cases), np.inf), ks)


def top_k_share(scores: np.ndarray, first_index: int, k: int = 10) -> float:
    """Share of the top-``k`` slots of ``(cases, items)`` scores held by items at index ``first_index`` or above.

    Excluded items carry ``-inf``; a row with fewer than ``k`` finite scores
    counts only its finite slots.
    """
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    finite = np.isfinite(np.take_along_axis(scores, top, axis=1))
    return float(((top >= first_index) & finite).sum() / max(int(finite.sum()), 1))


def new_item_top_share(scores: Sequence[np.ndarray], first_new: int, k: int = 10, offset: float = 0.0) -> float:
    """Share of the top-``k`` slots (seen items excluded) that a grown model gives to its new items.

    ``scores``: chunks of :func:`~streamrec.models.evaluate.case_scores`;
    ``offset`` is added to every new item's score first (see
    :func:`offset_for_share`). The cold-item table alone rewards a model that
    ranks every new item above every trained one (its cases' targets are all
    new items). Measured on ML-100k seed 0 (#16): the default model's new-item
    rows doubled after training give cold HR@10 7.5x popularity, with new items
    in 93 % of the top-10 slots of warm test users (their share of
    interactions: 10 %) and warm HR@10 0.200 -> 0.031. On warm cases this
    share should stay near the new items' share of interactions.
    """
    slots = [top_k_share(shift_new_items(chunk, first_new, offset), first_new, k) for chunk in scores]
    return float(np.average(slots, weights=[len(chunk) for chunk in scores])) if slots else 0.0


def shift_new_items(scores: np.ndarray, first_new: int, offset: float) -> np.ndarray:
    """``scores`` with ``offset`` added to the columns of new items (index ``first_new`` and above)."""
    if offset == 0.0:
        return scores
    shifted = scores.copy()
    shifted[:, first_new:] += offset
    return shifted


def offset_for_share(scores: Sequence[np.ndarray], first_new: int, share: float, k: int = 10) -> float:
    """The constant which, added to every new item's score, gives new items ``share`` of the top-``k`` slots.

    The cold-item HR at that offset is ranking quality apart from placement:
    how well the model orders new items against each other and against the
    user's taste, when they take only the slots their interactions earn.
    The share moves in steps, so this is the largest offset (by bisection,
    to 1e-4; the share only grows with it) at which new items take at most
    ``share`` of the slots.
    """
    low, high = -1.0, 1.0
    while new_item_top_share(scores, first_new, k, low) > share and low > -1e6:
        low *= 2
    while new_item_top_share(scores, first_new, k, high) < share and high < 1e6:
        high *= 2
    while high - low > 1e-4:
        middle = (low + high) / 2
        if new_item_top_share(scores, first_new, k, middle) > share:
            high = middle
        else:
            low = middle
    return low


def ranks_with_offset(scores: Sequence[tuple[np.ndarray, np.ndarray]], first_new: int, offset: float) -> np.ndarray:
    """Targets' ranks after adding ``offset`` to every new item's score (chunks of ``case_scores``)."""
    ranks = [target_ranks(shift_new_items(chunk, first_new, offset), targets) for chunk, targets in scores]
    return np.concatenate(ranks) if ranks else np.zeros(0)


# New items' shares of the top-10 slots at which the placement curve is drawn (beside their
# interaction share and the model as trained): what lifting every new item buys on the cold
# cases and costs the warm ones.
PLACEMENT_SHARES = (0.15, 0.2, 0.3, 0.5)


def cold_rows_with_share(
    grown: Any, vocab: ItemVocab, cold: Sequence[EvalCase], warm: Sequence[EvalCase], first_new: int, share: float,
) -> dict[str, Any]:
    """The grown model's crowding figures and its cold-item metrics with new items at ``share`` of the slots.

    ``new_item_top10_share``: the new items' share of the top-10 slots of the
    warm split's test users as trained. ``at_interaction_share``: the cold-item
    metrics once one constant added to every new item's score gives them
    ``share`` (their share of interactions) of those slots instead.
    ``placement``: the same at :data:`PLACEMENT_SHARES` too, with the warm
    test cases' HR@10 beside the cold cases', one point per offset (the
    model as trained is the point at offset 0).
    """
    warm_scored = list(case_scores(grown, vocab, warm))
    warm_scores = [chunk for chunk, _ in warm_scored]
    cold_scores = list(case_scores(grown, vocab, cold))
    offset = offset_for_share(warm_scores, first_new, share)
    offsets = sorted({0.0, offset, *(offset_for_share(warm_scores, first_new, s) for s in PLACEMENT_SHARES if s > share)})
    cold_ranks = {o: ranks_with_offset(cold_scores, first_new, o) for o in offsets}
    placement = [{
        "offset": o,
        "new_item_top10_share": new_item_top_share(warm_scores, first_new, offset=o),
        "cold_hr10": metrics_from_ranks(cold_ranks[o], (10,))["recall@10"],
        "warm_hr10": metrics_from_ranks(ranks_with_offset(warm_scored, first_new, o), (10,))["recall@10"],
    } for o in offsets]
    return {
        "new_item_top10_share": next(point["new_item_top10_share"] for point in placement if point["offset"] == 0.0),
        "interaction_share_offset": offset,
        "at_interaction_share": metrics_from_ranks(cold_ranks[offset], MULTI_VIEW_KS),
        "placement": placement,
    }


def run_multi_view(
    data_path: Path,
    content: ItemContent,
    seeds: Sequence[int],
    model_config: EncoderConfig,
    train_config: TrainConfig,
    *,
    id_dropout: float = 0.5,
    cold_frac: float = 0.1,
    cold_only: bool = False,
    partial_out: Path | None = None,
) -> dict[str, Any]:
    """Both protocols for each seed: leave-one-out (id-only vs multi-view) and cold items (id-only, popularity, multi-view).

    Cold items: ``cold_frac`` of the items never reach training (their events
    are removed from the log); the multi-view model trains and early-stops on
    the rest (the id-only row needs no training: :func:`id_only_cold_metrics`).
    The cases are every interaction with a held-out item that has history,
    ranked against all items with the user's seen items excluded. The
    multi-view model meets the held-out items only after training, by
    :func:`streamrec.models.content.add_items` (content alone, no retrain), as
    a new item record would reach it; the id-only model has no row for them.

    ``cold_only``: skip the two leave-one-out trainings (a third of a seed's time
    each) to compare training variants on the cold-item table alone; the
    leave-one-out table is then empty.

    ``partial_out``: the seeds done so far and their tables are written there
    after each seed, so a run stopped before its last seed still leaves them.
    """
    events = load_events(data_path)
    base = replace(model_config, event_types=event_types_for(events.user_sequences().values(), model_config.event_types))
    multi = _multi_view_config(base, content, id_dropout)
    loo = leave_one_out(events)
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        tc = replace(train_config, seed=seed)
        row: dict[str, Any] = {"seed": seed}
        if not cold_only:
            log.info("seed %d: leave-one-out, id-only", seed)
            row["loo_id_only"] = _run_row(train(loo, base, tc))
            log.info("seed %d: leave-one-out, multi-view", seed)
            row["loo_multi_view"] = _run_row(train(loo, multi, tc, item_content=content))

        cold = choose_cold_items(events.item_ids, cold_frac, seed)
        warm_log = without_items(events, cold)
        warm_split = leave_one_out(warm_log)
        cases = cold_cases(events, cold)
        row["cold"] = {"held_out_items": len(cold), "cases": len(cases), "warm_split": warm_split.summary()}
        log.info("seed %d: cold items (%d held out, %d cases), multi-view", seed, len(cold), len(cases))
        mv = train(warm_split, multi, tc, item_content=content)
        grown, grown_vocab = add_items(mv.model, mv.vocab, content)
        row["cold"]["id_only"] = id_only_cold_metrics(warm_split, cases)
        row["cold"]["popularity"] = popularity_metrics(events, cases)
        row["cold"]["popularity_as_of"] = popularity_as_of_metrics(events, cases)
        row["cold"]["multi_view"] = evaluate_model(grown, grown_vocab, cases, ks=MULTI_VIEW_KS)
        row["cold"]["warm_test"] = {"multi_view": mv.test}
        # Whether the new items crowd trained ones out (see new_item_top_share): the warm split's
        # test cases once more, now with the held-out items in the catalogue.
        row["cold"]["warm_test_after_adding"] = evaluate_model(grown, grown_vocab, warm_split.test, ks=MULTI_VIEW_KS)
        share = sum(i in cold for i in events.item_ids) / max(len(events.item_ids), 1)
        placed = cold_rows_with_share(grown, grown_vocab, cases, warm_split.test, mv.model.config.n_items, share)
        row["cold"]["held_out_interaction_share"] = share
        row["cold"]["new_item_top10_share"] = placed["new_item_top10_share"]
        row["cold"]["interaction_share_offset"] = placed["interaction_share_offset"]
        row["cold"]["multi_view_at_interaction_share"] = placed["at_interaction_share"]
        row["cold"]["placement"] = placed["placement"]
        row["cold"]["multi_view_run"] = {k: v for k, v in _run_row(mv).items() if k != "test"}
        log.info("seed %d: %s", seed, {k: row["cold"][k].get("recall@10") for k in ("id_only", "popularity", "multi_view")})
        runs.append(row)
        if partial_out is not None:
            partial_out.parent.mkdir(parents=True, exist_ok=True)
            partial_out.write_text(json.dumps({"runs": runs, "tables": multi_view_tables(runs)}, indent=2, sort_keys=True) + "\n")
    return {
        "data": str(data_path),
        "model_config": multi.to_dict(),
        "train_config": asdict(train_config),
        "id_dropout": id_dropout,
        "cold_frac": cold_frac,
        "cold_only": cold_only,
        "runs": runs,
        "tables": multi_view_tables(runs),
    }


# What must agree for the seeds of several multi-view results to be one table.
_MERGE_KEYS = ("data", "model_config", "id_dropout", "cold_frac", "cold_only")


def merge_multi_view(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One multi-view result from several over different seeds (for example one process per seed).

    The settings must agree (:data:`_MERGE_KEYS` and the training budget;
    only the seed and thread count may differ), and no seed may repeat:
    otherwise the mean and std would mix protocols.
    """
    if not results:
        raise StreamrecError("nothing to merge")
    first = results[0]
    for other in results[1:]:
        differing = [k for k in _MERGE_KEYS if other.get(k) != first.get(k)]
        if _budget(other) != _budget(first):
            differing.append("train_config")
        if differing:
            raise StreamrecError(f"multi-view results differ in {differing}: they are not one protocol")
    runs = [run for result in results for run in result["runs"]]
    seeds = [run["seed"] for run in runs]
    if len(set(seeds)) != len(seeds):
        raise StreamrecError(f"a seed appears twice among the results: {sorted(seeds)}")
    runs.sort(key=lambda run: run["seed"])
    return {**{k: v for k, v in first.items() if k not in ("runs", "tables", "plot")},
            "runs": runs, "tables": multi_view_tables(runs)}


def _budget(result: dict[str, Any]) -> dict[str, Any]:
    """A result's training settings apart from what may differ between merged seeds (seed, threads)."""
    return {k: v for k, v in result.get("train_config", {}).items() if k not in ("seed", "threads")}


def multi_view_tables(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds: the leave-one-out table (empty for cold-only runs) and the cold-item table."""
    loo = {name: mean_std([r[key]["test"] for r in runs]) for name, key in
           (("id-only", "loo_id_only"), ("multi-view", "loo_multi_view")) if all(key in r for r in runs)}
    cold = {name: mean_std([r["cold"][key] for r in runs]) for name, key in
            (("id-only", "id_only"), ("popularity", "popularity"), (AS_OF, "popularity_as_of"), ("multi-view", "multi_view"),
             (AT_SHARE, "multi_view_at_interaction_share")) if all(key in r["cold"] for r in runs)}
    pop = cold["popularity"]["recall@10"]["mean"]
    mv = cold["multi-view"]["recall@10"]["mean"]
    at_share = cold[AT_SHARE]["recall@10"]["mean"] if AT_SHARE in cold else None
    crowding = {key: mean_std([{key: r["cold"][key]} for r in runs])[key]
                for key in ("new_item_top10_share", "held_out_interaction_share") if all(key in r["cold"] for r in runs)}
    if all("warm_test_after_adding" in r["cold"] for r in runs):
        crowding["warm_test_ndcg10_before_adding"] = mean_std([r["cold"]["warm_test"]["multi_view"] for r in runs])["ndcg@10"]
        crowding["warm_test_ndcg10_after_adding"] = mean_std([r["cold"]["warm_test_after_adding"] for r in runs])["ndcg@10"]
    return {
        "seeds": len(runs),
        "placement": placement_summary(runs),
        "new_item_crowding": crowding,
        "leave_one_out": loo,
        "cold_items": cold,
        "cold_hr10_vs_popularity": (mv / pop) if pop > 0 else None,
        "cold_hr10_at_interaction_share_vs_popularity": (at_share / pop) if pop > 0 and at_share is not None else None,
        "loo_ndcg10_diff": (loo["multi-view"]["ndcg@10"]["mean"] - loo["id-only"]["ndcg@10"]["mean"]) if loo else None,
    }


def placement_summary(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per seed: the placement curve as multiples of popularity, and the first point at 3x popularity.

    ``at_3x``: the smallest top-10 share of new items at which the cold HR@10
    reaches 3x popularity's, with the warm test HR@10 there and at the
    interaction share (what reaching it costs the other users); None when no
    point of the curve reaches it.
    """
    out = []
    for run in runs:
        cold = run["cold"]
        if "placement" not in cold:
            continue
        pop = cold["popularity"]["recall@10"]
        points = sorted(cold["placement"], key=lambda point: point["offset"])
        curve = [{**point, "cold_hr10_vs_popularity": point["cold_hr10"] / pop if pop > 0 else None} for point in points]
        base = min(points, key=lambda point: abs(point["offset"] - cold["interaction_share_offset"]))
        reached = next((point for point in curve if pop > 0 and point["cold_hr10"] >= 3 * pop), None)
        out.append({
            "seed": run["seed"], "interaction_share": cold["held_out_interaction_share"], "curve": curve,
            "at_3x": None if reached is None else {
                "new_item_top10_share": reached["new_item_top10_share"], "warm_hr10": reached["warm_hr10"],
                "warm_hr10_at_interaction_share": base["warm_hr10"]},
        })
    return out


def format_multi_view(tables: dict[str, Any]) -> str:
    """Both tables as text (mean ± std over seeds)."""
    def cell(stats: dict[str, dict[str, float]], key: str) -> str:
        s = stats.get(key, {})
        return f"{s.get('mean', 0.0):.4f} ± {s.get('std', 0.0):.4f}"

    w = max([14] + [len(name) + 2 for name in (*tables["leave_one_out"], *tables["cold_items"])])
    lines = [f"leave-one-out, full ranking ({tables['seeds']} seeds)",
             f"{'model':<{w}}{'NDCG@10':>20}{'HR@10':>20}{'NDCG@20':>20}{'HR@20':>20}"]
    for name, stats in tables["leave_one_out"].items():
        lines.append(f"{name:<{w}}" + "".join(f"{cell(stats, k):>20}" for k in ("ndcg@10", "recall@10", "ndcg@20", "recall@20")))
    lines += ["", "cold items (held out of training; cases whose next item is held out, ranked against all items)",
              f"{'model':<{w}}{'HR@10':>20}{'NDCG@10':>20}{'HR@20':>20}"]
    for name, stats in tables["cold_items"].items():
        lines.append(f"{name:<{w}}" + "".join(f"{cell(stats, k):>20}" for k in ("recall@10", "ndcg@10", "recall@20")))
    ratio = tables.get("cold_hr10_vs_popularity")
    lines.append(f"cold HR@10, multi-view / popularity: {ratio:.2f}x" if ratio else "cold HR@10 vs popularity: n/a")
    at_share = tables.get("cold_hr10_at_interaction_share_vs_popularity")
    if at_share is not None:
        lines.append(f"cold HR@10, multi-view with new items at their interaction share / popularity: {at_share:.2f}x")
    crowding = tables.get("new_item_crowding") or {}
    if "new_item_top10_share" in crowding:
        lines.append(f"new items' share of top-10 slots on warm test cases: {crowding['new_item_top10_share']['mean']:.3f}"
                     f" (their share of interactions: {crowding['held_out_interaction_share']['mean']:.3f})")
    if "warm_test_ndcg10_after_adding" in crowding:
        lines.append(f"warm test NDCG@10 before / after adding the new items: {crowding['warm_test_ndcg10_before_adding']['mean']:.4f}"
                     f" / {crowding['warm_test_ndcg10_after_adding']['mean']:.4f}")
    for seed in tables.get("placement", []):
        at = seed["at_3x"]
        lines.append(f"seed {seed['seed']}: cold HR@10 at 3x popularity " + (
            f"once new items take {at['new_item_top10_share']:.2f} of the top-10 slots (their interactions:"
            f" {seed['interaction_share']:.2f}); warm HR@10 there {at['warm_hr10']:.4f}, at their share"
            f" {at['warm_hr10_at_interaction_share']:.4f}" if at else "not reached on the placement curve"))
    return "\n".join(lines)


def plot_multi_view(tables: dict[str, Any], path: Path) -> Path:
    """Two bar charts with std error bars: leave-one-out NDCG@10 and cold-item HR@10."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    placement = tables.get("placement") or []
    fig, axes = plt.subplots(1, 3 if placement else 2, figsize=(18 if placement else 12, 4.5))
    left, right = axes[0], axes[1]
    for ax, table, metric, title in ((left, tables["leave_one_out"], "ndcg@10", "leave-one-out NDCG@10"),
                                     (right, tables["cold_items"], "recall@10", "cold items HR@10")):
        names = list(table)
        if not names:  # a --cold-only run trains no leave-one-out models
            ax.text(0.5, 0.5, "not run (--cold-only)", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
        means = [table[n][metric]["mean"] for n in names]
        stds = [table[n][metric]["std"] for n in names]
        ax.bar(range(len(names)), means, yerr=stds, capsize=4, color=[MODEL_COLOURS.get(n, "#4c72b0") for n in names])
        ax.set_xticks(range(len(names)), [n.replace(", ", ",\n") for n in names], fontsize=8)
        ax.set_title(f"{title} (mean ± std, {tables['seeds']} seeds)")
        for x, m in enumerate(means):
            ax.annotate(f"{m:.4f}", (x, m), ha="center", va="bottom", fontsize=8)
    if placement:
        plot_placement(axes[2], placement)
    return save_figure(fig, path)


def plot_placement(ax: Any, placement: Sequence[dict[str, Any]]) -> None:
    """Cold HR@10 (x popularity, solid) and warm HR@10 (dotted, right axis) against new items' top-10 share."""
    warm_ax = ax.twinx()
    for n, seed in enumerate(placement):
        colour = f"C{n}"
        shares = [point["new_item_top10_share"] for point in seed["curve"]]
        ax.plot(shares, [point["cold_hr10_vs_popularity"] for point in seed["curve"]], "o-", color=colour,
                label=f"seed {seed['seed']}: cold HR@10 / popularity")
        warm_ax.plot(shares, [point["warm_hr10"] for point in seed["curve"]], "s:", color=colour,
                     label=f"seed {seed['seed']}: warm HR@10")
        ax.axvline(seed["interaction_share"], color=colour, linewidth=0.6, alpha=0.5)
    ax.axhline(3.0, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlabel("new items' share of warm test users' top-10 slots (thin: their interaction share)")
    ax.set_ylabel("cold HR@10 / popularity's")
    warm_ax.set_ylabel("warm test HR@10")
    ax.set_title("what lifting every new item buys (cold) and costs (warm)")
    ax.legend(fontsize=7, loc="upper left")
    warm_ax.legend(fontsize=7, loc="lower right")
