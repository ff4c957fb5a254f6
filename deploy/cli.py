"""`streamrec infra up | down | status` — the local single-node Kafka and Cassandra."""

from __future__ import annotations

import click

from streamrec.config import Settings
from streamrec.deploy import infra as local

_SERVER = click.argument("servers", nargs=-1, type=click.Choice(local.SERVERS))


def _servers(servers: tuple[str, ...]) -> tuple[str, ...]:
    return servers or local.SERVERS


@click.group()
def infra() -> None:
    """Start, stop and report the local single-node Kafka and Cassandra."""


@infra.command()
@_SERVER
@click.pass_obj
def up(settings: Settings, servers: tuple[str, ...]) -> None:
    """Start the servers (all by default) and wait until each answers. Idempotent."""
    statuses = local.up(settings, _servers(servers), progress=click.echo)
    for status in statuses:
        click.echo(f"{status.server} ready at {status.endpoint}")
    click.echo(f"state and logs under {settings.state_dir}; stop with `streamrec infra down`")


@infra.command()
@_SERVER
@click.pass_obj
def down(settings: Settings, servers: tuple[str, ...]) -> None:
    """Stop the servers that `infra up` started (by pid, only those)."""
    local.down(settings, _servers(servers), progress=click.echo)


@infra.command()
@_SERVER
@click.pass_obj
def status(settings: Settings, servers: tuple[str, ...]) -> None:
    """Report each server: up/down, endpoint, pid. Exit 1 if any is down."""
    statuses = [local.status(settings, s) for s in _servers(servers)]
    for st in statuses:
        click.echo(st.line())
    if not all(st.healthy for st in statuses):
        raise SystemExit(1)
