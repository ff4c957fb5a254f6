"""``streamrec train`` and ``streamrec eval``: a model artifact written, and scored as it serves.

Registered by the root CLI (core/cli.py); each takes its
:class:`streamrec.config.Settings` from the root group. The root CLI imports
this module at every start, so what needs torch (3-6.5 s on a 2-core box) or
ONNX Runtime is imported inside the command that runs it.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from streamrec.config import Settings
from streamrec.models.config import LOSS_KINDS, EncoderConfig, LossKind
from streamrec.models.cpu import prepare_cpu_training
from streamrec.models.data import EventLog, load_events, resolve_dataset
from streamrec.models.splits import Split, leave_one_out, temporal_split
from streamrec.onnx.artifact import latest_artifact, load_artifact
from streamrec.onnx.registry import resolve_artifact_dir

if TYPE_CHECKING:
    from streamrec.models.content import ItemContent

log = logging.getLogger(__name__)

# How `train --items SOURCE` reads item content. Item records are the stream room's contract,
# which this room may not import: the root CLI installs the reader (core/cli.py).
ItemContentReader = Callable[[Settings, str], "ItemContent"]
_item_content_reader: list[ItemContentReader] = []


def use_item_content_reader(reader: ItemContentReader) -> None:
    """Install how ``train --items SOURCE`` turns SOURCE into item content (called by the root CLI)."""
    _item_content_reader[:] = [reader]


DATA_HELP = "Interaction log path, or 'ml-100k' for MovieLens-100k (fetched into the cache once)."
FORMATS = ["auto", "jsonl", "csv", "parquet", "movielens", "inter"]


def parse_context_keys(text: str) -> tuple[str, ...]:
    """``device,channel`` -> ``("device", "channel")``; empty = the context view off."""
    keys = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    return keys


def _split(events: EventLog, kind: str) -> Split:
    return leave_one_out(events) if kind == "loo" else temporal_split(events)


def _emit(result: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(result, indent=2, sort_keys=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        log.info("wrote %s", out)
    click.echo(text)


@click.command("train")
@click.option("--data", default="ml-100k", show_default=True, help=DATA_HELP)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True)
@click.option("--split", "split_kind", type=click.Choice(["loo", "temporal"]), default="loo", show_default=True,
              help="leave-one-out per user, or a global temporal cut (80/10/10 by time).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Artifact root; the model is written as the next version inside it. [default: settings models path]")
@click.option("--epochs", default=200, show_default=True, help="Maximum epochs (early stopping usually ends sooner).")
@click.option("--patience", default=20, show_default=True, help="Epochs without a better validation NDCG@10 before stopping.")
@click.option("--batch-size", default=128, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--weight-decay", default=0.0, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=2, show_default=True, help="torch CPU threads.")
@click.option("--backbone", default="gpt2", show_default=True, help="transformers model type (gpt2, llama, ...).")
@click.option("--hidden", default=64, show_default=True)
@click.option("--layers", default=2, show_default=True)
@click.option("--heads", default=2, show_default=True)
@click.option("--max-len", default=50, show_default=True)
@click.option("--dropout", default=0.2, show_default=True)
@click.option("--emb-dropout", default=0.2, show_default=True)
@click.option("--loss", type=click.Choice(LOSS_KINDS), default="full", show_default=True)
@click.option("--num-negatives", default=256, show_default=True, help="Negatives per batch for --loss sampled.")
@click.option("--event-types/--no-event-types", default=True, show_default=True)
@click.option("--time-gaps/--no-time-gaps", default=True, show_default=True)
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Also save the training-curve PNG here.")
@click.option("--metrics-out", type=click.Path(path_type=Path), default=None, help="Write the summary JSON here too.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--items", "items_source", default=None,
              help="Train multi-view (id + text + categories) on these item records: 'topic' (the items topic), "
                   "'ml-100k', a RecBole .item, JSONL or CSV file (needs streamrec[content]).")
@click.option("--id-dropout", default=0.5, show_default=True, help="With --items: share of item ids dropped per step.")
@click.option("--context-keys", default="", show_default=False,
              help="Comma-separated keys of the events' context object to learn as categorical views "
                   "(e.g. device,channel); off when empty. Values unseen in training are OOV at serving.")
@click.pass_obj
def train(settings: Settings, data: str, fmt: str, split_kind: str, out: Path | None, epochs: int, patience: int,
          batch_size: int, lr: float, weight_decay: float, seed: int, threads: int, backbone: str, hidden: int,
          layers: int, heads: int, max_len: int, dropout: float, emb_dropout: float, loss: LossKind, num_negatives: int,
          event_types: bool, time_gaps: bool, plot: Path | None, metrics_out: Path | None, progress: bool,
          items_source: str | None, id_dropout: float, context_keys: str) -> None:
    """Train the encoder offline and write a verified ONNX model artifact (next version)."""
    log.info("CPU settings: %s", prepare_cpu_training())  # before torch is imported: its OpenMP reads them once
    from streamrec.models.train import TrainConfig, event_types_for, plot_curves  # torch
    from streamrec.models.train import train as run_train
    from streamrec.onnx.writer import write_artifact  # torch

    path = resolve_dataset(data, settings.state_dir / "data")
    split = _split(load_events(path, fmt), split_kind)
    config = EncoderConfig(
        n_items=0, event_types=tuple(settings.event_type_weights), max_len=max_len, hidden=hidden, layers=layers,
        heads=heads, dropout=dropout, emb_dropout=emb_dropout, backbone=backbone, loss=loss,
        num_negatives=num_negatives, use_event_types=event_types, use_time_gaps=time_gaps,
        context_keys=parse_context_keys(context_keys),
    )
    config = replace(config, event_types=event_types_for(split.train.values(), config.event_types))
    content = None
    if items_source is not None:
        from streamrec.models.content import content_config  # torch, already imported above

        if not _item_content_reader:
            raise click.UsageError("--items needs the streamrec CLI (the item reader is installed by its root)")
        content = _item_content_reader[0](settings, items_source)
        config = content_config(config, content, id_dropout=id_dropout)
    tcfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, patience=patience,
                       seed=seed, threads=threads, progress=progress)
    result = run_train(split, config, tcfg, item_content=content)
    root = out or settings.models_path
    with tempfile.TemporaryDirectory(prefix="streamrec-train-") as tmp:
        curve = plot_curves(result.history, Path(tmp) / "training_curves.png")
        real = [c.history for c in split.valid[:256]]
        artifact = write_artifact(result.model, result.vocab, root, metrics={**result.metrics(), "data": str(path),
                                  "split": split.summary()}, real_sequences=real,
                                  extra_files={"training_curves.png": curve})
        if plot is not None:
            plot.parent.mkdir(parents=True, exist_ok=True)
            plot.write_bytes(curve.read_bytes())
    summary = {"artifact": str(artifact), "multi_view": content is not None,
               "context_keys": list(result.model.config.context_keys), "best_epoch": result.best_epoch, "epochs_run": len(result.history),
               "train_seconds": round(result.train_seconds, 1), "valid": result.best_valid, "test": result.test}
    _emit(summary, metrics_out)


@click.command("eval")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="Artifact directory. [default: newest valid version under the settings models path]")
@click.option("--data", default="ml-100k", show_default=True, help=DATA_HELP)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True)
@click.option("--split", "split_kind", type=click.Choice(["loo", "temporal"]), default="loo", show_default=True)
@click.option("--on", "subset", type=click.Choice(["test", "valid"]), default="test", show_default=True)
@click.option("--backend", type=click.Choice(["onnx", "torch"]), default="onnx", show_default=True,
              help="onnx scores with the exported graph exactly as it serves; torch uses weights.pt.")
@click.option("--threads", default=2, show_default=True)
@click.option("--include-seen", is_flag=True, help="Do not exclude items already in the user's history.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the metrics JSON here.")
@click.pass_obj
def eval_(settings: Settings, model_dir: Path | None, data: str, fmt: str, split_kind: str, subset: str,
          backend: str, threads: int, include_seen: bool, out: Path | None) -> None:
    """Full-ranking evaluation (Recall@10/20, NDCG@10/20, MRR) of a model artifact, as JSON."""
    from streamrec.models.evaluate import evaluate_model, evaluate_session  # torch

    artifact = load_artifact(resolve_artifact_dir(model_dir)) if model_dir else latest_artifact(settings.models_path)
    path = resolve_dataset(data, settings.state_dir / "data")
    split = _split(load_events(path, fmt), split_kind)
    cases = split.test if subset == "test" else split.valid
    if backend == "onnx":
        from streamrec.onnx.runtime import ServedModel  # ONNX Runtime

        session = ServedModel.load(artifact.path, device="cpu", threads=threads)
        metrics = evaluate_session(session, cases, exclude_history=not include_seen)
    else:
        import torch

        from streamrec.models.encoder import SequenceEncoder  # torch, transformers

        torch.set_num_threads(threads)
        model = SequenceEncoder(artifact.config)
        model.load_state_dict(torch.load(artifact.path / "weights.pt", weights_only=True))
        metrics = evaluate_model(model.eval(), artifact.vocab, cases, exclude_history=not include_seen)
    _emit({"artifact": str(artifact.path), "version": artifact.version, "data": str(path), "split": split_kind,
           "subset": subset, "backend": backend, "exclude_history": not include_seen, "metrics": metrics}, out)


# The verb is `eval`; the module-level alias lets the root CLI import it by that name.
eval = eval_  # noqa: A001
