"""``streamrec bench``: a plain click group; each benchmark module adds its sub-command.

Other rooms attach theirs with ``bench.add_command(...)`` (e2e, latency, state).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click

from streamrec.config import Settings, load_settings

log = logging.getLogger(__name__)


@click.group("bench")
def bench() -> None:
    """Benchmarks: JSON results (and plots) for quality, encoder speed and, from other rooms, e2e/latency/state."""


def _settings(ctx: click.Context) -> Settings:
    obj = ctx.find_object(Settings)
    return obj if obj is not None else load_settings()


def _write(result: dict[str, Any], out: Path | None) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        click.echo(f"wrote {out}", err=True)


@bench.command("encoder")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="Artifact to benchmark. [default: an untrained ML-100k-sized model]")
@click.option("--batch", "batches", multiple=True, type=int, default=(1, 64, 256), show_default=True)
@click.option("--seq-len", default=50, show_default=True)
@click.option("-k", "k", default=10, show_default=True)
@click.option("--threads", default=2, show_default=True, help="Threads for both torch and ONNX Runtime.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True)
@click.option("--min-seconds", default=2.0, show_default=True, help="Minimum timed seconds per case and backend.")
@click.option("--spin/--no-spin", default=True, show_default=True,
              help="ORT threads busy-wait between ops, as torch's OpenMP threads do by default.")
@click.option("--fp16", is_flag=True, help="Serve the fp16 graph (CUDA only).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/bench/encoder.json"), show_default=True)
def encoder(model_dir: Path | None, batches: tuple[int, ...], seq_len: int, k: int, threads: int, device: str,
            min_seconds: float, spin: bool, fp16: bool, out: Path) -> None:
    """ONNX Runtime vs PyTorch eager, same inputs: median latency, throughput, ratio (target ORT >= 2x)."""
    from streamrec.bench.encoder import format_table, run_encoder_bench

    result = run_encoder_bench(model_dir, batches=batches, seq_len=seq_len, k=k, threads=threads,
                               device=device, min_seconds=min_seconds, spin=spin, fp16=fp16)
    click.echo(format_table(result))
    _write(result, out)


@bench.command("quality")
@click.option("--data", default="ml-100k", show_default=True, help="Interaction log path or 'ml-100k'.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated training seeds.")
@click.option("--epochs", default=200, show_default=True)
@click.option("--patience", default=20, show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--with-recbole", is_flag=True, help="Also run RecBole SASRec on the same split (own venv; slow on CPU).")
@click.option("--recbole-only", is_flag=True, help="Skip our model (e.g. to run RecBole alone on a GPU machine).")
@click.option("--recbole-epochs", default=300, show_default=True, help="Epoch cap for RecBole (it early-stops itself).")
@click.option("--recbole-device", default="cpu", show_default=True, help="cpu or cuda for RecBole.")
@click.option("--recbole-venv", type=click.Path(path_type=Path), default=None,
              help="RecBole virtualenv. [default: <state dir>/recbole-venv]")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/bench/quality.json"), show_default=True)
@click.pass_context
def quality(ctx: click.Context, data: str, seeds: str, epochs: int, patience: int, threads: int, with_recbole: bool,
            recbole_only: bool, recbole_epochs: int, recbole_device: str, recbole_venv: Path | None, out: Path) -> None:
    """MovieLens-100k leave-one-out, full ranking, seen excluded: ours over seeds (+ RecBole SASRec)."""
    from streamrec.bench.quality import compare, format_table, run_ours, run_recbole
    from streamrec.models.config import EncoderConfig
    from streamrec.models.data import resolve_dataset
    from streamrec.models.train import TrainConfig

    settings = _settings(ctx)
    path = resolve_dataset(data, settings.state_dir / "data")
    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    ours = None
    if not recbole_only:
        ours = run_ours(path, seed_list, EncoderConfig(n_items=0, event_types=tuple(settings.event_type_weights)),
                        TrainConfig(epochs=epochs, patience=patience, threads=threads, progress=False))
    recbole = None
    if with_recbole or recbole_only:
        recbole = run_recbole(path, venv=recbole_venv or settings.state_dir / "recbole-venv",
                              epochs=recbole_epochs, device=recbole_device,
                              log_path=out.with_suffix(".recbole.log"))
    result = {"benchmark": "quality", "data": str(path), "ours": ours, "recbole": recbole, "comparison": compare(ours, recbole)}
    click.echo(format_table(result["comparison"]["rows"]))
    _write(result, out)
