"""`streamrec retrain` (one round) and `streamrec retrainer` (the periodic service, with /metrics)."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import asdict

import click
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from streamrec.config import Settings

log = logging.getLogger(__name__)


class RetrainerMetrics:
    """The retrainer's Prometheus metrics (names used by deploy/grafana)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rounds = Counter("streamrec_retrain_rounds", "Retraining rounds by outcome", ["outcome"], registry=r)
        self.duration = Gauge("streamrec_retrain_duration_seconds", "Duration of the last round", registry=r)
        self.events = Gauge("streamrec_retrain_events", "Events read by the last round", registry=r)
        self.holdout = Gauge("streamrec_retrain_holdout_ndcg10", "Holdout NDCG@10 of the last round", ["model"], registry=r)

    def record(self, result: object) -> None:
        self.rounds.labels(result.outcome).inc()  # type: ignore[attr-defined]
        self.duration.set(result.duration_s)  # type: ignore[attr-defined]
        self.events.set(result.events)  # type: ignore[attr-defined]
        if result.candidate_holdout:  # type: ignore[attr-defined]
            self.holdout.labels("candidate").set(result.candidate_holdout.get("ndcg@10", 0.0))  # type: ignore[attr-defined]
        if result.live_holdout:  # type: ignore[attr-defined]
            self.holdout.labels("live").set(result.live_holdout.get("ndcg@10", 0.0))  # type: ignore[attr-defined]


@click.command()
@click.option("--epochs", type=int, default=None, help="Override STREAMREC_RETRAIN_EPOCHS.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def retrain(settings: Settings, epochs: int | None, as_json: bool) -> None:
    """One retraining round: recent events → candidate → holdout duel → publish or reject."""
    from streamrec.models.retrainer import retrain_round

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
    from streamrec.models.retrainer import RetrainError, end_offsets_total, retrain_round

    metrics = RetrainerMetrics()
    start_http_server(settings.web_port, registry=metrics.registry)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    last_round = 0.0
    last_offsets = 0
    click.echo(f"retrainer: every {settings.retrain_interval_s:.0f}s"
               + (f" or {settings.retrain_every_events} new events" if settings.retrain_every_events else "")
               + f"; metrics on :{settings.web_port}/metrics")
    while not stop.is_set():
        due = time.monotonic() - last_round >= settings.retrain_interval_s or last_round == 0.0
        if not due and settings.retrain_every_events:
            try:
                due = end_offsets_total(settings) - last_offsets >= settings.retrain_every_events
            except RetrainError as exc:
                log.warning("cannot read the events topic: %s", exc)
        if due:
            try:
                last_offsets = end_offsets_total(settings)
                result = retrain_round(settings)
                metrics.record(result)
                click.echo(f"round {result.outcome}: {result.reason}")
            except Exception as exc:  # a failed round must not stop the service; it is counted and retried
                metrics.rounds.labels("failed").inc()
                log.exception("retraining round failed: %s", exc)
            last_round = time.monotonic()
            if once:
                return
        stop.wait(5.0)
