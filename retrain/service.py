"""The retraining service: a round every interval and/or every M new events, with /metrics."""

from __future__ import annotations

import logging
import signal
import threading
import time

import click
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from streamrec.config import Settings
from streamrec.retrain.recent import RetrainError, end_offsets_total
from streamrec.retrain.round import RoundResult, retrain_round

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
        self.online = Gauge("streamrec_retrain_online_hit10",
                            "Online hit@10 the last online gate decided on (same events for each model)", ["model"],
                            registry=r)

    def record(self, result: RoundResult) -> None:
        self.rounds.labels(result.outcome).inc()
        self.duration.set(result.duration_s)
        self.events.set(result.events)
        if result.candidate_holdout:
            self.holdout.labels("candidate").set(result.candidate_holdout.get("ndcg@10", 0.0))
        if result.live_holdout:
            self.holdout.labels("live").set(result.live_holdout.get("ndcg@10", 0.0))
        for model in ("shadow", "live", "popularity"):
            figures = result.online.get(model)
            if isinstance(figures, dict) and isinstance(figures.get("hit@10"), float):
                self.online.labels(model).set(figures["hit@10"])



def serve(settings: Settings, *, once: bool = False) -> None:
    """A round every interval and/or every M new events, until SIGTERM; metrics on the web port."""
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
