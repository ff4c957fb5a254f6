"""``streamrec retrain | retrainer`` and ``streamrec model list | publish | rollback``.

The root CLI imports this module at every start, so it imports the round and
the service (torch: 3-6.5 s on the 2-core box) inside the two commands that
run them, and the publish path (aiokafka: 0.19 s) inside publish and rollback.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from streamrec.config import Settings
from streamrec.onnx.registry import ModelRegistry, parse_version


@click.command()
@click.option("--epochs", type=int, default=None, help="Override STREAMREC_RETRAIN_EPOCHS.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def retrain(settings: Settings, epochs: int | None, as_json: bool) -> None:
    """One retraining round: recent events → candidate → holdout duel → publish or reject."""
    from streamrec.retrain.round import retrain_round  # torch: 3-6.5 s

    result = retrain_round(settings, epochs=epochs)
    if as_json:
        click.echo(json.dumps(asdict(result), indent=2))
    else:
        click.echo(f"{result.outcome}: {result.reason}")
        click.echo(f"  events read {result.events}, users {result.users}, new items {result.new_items}, "
                   f"{result.duration_s:.0f}s; candidate v{result.candidate_version}, live v{result.live_version}")
        if result.plot:
            click.echo(f"  plot: {result.plot}")
    if result.outcome == "skipped":
        raise SystemExit(3)


@click.command()
@click.option("--once", is_flag=True, help="Run one round and exit (like `retrain`, with metrics).")
@click.pass_obj
def retrainer(settings: Settings, once: bool) -> None:
    """The retraining service: a round every interval and/or every M new events; metrics on the web port."""
    from streamrec.retrain.service import serve  # torch: 3-6.5 s

    serve(settings, once=once)


def _registry(settings: Settings) -> ModelRegistry:
    return ModelRegistry.at(settings.models_path)


def _warn_unannounced(settings: Settings, failure: Exception | None) -> None:
    if failure is not None:  # the registry already changed; workers also poll it
        click.secho(f"warning: could not announce on {settings.model_updates_topic}: {failure}; "
                    "workers will pick the change up from the registry within seconds", fg="yellow", err=True)


@click.group()
def model() -> None:
    """The model registry: versions, status, live pointer."""


@model.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def list_(settings: Settings, as_json: bool) -> None:
    """Every version with its status, metrics, parity result and checksum."""
    records = _registry(settings).list()
    if as_json:
        click.echo(json.dumps([asdict(r) for r in records], indent=2))
        return
    if not records:
        click.echo(f"no model versions under {settings.models_path}")
        return
    click.echo(f"{'version':>7}  {'status':<9} {'created':<25} {'ndcg@10':>8} {'parity':<6} {'sha256':<12} reason")
    for r in records:
        ndcg = (r.metrics.get("test") or {}).get("ndcg@10") or (r.metrics.get("holdout") or {}).get("ndcg@10")
        ndcg_text = f"{ndcg:.4f}" if isinstance(ndcg, (int, float)) else "-"
        click.echo(f"{r.version:>7}  {r.status:<9} {r.created_at:<25} {ndcg_text:>8} "
                   f"{'ok' if r.parity_passed else 'FAIL':<6} {r.checksum[:12]:<12} {r.reason}")


@model.command()
@click.argument("version")
@click.pass_obj
def publish(settings: Settings, version: str) -> None:
    """Verify VERSION and make it live; workers switch to it without stopping."""
    from streamrec.retrain.publish import publish_and_announce  # aiokafka: 0.19 s

    number = parse_version(version)
    previous, failure = publish_and_announce(settings, _registry(settings), number, reason="published by hand",
                                             announcement="published")
    _warn_unannounced(settings, failure)
    click.echo(f"version {number} is live (was {previous})")


@model.command()
@click.argument("version", required=False)
@click.pass_obj
def rollback(settings: Settings, version: str | None) -> None:
    """Make VERSION (default: the previous live version) live again."""
    from streamrec.retrain.publish import announce_live  # aiokafka: 0.19 s

    registry = _registry(settings)
    target = registry.rollback(version)
    _warn_unannounced(settings, announce_live(settings, registry, target, "rollback"))
    click.echo(f"rolled back: version {target} is live")
