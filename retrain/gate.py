"""The online gate: a candidate is shadowed on live traffic and promoted only if it holds up there.

With ``STREAMREC_RETRAIN_GATE=online`` a retraining round does not decide on
its holdout: it makes the candidate the shadow (workers score it beside the
live model on the same events, never serving it), waits until
``STREAMREC_RETRAIN_GATE_EVENTS`` sampled events were scored — read from the
workers' shared counters in Cassandra — and promotes the candidate unless its
online hit@10 is worse than the live model's on those very events by more
than ``STREAMREC_RETRAIN_GATE_TOLERANCE``. Otherwise it is rejected with the
figures as the reason. Not enough traffic within
``STREAMREC_RETRAIN_GATE_TIMEOUT_S`` is a rejection too: nothing is promoted
without evidence. ``streamrec model gate VERSION`` runs the same gate on a
candidate already in the registry.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from streamrec.config import Settings
from streamrec.errors import StateStoreError
from streamrec.onnx.registry import ModelRegistry, parse_version
from streamrec.retrain.publish import announce_live, publish_and_announce
from streamrec.stream.online_figures import Figures, OnlineFiguresStore, Role

log = logging.getLogger(__name__)

POLL_S = 2.0
PROGRESS_EVERY_S = 10.0


@dataclass(frozen=True)
class GateVerdict:
    """The online gate's decision and the figures it was made on (the same events for all three)."""

    version: int
    promoted: bool
    reason: str
    shadow: Figures
    live: Figures
    popularity: Figures
    waited_s: float

    def as_dict(self) -> dict[str, object]:
        def one(f: Figures) -> dict[str, object]:
            return {"events": f.evaluated, "hit@10": f.hit_rate, "ndcg@10": f.ndcg}

        return {"version": self.version, "promoted": self.promoted, "reason": self.reason,
                "shadow": one(self.shadow), "live": one(self.live), "popularity": one(self.popularity),
                "waited_s": round(self.waited_s, 1)}


def judge_online(shadow: Figures, live: Figures, popularity: Figures, tolerance: float) -> tuple[bool, str]:
    """Promote unless the shadow's online hit@10 is worse than live's on the same events by more than ``tolerance``."""
    if not shadow.evaluated or shadow.hit_rate is None or live.hit_rate is None:
        return False, "no shadow-scored events"
    figures = (f"online hit@10 {shadow.hit_rate:.4f} vs live {live.hit_rate:.4f} (popularity "
               f"{popularity.hit_rate or 0.0:.4f}), NDCG@10 {shadow.ndcg or 0.0:.4f} vs live {live.ndcg or 0.0:.4f}, "
               f"on the same {shadow.evaluated} events")
    if shadow.hit_rate < live.hit_rate - tolerance:
        return False, f"{figures}: worse than live by more than the tolerance {tolerance}"
    return True, figures


def shadow_figures(store: OnlineFiguresStore, version: int) -> tuple[Figures, Figures, Figures]:
    """The shadow's, live's and popularity's figures on the events ``version`` was shadowed on."""
    rows = store.read().get(version, {})
    return (rows.get(Role.SHADOW, Figures()), rows.get(Role.SHADOW_LIVE, Figures()),
            rows.get(Role.SHADOW_POPULARITY, Figures()))


def online_gate(
    settings: Settings, registry: ModelRegistry, version: int | str, *, events: int | None = None,
    tolerance: float | None = None, timeout_s: float | None = None, fraction: float | None = None,
    announce: bool = True, progress: Callable[[str], None] = log.info,
) -> GateVerdict:
    """Shadow ``version`` until enough events were scored, then publish it or reject it (the reason: the figures)."""
    version = parse_version(version)
    needed = events or settings.retrain_gate_events
    tolerance = settings.retrain_gate_tolerance if tolerance is None else tolerance
    timeout_s = timeout_s or settings.retrain_gate_timeout_s
    store = OnlineFiguresStore.open(settings)
    started = time.monotonic()
    try:
        # Counters only grow: a version shadowed before counts from here.
        before = shadow_figures(store, version)
        registry.start_shadow(version, fraction or settings.shadow_fraction, reason="online gate")
        if announce:
            failure = announce_live(settings, registry, version, "shadow")
            if failure is not None:
                log.warning("shadow of version %d not announced (%s); workers find it in the registry", version, failure)
        progress(f"version {version} shadowed; waiting for {needed} scored events (at most {timeout_s:.0f}s)")
        last_progress = started
        shadow = live = popularity = Figures()
        while True:
            try:
                now = shadow_figures(store, version)
                shadow, live, popularity = (after - b for after, b in zip(now, before))
            except StateStoreError as exc:  # a busy or restarting Cassandra: keep waiting, within the timeout
                log.warning("cannot read the online figures (%s); trying again", exc)
            if shadow.evaluated >= needed:
                break
            if time.monotonic() - started > timeout_s:
                reason = (f"not enough shadow traffic: {shadow.evaluated} of {needed} events scored in "
                          f"{timeout_s:.0f}s ({shadow.describe()}; live {live.describe()})")
                registry.reject(version, reason)
                _announce_end(settings, registry, announce)
                return GateVerdict(version, False, reason, shadow, live, popularity, time.monotonic() - started)
            if time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                progress(f"version {version}: {shadow.evaluated}/{needed} events; shadow {shadow.describe()}; "
                         f"live {live.describe()}")
                last_progress = time.monotonic()
            time.sleep(POLL_S)
    except BaseException as exc:
        # Interrupted or Cassandra gone: no verdict, and no shadow left behind.
        pointer = registry.shadow()
        if pointer is not None and pointer.version == version:
            registry.stop_shadow(f"online gate interrupted: {type(exc).__name__}: {exc}")
        raise
    finally:
        store.close()
    promoted, reason = judge_online(shadow, live, popularity, tolerance)
    if promoted:
        _previous, failure = publish_and_announce(settings, registry, version, reason=reason, announcement="online gate",
                                                  announce=announce)
        if failure is not None:
            log.warning("could not announce version %d: %s (workers will find it in the registry)", version, failure)
    else:
        registry.reject(version, reason)
        _announce_end(settings, registry, announce)
    verdict = GateVerdict(version, promoted, reason, shadow, live, popularity, time.monotonic() - started)
    log.info("version %d %s: %s", version, "promoted" if promoted else "rejected", reason)
    return verdict


def _announce_end(settings: Settings, registry: ModelRegistry, announce: bool) -> None:
    """Tell workers to look again, so they drop the shadow now rather than at their next registry poll."""
    live = registry.live_version()
    if announce and live is not None:
        failure = announce_live(settings, registry, live, "shadow ended")
        if failure is not None:
            log.warning("end of the shadow not announced (%s); workers find it in the registry", failure)
