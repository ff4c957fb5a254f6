"""``streamrec retrain | retrainer`` and ``streamrec model list | publish | rollback``.

The root CLI imports this module at every start, so it imports the round and
the service (torch: 3-6.5 s on the 2-core box) inside the two commands that
run them, the publish path (aiokafka: 0.19 s) inside publish, rollback and
shadow, and the online figures (the Cassandra driver: ~0.3 s) inside list and gate.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

import click

from streamrec.config import Settings
from streamrec.errors import StateStoreError
from streamrec.models.cpu import prepare_cpu_training
from streamrec.onnx.registry import ModelRegistry, VersionRecord, parse_version

log = logging.getLogger(__name__)


@click.command()
@click.option("--epochs", type=int, default=None, help="Override STREAMREC_RETRAIN_EPOCHS.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def retrain(settings: Settings, epochs: int | None, as_json: bool) -> None:
    """One retraining round: recent events → candidate → holdout duel → publish or reject."""
    log.info("CPU settings: %s", prepare_cpu_training())  # before torch is imported
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


def _online_figures(settings: Settings) -> dict[int, dict[str, dict[str, float | int | None]]]:
    """Every version's online figures by role, from the workers' shared counters ({} if Cassandra is not there)."""
    from streamrec.stream.online_figures import OnlineFiguresStore  # Cassandra driver: ~0.3 s

    try:
        store = OnlineFiguresStore.open(settings)
    except StateStoreError as exc:
        click.secho(f"warning: no online figures ({exc})", fg="yellow", err=True)
        return {}
    try:
        rows = store.read()
    except StateStoreError as exc:
        click.secho(f"warning: no online figures ({exc})", fg="yellow", err=True)
        return {}
    finally:
        store.close()
    return {version: {str(role): {"events": f.evaluated, "hit@10": f.hit_rate, "ndcg@10": f.ndcg}
                      for role, f in roles.items()} for version, roles in rows.items()}


def _rate(figures: dict[str, dict[str, float | int | None]], role: str) -> str:
    one = figures.get(role) or {}
    hit, events = one.get("hit@10"), one.get("events")
    return f"{hit:.4f} ({events})" if isinstance(hit, float) else "-"


def _offline_ndcg(record: VersionRecord) -> str:
    ndcg = (record.metrics.get("test") or {}).get("ndcg@10") or (record.metrics.get("holdout") or {}).get("ndcg@10")
    return f"{ndcg:.4f}" if isinstance(ndcg, (int, float)) else "-"


@model.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.option("--offline-only", is_flag=True, help="Skip the online figures (no Cassandra query).")
@click.pass_obj
def list_(settings: Settings, as_json: bool, offline_only: bool) -> None:
    """Every version with its status, offline holdout and online figures, parity result and checksum.

    Online figures are hit@10 (events scored) summed over all workers: as
    live (all users), as shadow, and live's on the same events the shadow was
    scored on.
    """
    registry = _registry(settings)
    records = registry.list()
    online = {} if offline_only or not records else _online_figures(settings)
    if as_json:
        click.echo(json.dumps([{**asdict(r), "online": online.get(r.version, {})} for r in records], indent=2))
        return
    if not records:
        click.echo(f"no model versions under {settings.models_path}")
        return
    shadow = registry.shadow()
    if shadow is not None:
        click.echo(f"shadow: version {shadow.version} on {shadow.fraction:g} of users")
    click.echo(f"{'version':>7}  {'status':<9} {'created':<25} {'ndcg@10':>8} {'online hit@10':>16} "
               f"{'shadow hit@10':>16} {'live same ev.':>16} {'parity':<6} {'sha256':<12} reason")
    for r in records:
        figures = online.get(r.version, {})
        click.echo(f"{r.version:>7}  {r.status:<9} {r.created_at:<25} {_offline_ndcg(r):>8} {_rate(figures, 'live'):>16} "
                   f"{_rate(figures, 'shadow'):>16} {_rate(figures, 'shadow_live'):>16} "
                   f"{'ok' if r.parity_passed else 'FAIL':<6} {r.checksum[:12]:<12} {r.reason}")


@model.command()
@click.argument("version", required=False)
@click.option("--fraction", type=click.FloatRange(0.0, 1.0, min_open=True), default=None,
              help="Share of users scored with the shadow. [default: STREAMREC_SHADOW_FRACTION]")
@click.option("--stop", is_flag=True, help="Stop shadowing (the shadow goes back to candidate).")
@click.pass_obj
def shadow(settings: Settings, version: str | None, fraction: float | None, stop: bool) -> None:
    """Score VERSION beside the live model on live traffic, without ever serving it."""
    from streamrec.retrain.publish import announce_live  # aiokafka: 0.19 s

    registry = _registry(settings)
    if stop:
        stopped = registry.stop_shadow("shadow stopped by hand")
        live = registry.live_version()
        if stopped and live is not None:
            _warn_unannounced(settings, announce_live(settings, registry, live, "shadow ended"))
        click.echo(f"stopped shadowing version {stopped}" if stopped else "no shadow to stop")
        return
    if version is None:
        raise click.UsageError("give a VERSION to shadow, or --stop")
    pointer = registry.start_shadow(version, fraction or settings.shadow_fraction, reason="shadowed by hand")
    _warn_unannounced(settings, announce_live(settings, registry, pointer.version, "shadow"))
    click.echo(f"version {pointer.version} is the shadow on {pointer.fraction:g} of users "
               f"(live: version {registry.live_version()}); see `streamrec model list`")


@model.command()
@click.argument("version")
@click.option("--events", type=click.IntRange(min=1), default=None,
              help="Shadow-scored events to wait for. [default: STREAMREC_RETRAIN_GATE_EVENTS]")
@click.option("--tolerance", type=click.FloatRange(min=0.0), default=None,
              help="Allowed hit@10 shortfall against live. [default: STREAMREC_RETRAIN_GATE_TOLERANCE]")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1.0), default=None,
              help="Seconds to wait for the events. [default: STREAMREC_RETRAIN_GATE_TIMEOUT_S]")
@click.option("--fraction", type=click.FloatRange(0.0, 1.0, min_open=True), default=None,
              help="Share of users scored. [default: STREAMREC_SHADOW_FRACTION]")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def gate(settings: Settings, version: str, events: int | None, tolerance: float | None, timeout_s: float | None,
         fraction: float | None, as_json: bool) -> None:
    """The online gate on candidate VERSION: shadow it for N events, then publish or reject it."""
    from streamrec.retrain.gate import online_gate  # Cassandra driver and aiokafka

    verdict = online_gate(settings, _registry(settings), version, events=events, tolerance=tolerance,
                          timeout_s=timeout_s, fraction=fraction, progress=lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps(verdict.as_dict(), indent=2))
    else:
        click.echo(f"{'promoted' if verdict.promoted else 'rejected'}: {verdict.reason}")
    if not verdict.promoted:
        raise SystemExit(4)


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
