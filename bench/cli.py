"""``streamrec bench``: a plain click group; each benchmark module adds its sub-command.

Other rooms attach theirs with ``bench.add_command(...)`` (e2e, latency, state).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click

from streamrec.bench import artifacts, load, report
from streamrec.models.cpu import prepare_cpu_training
from streamrec.bench import scale as scale_mod
from streamrec.config import Settings
from streamrec.errors import StreamrecError
from streamrec.models.config import EncoderConfig
from streamrec.models.data import fetch_ml100k_items, resolve_dataset

log = logging.getLogger(__name__)


@click.group("bench")
def bench() -> None:
    """Benchmarks: JSON results (and plots) for quality, encoder speed and, from other rooms, e2e/latency/state."""


def _write(result: dict[str, Any], out: Path | None) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        click.echo(f"wrote {out}", err=True)


@bench.command("encoder")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="Artifact (a vNNNNNN directory, or a model directory: its live version). [default: an untrained ML-100k-sized model]")
@click.option("--batch", "batches", multiple=True, type=int, default=(1, 64, 256), show_default=True)
@click.option("--seq-len", default=50, show_default=True)
@click.option("-k", "k", default=10, show_default=True)
@click.option("--threads", default=2, show_default=True, help="Threads for both torch and ONNX Runtime.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True)
@click.option("--min-seconds", default=2.0, show_default=True, help="Minimum timed seconds per case and backend.")
@click.option("--fp16", is_flag=True, help="Serve the fp16 graph (CUDA only).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/bench/encoder.json"), show_default=True)
def encoder(model_dir: Path | None, batches: tuple[int, ...], seq_len: int, k: int, threads: int, device: str,
            min_seconds: float, fp16: bool, out: Path) -> None:
    """ONNX Runtime vs PyTorch eager, same inputs: median latency, throughput, ratio (target ORT >= 2x)."""
    from streamrec.bench.encoder import format_table, plot, run_encoder_bench  # torch

    result = run_encoder_bench(model_dir, batches=batches, seq_len=seq_len, k=k, threads=threads,
                               device=device, min_seconds=min_seconds, fp16=fp16)
    click.echo(format_table(result))
    if result["rows"]:
        result["plot"] = str(plot(result, out.with_suffix(".png")))
    _write(result, out)


@bench.command("explain")
@click.option("--epochs", default=10, show_default=True, help="Training epochs of each planted-pattern model.")
@click.option("-k", "k", default=10, show_default=True, help="Recommended items explained per user.")
@click.option("--users", default=300, show_default=True, help="Users of the faithfulness measurement.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/bench/explain.json"), show_default=True)
def explain_bench(epochs: int, k: int, users: int, seed: int, out: Path) -> None:
    """Explanations: planted-pattern attribution rate and faithfulness against gradient x input and attention."""
    import tempfile

    from streamrec.bench.explain import format_report, run_explain_bench  # torch

    with tempfile.TemporaryDirectory(prefix="bench-explain-") as work:
        result = run_explain_bench(Path(work), epochs=epochs, k=k, users=users, seed=seed)
    click.echo(format_report(result))
    _write(result, out)


@bench.command("context")
@click.option("--seed", default=0, show_default=True, help="Seed of the synthetic context world and of training.")
@click.option("--epochs", default=40, show_default=True)
@click.option("--patience", default=8, show_default=True)
@click.option("--threads", default=1, show_default=True, help="Serving threads of the cost measurement.")
@click.option("--repeats", default=100, show_default=True, help="Interleaved recommend() calls per model.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/bench/context.json"), show_default=True)
def context_bench(seed: int, epochs: int, patience: int, threads: int, repeats: int, out: Path) -> None:
    """The context view: NDCG@10 with vs without it on a stream whose next item depends on the device, and its serving cost."""
    import tempfile

    from streamrec.bench.context import format_table, run_context_bench  # torch

    with tempfile.TemporaryDirectory(prefix="bench-context-") as work:
        result = run_context_bench(Path(work), seed=seed, epochs=epochs, patience=patience, threads=threads,
                                   repeats=repeats)
    click.echo(format_table(result))
    _write(result, out)


@bench.command("new-items")
@click.option("--epochs", default=20, show_default=True, help="Training epochs of the multi-view model.")
@click.option("--seed", default=21, show_default=True, help="Seed of the synthetic stream.")
@click.option("--rate", default=150.0, show_default=True, help="Events per second after the items appear.")
@click.option("--keep", is_flag=True, help="Keep the run's topics and keyspace.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/bench/new_items.json"), show_default=True)
@click.pass_obj
def new_items(settings: Settings, epochs: int, seed: int, rate: float, keep: bool, out: Path) -> None:
    """Items that appear mid-stream: seconds from the item record to a recommendation containing it (needs streamrec[content])."""
    import tempfile

    log.info("CPU settings: %s", prepare_cpu_training())  # before torch is imported
    from streamrec.bench.new_items import run_new_items_bench  # torch, transformers

    with tempfile.TemporaryDirectory(prefix="bench-new-items-") as work:
        result = run_new_items_bench(settings, Path(work), epochs=epochs, seed=seed, per_second=rate, keep=keep)
    for key in ("record_to_vector_s", "record_to_first_recommendation_s", "hot_cluster_share_offered_new",
                "hot_cluster_new_items_per_recommendation",
                "other_share_offered_new", "model_versions", "dead_letters"):
        click.echo(f"{key}: {result[key]}")
    _write(result, out)


@bench.command("new-items-cost")
@click.option("--batch", default=64, show_default=True, help="Users per recommend() call.")
@click.option("--repeats", default=60, show_default=True)
@click.option("--threads", default=1, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/bench/new_items_cost.json"), show_default=True)
@click.pass_obj
def new_items_cost(settings: Settings, batch: int, repeats: int, threads: int, out: Path) -> None:
    """Per-event serving cost of a multi-view version with 0..1000 new items merged, against the plain graph call."""
    import tempfile

    from streamrec.bench.new_items import serving_cost  # torch, transformers

    with tempfile.TemporaryDirectory(prefix="bench-new-items-cost-") as work:
        result = serving_cost(Path(work), settings.state_dir / "text-encoder", batch=batch, repeats=repeats,
                              threads=threads)
    for row in result["rows"]:
        click.echo(f"{row['new_items']!s:>32}: {row['us_per_event']:8.1f} us/event  x{row['ratio']:.3f}"
                   f"  (new items' own part: {row['merge_us_per_event']:.2f} us/event)")
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
@click.option("--ours-from", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="With --recbole-only: put our side from an earlier quality JSON beside RecBole's.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/bench/quality.json"), show_default=True)
@click.option("--multi-view", is_flag=True,
              help="Items described by their content: id-only vs multi-view (leave-one-out) and the cold-item table"
                   " (needs streamrec[content]; writes <out stem>_multiview.json and .png).")
@click.option("--items", "items_spec", default="ml-100k", show_default=True,
              help="With --multi-view: item records (RecBole .item path, or 'ml-100k' for its packaged ml-100k.item).")
@click.option("--id-dropout", default=0.5, show_default=True, help="With --multi-view: share of item ids dropped per training step.")
@click.option("--cold-frac", default=0.1, show_default=True, help="With --multi-view: share of items held out of training.")
@click.option("--cold-only", is_flag=True,
              help="With --multi-view: only the cold-item protocol (skips both leave-one-out trainings).")
@click.option("--merge", "merge_from", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --multi-view: no training; one table from earlier multi-view JSONs over different seeds"
                   " (e.g. one process per seed). Repeat for each file.")
@click.pass_obj
def quality(settings: Settings, data: str, seeds: str, epochs: int, patience: int, threads: int, with_recbole: bool,
            recbole_only: bool, recbole_epochs: int, recbole_device: str, recbole_venv: Path | None,
            ours_from: Path | None, out: Path, multi_view: bool, items_spec: str, id_dropout: float,
            cold_frac: float, cold_only: bool, merge_from: tuple[Path, ...]) -> None:
    """MovieLens-100k leave-one-out, full ranking, seen excluded: ours over seeds (+ RecBole SASRec, or --multi-view)."""
    cpu = prepare_cpu_training()  # before torch is imported: its OpenMP reads the environment once
    log.info("CPU settings: %s", cpu)
    from streamrec.bench.quality import compare, format_table, run_ours, run_recbole  # torch
    from streamrec.models.train import TrainConfig  # torch

    if merge_from:
        if not multi_view:
            raise click.UsageError("--merge goes with --multi-view")
        _merge_multi_view(merge_from, out)
        return
    path = resolve_dataset(data, settings.state_dir / "data")
    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    if multi_view:
        _quality_multi_view(settings, path, seed_list, items_spec, out,
                            TrainConfig(epochs=epochs, patience=patience, threads=threads, progress=False),
                            id_dropout=id_dropout, cold_frac=cold_frac, cold_only=cold_only, cpu=cpu)
        return
    if cold_only:
        raise click.UsageError("--cold-only goes with --multi-view")
    ours = None
    if ours_from is not None:
        if not recbole_only:
            raise click.UsageError("--ours-from goes with --recbole-only")
        ours = json.loads(ours_from.read_text()).get("ours")
        if not ours:
            raise click.UsageError(f"{ours_from} has no 'ours' section (a quality run without --recbole-only writes one)")
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


def _multi_view_target(out: Path) -> Path:
    """Where a multi-view result goes: ``<out stem>_multiview.json`` (its plot beside it, ``.png``)."""
    return out.with_name(out.stem + "_multiview.json")


def _report_multi_view(result: dict[str, Any], target: Path) -> None:
    """Plot, print and write a multi-view result (a run's or a merge's)."""
    from streamrec.bench.quality import format_multi_view, plot_multi_view  # torch

    result["plot"] = str(plot_multi_view(result["tables"], target.with_suffix(".png")))
    click.echo(format_multi_view(result["tables"]))
    _write(result, target)


def _quality_multi_view(settings: Settings, data_path: Path, seeds: list[int], items_spec: str, out: Path,
                        train_config: Any, *, id_dropout: float, cold_frac: float, cold_only: bool,
                        cpu: dict[str, Any]) -> None:
    from streamrec.bench.quality import ml100k_item_content, run_multi_view  # torch

    items_path = (fetch_ml100k_items(settings.state_dir / "data") if items_spec.lower() in {"ml-100k", "ml100k"}
                  else Path(items_spec))
    content, summary = ml100k_item_content(items_path, settings.state_dir / "text-encoder", progress=True)
    target = _multi_view_target(out)
    result = run_multi_view(data_path, content, seeds,
                            EncoderConfig(n_items=0, event_types=tuple(settings.event_type_weights)), train_config,
                            id_dropout=id_dropout, cold_frac=cold_frac, cold_only=cold_only,
                            partial_out=target.with_suffix(".partial.json"))
    _report_multi_view({"benchmark": "quality-multi-view", "items": {"path": str(items_path), **summary}, "cpu": cpu,
                        **result}, target)


def _merge_multi_view(paths: tuple[Path, ...], out: Path) -> None:
    from streamrec.bench.quality import merge_multi_view  # torch

    try:
        result = merge_multi_view([json.loads(p.read_text()) for p in paths])
    except StreamrecError as exc:
        raise click.ClickException(str(exc)) from exc
    _report_multi_view({**result, "merged_from": [str(p) for p in paths]}, _multi_view_target(out))


# --------------------------------------------------------------------------- #
# Streaming benchmarks (e2e, latency, scale, state, all): the machinery is in bench/{isolation,load,observe,processes,artifacts,phases,stats,report,profiling}.py.
# --------------------------------------------------------------------------- #
def _print_and_write(result: dict[str, Any], table: str, out: Path) -> None:
    click.echo(table)
    report.write_json(result, out)
    click.echo(f"wrote {out}", err=True)


_model_option = click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                             default=None, help="Registry or artifact directory to serve. [default: train one quickly]")


@bench.command("e2e")
@click.option("--events", default=1_000_000, show_default=True, help="Backlog size (events pre-produced once).")
@click.option("--users", default=200_000, show_default=True)
@click.option("--items", default=20_000, show_default=True)
@click.option("--train-events", default=30_000, show_default=True, help="Events (before the backlog) to train the model on.")
@click.option("--epochs", default=2, show_default=True)
@_model_option
@click.option("--no-model", is_flag=True, help="Serve the popularity fallback (no encoder).")
@click.option("--partitions", default=4, show_default=True)
@click.option("--repeats", default=1, show_default=True, help="Passthrough/worker pairs; medians are reported.")
@click.option("--latency-rate", default=1000.0, show_default=True, help="Paced phase after each backlog, events/s.")
@click.option("--latency-seconds", default=10.0, show_default=True, help="Paced phase length (0 = none).")
@click.option("--profile-seconds", default=0.0, show_default=True, help="py-spy the worker for this long (0 = no profile).")
@click.option("--attribute", is_flag=True,
              help="Also drain the backlog with the worker's windows in process memory: what Cassandra costs.")
@click.option("--seed", default=0, show_default=True)
@click.option("--timeout", "timeout_s", default=3600.0, show_default=True, help="Per backlog phase.")
@click.option("--keep", is_flag=True, help="Keep the run's topics and keyspaces.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/bench/e2e.json"), show_default=True)
@click.pass_obj
def e2e(settings: Settings, events: int, users: int, items: int, train_events: int, epochs: int, model_dir: Path | None,
        no_model: bool, partitions: int, repeats: int, latency_rate: float, latency_seconds: float,
        profile_seconds: float, attribute: bool, seed: int, timeout_s: float, keep: bool, out: Path) -> None:
    """Sustained events/s of one worker vs the passthrough worker on one backlog (targets: >= 5,000/s, >= 50%)."""
    from streamrec.bench.e2e import format_result, run_e2e  # Faust: 0.55 s

    result = run_e2e(settings, events=events, users=users, items=items, train_events=train_events, epochs=epochs,
                     model=model_dir, no_model=no_model, partitions=partitions, repeats=repeats,
                     latency_rate=latency_rate, latency_seconds=latency_seconds, profile_seconds=profile_seconds,
                     attribute=attribute, seed=seed, timeout_s=timeout_s, keep=keep, out_dir=out.parent,
                     progress=lambda m: click.echo(m, err=True))
    _print_and_write(result, format_result(result), out)


@bench.command("latency")
@click.option("--rate", default=1000.0, show_default=True, help="Offered load, events/s.")
@click.option("--seconds", default=60.0, show_default=True)
@click.option("--users", default=200_000, show_default=True)
@click.option("--items", default=20_000, show_default=True)
@click.option("--train-events", default=30_000, show_default=True)
@click.option("--epochs", default=2, show_default=True)
@_model_option
@click.option("--no-model", is_flag=True, help="Serve the popularity fallback (no encoder).")
@click.option("--partitions", default=4, show_default=True)
@click.option("--with-passthrough", is_flag=True, help="Measure a bare aiokafka loop and the Faust passthrough worker the same way first.")
@click.option("--attribute", is_flag=True,
              help="Also measure the worker with windows in memory, without and with the model, and print what each "
                   "component (Kafka + Python, Faust, streamrec, the model, Cassandra) adds (implies --with-passthrough).")
@click.option("--seed", default=0, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the run's topics and keyspace.")
@click.option("--explain", is_flag=True, help="Run the worker with STREAMREC_EXPLAIN=true (explanations in every message).")
@click.option("--shadow-model", type=click.Path(exists=True, path_type=Path), default=None,
              help="Also score this model as a shadow (an artifact, or a model directory: its live version).")
@click.option("--shadow-fraction", type=click.FloatRange(0.0, 1.0, min_open=True), default=1.0, show_default=True,
              help="Share of users the shadow is scored for.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/bench/latency.json"), show_default=True)
@click.pass_obj
def latency(settings: Settings, rate: float, seconds: float, users: int, items: int, train_events: int, epochs: int,
            model_dir: Path | None, no_model: bool, partitions: int, with_passthrough: bool, attribute: bool, seed: int,
            keep: bool, explain: bool, shadow_model: Path | None, shadow_fraction: float, out: Path) -> None:
    """Latency percentiles at a fixed offered load, with a latency-over-time plot (target p99 <= 50 ms)."""
    from streamrec.bench.latency import format_result, run_latency  # 1.4 s

    result = run_latency(settings, rate=rate, seconds=seconds, users=users, items=items,
                         train_events=train_events, epochs=epochs, model=model_dir, no_model=no_model,
                         partitions=partitions, with_passthrough=with_passthrough, attribute=attribute, seed=seed,
                         keep=keep, explain=explain, shadow_model=shadow_model, shadow_fraction=shadow_fraction,
                         out_dir=out.parent, progress=lambda m: click.echo(m, err=True))
    _print_and_write(result, format_result(result), out)


@bench.command("scale")
@click.option("--workers", default="1,2", show_default=True, help="Comma-separated worker counts to compare.")
@click.option("--events", default=200_000, show_default=True)
@click.option("--users", default=200_000, show_default=True)
@click.option("--items", default=20_000, show_default=True)
@click.option("--partitions", default=4, show_default=True, help="Events topic partitions (>= the most workers).")
@click.option("--train-events", default=30_000, show_default=True)
@click.option("--epochs", default=2, show_default=True)
@_model_option
@click.option("--no-model", is_flag=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--timeout", "timeout_s", default=3600.0, show_default=True)
@click.option("--keep", is_flag=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/bench/scale.json"), show_default=True)
@click.pass_obj
def scale(settings: Settings, workers: str, events: int, users: int, items: int, partitions: int, train_events: int,
          epochs: int, model_dir: Path | None, no_model: bool, seed: int, timeout_s: float, keep: bool, out: Path) -> None:
    """1 worker vs 2 (or more) in one group on the same backlog: throughput ratio (target 2 workers >= 1.7x)."""
    counts = [int(w) for w in workers.split(",") if w.strip()]
    result = scale_mod.run_scale(settings, workers=counts, events=events, users=users, items=items, partitions=partitions,
                       train_events=train_events, epochs=epochs, model=model_dir, no_model=no_model, seed=seed,
                       timeout_s=timeout_s, keep=keep, out_dir=out.parent, progress=lambda m: click.echo(m, err=True))
    _print_and_write(result, scale_mod.format_result(result), out)


@bench.command("users")
@click.option("--sizes", default="20000,200000,1000000", show_default=True, help="Comma-separated distinct-user counts.")
@click.option("--events", default=40_000, show_default=True, help="Events drained per size.")
@click.option("--items", default=2_000, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--timeout", "timeout_s", default=3600.0, show_default=True)
@click.option("--keep", is_flag=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/bench/users.json"), show_default=True)
@click.pass_obj
def users(settings: Settings, sizes: str, events: int, items: int, seed: int, timeout_s: float, keep: bool,
          out: Path) -> None:
    """Per-event cost of one worker as distinct users grow (more users: more Cassandra reads and writes per event)."""
    from streamrec.bench.users import format_result, run_users  # torch (writes the model)

    result = run_users(settings, sizes=[int(s) for s in sizes.split(",") if s.strip()], events=events, items=items,
                       seed=seed, timeout_s=timeout_s, keep=keep, out_dir=out.parent,
                       progress=lambda m: click.echo(m, err=True))
    _print_and_write(result, format_result(result), out)


@bench.command("catalogue")
@click.option("--sizes", default="2000,20000,200000", show_default=True, help="Comma-separated catalogue sizes (items).")
@click.option("--events", default=40_000, show_default=True, help="Events drained per size.")
@click.option("--users", default=20_000, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--timeout", "timeout_s", default=3600.0, show_default=True)
@click.option("--keep", is_flag=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/bench/catalogue.json"), show_default=True)
@click.pass_obj
def catalogue(settings: Settings, sizes: str, events: int, users: int, seed: int, timeout_s: float, keep: bool,
              out: Path) -> None:
    """Per-event cost of one worker as the catalogue grows (target: 200k items <= 2x the cost of 2k)."""
    from streamrec.bench.catalogue import format_result, run_catalogue  # torch (writes the models)

    result = run_catalogue(settings, sizes=[int(s) for s in sizes.split(",") if s.strip()], events=events, users=users,
                           seed=seed, timeout_s=timeout_s, keep=keep, out_dir=out.parent,
                           progress=lambda m: click.echo(m, err=True))
    _print_and_write(result, format_result(result), out)


@bench.command("faults")
@click.option("--scenario", "scenarios", multiple=True, help="Run only these (repeatable). [default: all]")
@click.option("--timeout", "timeout_s", default=180.0, show_default=True, help="Seconds each scenario may take to settle.")
@click.option("--keep", is_flag=True, help="Keep the scenarios' topics and keyspaces.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/bench/faults.json"), show_default=True)
@click.pass_obj
def faults(settings: Settings, scenarios: tuple[str, ...], timeout_s: float, keep: bool, out: Path) -> None:
    """Fault scenarios against the local servers: events produced, in state, lost, duplicated, recovery time."""
    from streamrec.bench.faults import SCENARIOS, format_result, run_faults  # Cassandra driver: 0.1 s

    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise click.BadParameter(f"unknown scenario(s) {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    result = run_faults(settings, scenarios=scenarios or SCENARIOS, timeout_s=timeout_s, keep=keep,
                        progress=lambda m: click.echo(m, err=True))
    _print_and_write(result, format_result(result), out)
    if not result["all_clean"]:
        raise click.exceptions.Exit(1)


@bench.command("state")
@click.option("--users", default=5000, show_default=True)
@click.option("--updates", default=50_000, show_default=True, help="Window updates per model and mode.")
@click.option("--batch", default=256, show_default=True, help="Distinct users per micro-batch.")
@click.option("--window", default=None, type=int, help="Window size N. [default: STREAMREC_WINDOW_SIZE]")
@click.option("--single", default=300, show_default=True, help="Sequential single-request samples per model.")
@click.option("--ttl-probe-users", default=200, show_default=True, help="Users in the TTL-expiry probe (0 = skip).")
@click.option("--seed", default=0, show_default=True)
@click.option("--keep", is_flag=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/bench/state.json"), show_default=True)
@click.pass_obj
def state(settings: Settings, users: int, updates: int, batch: int, window: int | None, single: int,
          ttl_probe_users: int, seed: int, keep: bool, out: Path) -> None:
    """The Cassandra window store alone: chosen blob-per-user model vs rows+LIMIT+TTL (updates/s, latency, tombstones)."""
    from streamrec.bench.state import format_result, run_state  # Cassandra driver: 0.15-0.25 s

    result = run_state(settings, users=users, updates=updates, batch=batch, window=window, single=single,
                       ttl_probe_users=ttl_probe_users, seed=seed, keep=keep, progress=lambda m: click.echo(m, err=True))
    _print_and_write(result, format_result(result), out)


@bench.command("all")
@click.option("--events", default=50_000, show_default=True, help="e2e backlog size (scale uses the same).")
@click.option("--users", default=200_000, show_default=True)
@click.option("--items", default=20_000, show_default=True)
@click.option("--latency-seconds", default=20.0, show_default=True)
@click.option("--train-events", default=30_000, show_default=True)
@click.option("--epochs", default=2, show_default=True)
@_model_option
@click.option("--profile-seconds", default=10.0, show_default=True, help="py-spy the e2e worker (0 = no profile).")
@click.option("--skip", default="", help="Comma-separated benchmarks to skip (encoder,e2e,latency,scale,state).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/bench/all.json"), show_default=True)
@click.pass_obj
def all_(settings: Settings, events: int, users: int, items: int, latency_seconds: float, train_events: int, epochs: int,
         model_dir: Path | None, profile_seconds: float, skip: str, out: Path) -> None:
    """Every benchmark with small defaults, one model shared; one combined report (JSON + per-benchmark files)."""
    import itertools
    import tempfile

    skipped = {s.strip() for s in skip.split(",") if s.strip()}
    echo = lambda m: click.echo(m, err=True)  # noqa: E731
    out_dir = out.parent
    parts: dict[str, dict[str, Any] | None] = {}
    errors: dict[str, str] = {}
    tables: list[str] = []
    with tempfile.TemporaryDirectory(prefix="streamrec-bench-all-") as tmp:
        if model_dir is None and not {"e2e", "latency", "scale"} <= skipped:
            registry = Path(tmp) / "models"
            history = list(itertools.islice(load.synthetic_events(train_events, users, items), train_events))
            info = artifacts.prepare_model(settings.with_overrides(model_dir=registry), None, history, epochs)
            echo(f"shared model: {info}")
            model_dir = registry

        def step(name: str, call: Any, fmt: Any) -> None:
            if name in skipped:
                return
            echo(f"== bench {name}")
            try:
                result = call()
            except Exception as exc:  # one failing benchmark must not lose the others' results
                log.exception("bench %s failed", name)
                errors[name] = f"{type(exc).__name__}: {exc}"
                parts[name] = None
                return
            report.write_json(result, out_dir / f"{name}.json")
            parts[name] = result
            tables.append(f"== {name}\n{fmt(result)}")

        def encoder_call() -> dict[str, Any]:
            from streamrec.bench.encoder import run_encoder_bench  # torch

            result = run_encoder_bench(None, batches=(1, 64, 256), seq_len=50, k=10, threads=2, device="cpu",
                                       min_seconds=1.0, fp16=False)
            rows = result.get("rows", [])
            result.setdefault("headline", {r_key: r.get("speedup") for r in rows for r_key in [f"ort_over_torch_batch_{r['batch']}"]})
            return result

        def encoder_fmt(result: dict[str, Any]) -> str:
            from streamrec.bench.encoder import format_table as encoder_table  # torch

            return encoder_table(result)

        from streamrec.bench import e2e as e2e_mod  # Faust: 0.55 s
        from streamrec.bench import latency as latency_mod  # 1.4 s
        from streamrec.bench import state as state_mod  # Cassandra driver: 0.15-0.25 s

        step("encoder", encoder_call, encoder_fmt)
        step("e2e", lambda: e2e_mod.run_e2e(settings, events=events, users=users, items=items, model=model_dir,
                                            latency_seconds=10.0, profile_seconds=profile_seconds, out_dir=out_dir,
                                            progress=echo), e2e_mod.format_result)
        step("latency", lambda: latency_mod.run_latency(settings, seconds=latency_seconds, users=users, items=items,
                                                        model=model_dir, out_dir=out_dir, progress=echo),
             latency_mod.format_result)
        step("scale", lambda: scale_mod.run_scale(settings, events=events, users=users, items=items, model=model_dir,
                                                  out_dir=out_dir, progress=echo), scale_mod.format_result)
        step("state", lambda: state_mod.run_state(settings, users=2000, updates=20_000, single=200, progress=echo),
             state_mod.format_result)
    combined = report.assemble_report(parts, report.machine_info(), errors)
    for name, message in errors.items():
        tables.append(f"== {name}: FAILED: {message}")
    _print_and_write(combined, "\n\n".join(tables), out)
