"""`streamrec model list | publish | rollback` — the model registry."""

from __future__ import annotations

import asyncio

import click

from streamrec.config import Settings


def _registry(settings: Settings):  # noqa: ANN202 - keeps the import lazy
    from streamrec.onnx.registry import ModelRegistry

    return ModelRegistry.at(settings.models_path)


def _announce(settings: Settings, version: int, reason: str) -> None:
    from streamrec.stream.model_updates import announce

    record = _registry(settings).record(version)
    try:
        asyncio.run(announce(settings, version, record.checksum, reason))
    except Exception as exc:  # the registry already changed; workers also poll it
        click.secho(f"warning: could not announce on {settings.model_updates_topic}: {exc}; "
                    "workers will pick the change up from the registry within seconds", fg="yellow", err=True)


@click.group()
def model() -> None:
    """The model registry: versions, status, live pointer."""


@model.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def list_(settings: Settings, as_json: bool) -> None:
    """Every version with its status, metrics, parity result and checksum."""
    import json
    from dataclasses import asdict

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
    from streamrec.onnx.registry import parse_version

    number = parse_version(version)
    previous = _registry(settings).publish(number, reason="published by hand")
    _announce(settings, number, "published")
    click.echo(f"version {number} is live (was {previous})")


@model.command()
@click.argument("version", required=False)
@click.pass_obj
def rollback(settings: Settings, version: str | None) -> None:
    """Make VERSION (default: the previous live version) live again."""
    target = _registry(settings).rollback(version)
    _announce(settings, target, "rollback")
    click.echo(f"rolled back: version {target} is live")
