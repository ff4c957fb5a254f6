"""The ``streamrec`` command line: one group, one sub-command module per room."""

from __future__ import annotations

import logging
import sys

import click

from streamrec.bench.cli import bench
from streamrec.bench.incremental import incremental
from streamrec.config import load_settings
from streamrec.demo import demo
from streamrec.deploy.cli import infra
from streamrec.errors import StreamrecError
from streamrec.onnx.cli import eval_, train, use_item_content_reader
from streamrec.retrain.cli import model, retrain, retrainer
from streamrec.stream.cli import cassandra, forget, inspect, items, produce, read_item_content, tail, topics, worker
from streamrec.stream.explain_cli import explain


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default=None, help="Overrides STREAMREC_LOG_LEVEL (default INFO).")
@click.pass_context
def cli(ctx: click.Context, log_level: str | None) -> None:
    """streamrec — streaming sequential recommender (Kafka → Cassandra → ONNX → Kafka)."""
    # Settings are read here, once; every command takes them from the context.
    settings = load_settings(log_level=log_level)
    # The CLI (not library code) configures logging: our own loggers at the
    # chosen level, third-party clients (aiokafka, the Cassandra driver) at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("streamrec").setLevel(settings.log_level)
    ctx.obj = settings


def _register_commands() -> None:
    # Each room contributes its own commands. The command modules are light to
    # import: each imports torch, ONNX Runtime, Faust or the Cassandra driver
    # inside the command that needs it, so `streamrec infra status` does not.
    bench.add_command(incremental)
    # `train --items` reads item records, the stream room's contract, which the onnx room may not import.
    use_item_content_reader(read_item_content)
    for command in (infra, worker, produce, tail, inspect, forget, explain, items, topics, cassandra, train, eval_, retrain, retrainer, model, bench, demo):
        cli.add_command(command)


def main() -> None:
    """Console entry point: clear one-line errors for expected failures."""
    _register_commands()
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except StreamrecError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)
