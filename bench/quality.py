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
from typing import Any, Sequence

from streamrec.errors import StreamrecError
from streamrec.models.config import EncoderConfig
from streamrec.models.data import load_events
from streamrec.models.metrics import mean_std
from streamrec.models.splits import leave_one_out
from streamrec.models.train import TrainConfig, event_types_for, train

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
