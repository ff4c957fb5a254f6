"""One retraining round: recent events → warm-started candidate → holdout duel → publish or reject."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import torch

from streamrec.config import Settings
from streamrec.errors import DataError, ModelError
from streamrec.models.config import EncoderConfig
from streamrec.models.encoder import SequenceEncoder
from streamrec.models.evaluate import evaluate_model
from streamrec.models.features import ItemVocab
from streamrec.models.splits import temporal_split
from streamrec.models.train import TrainConfig, event_types_for, train
from streamrec.models.warm_start import grow_vocab, warm_state
from streamrec.onnx.artifact import load_artifact
from streamrec.onnx.registry import ModelRegistry
from streamrec.onnx.writer import write_artifact
from streamrec.retrain.gate import online_gate
from streamrec.retrain.publish import publish_and_announce
from streamrec.retrain.recent import recent_event_log
from streamrec.stream.catalogue_content import TOPIC_SOURCE, catalogue_content, items_from_source

log = logging.getLogger(__name__)


@dataclass
class RoundResult:
    """What one round did (printed by `streamrec retrain`, exported as metrics)."""

    outcome: str  # published | rejected | skipped
    reason: str
    events: int = 0
    users: int = 0
    new_items: int = 0
    duration_s: float = 0.0
    candidate_version: int | None = None
    live_version: int | None = None
    candidate_holdout: dict[str, float] = field(default_factory=dict)
    live_holdout: dict[str, float] = field(default_factory=dict)
    plot: str | None = None
    gate: str = "offline"  # what decided: the holdout duel (offline) or the shadow on live traffic (online)
    online: dict[str, object] = field(default_factory=dict)  # the online gate's figures


def retrain_round(settings: Settings, *, epochs: int | None = None, announce: bool = True) -> RoundResult:
    """Read, train a warm-started candidate, duel it with the live model on a temporal holdout, publish or reject."""
    started = time.monotonic()
    registry = ModelRegistry.at(settings.models_path)
    events, read = recent_event_log(settings)
    if len(events) < settings.retrain_min_events:
        return RoundResult("skipped", f"only {len(events)} usable events in the horizon (< {settings.retrain_min_events})",
                           events=read, duration_s=time.monotonic() - started)
    split = temporal_split(events, valid_frac=settings.retrain_holdout_frac, test_frac=settings.retrain_holdout_frac)
    if not split.test or not split.valid:
        return RoundResult("skipped", "no holdout cases (too few users with history before the cut)", events=read,
                           duration_s=time.monotonic() - started)

    registry.pin_live()
    live_path = registry.live_path()
    live = None
    if live_path is not None:
        try:
            live = load_artifact(live_path)
        except ModelError as exc:
            log.error("live model %s does not verify (%s); training from scratch", live_path, exc)
    all_items = list(events.item_ids)
    if live is not None:
        vocab, new_items = grow_vocab(live.vocab, all_items)
        base_config = live.config
    else:
        vocab, new_items = ItemVocab.build(all_items), len(set(all_items))
        base_config = EncoderConfig(n_items=0, event_types=tuple(settings.event_type_weights))
    config = replace(base_config, n_items=len(vocab),
                     event_types=event_types_for(split.train.values(), base_config.event_types))
    init_state = None
    live_model = None
    if live is not None and (live.path / "weights.pt").exists() and config.event_types == live.config.event_types:
        live_state = torch.load(live.path / "weights.pt", map_location="cpu", weights_only=True)
        init_state = warm_state(live_state, SequenceEncoder(config).state_dict())
        live_model = SequenceEncoder(live.config)
        live_model.load_state_dict(live_state)
        live_model.eval()

    content = None
    if config.item_content:
        # A multi-view live version: the candidate reads the catalogue as it is now (the items topic).
        try:
            content = catalogue_content(items_from_source(settings, TOPIC_SOURCE), settings.state_dir / "text-encoder")
        except DataError as exc:
            return RoundResult("skipped", f"the live model is multi-view but the catalogue is unreadable: {exc}",
                               events=read, duration_s=time.monotonic() - started)
    tcfg = TrainConfig(epochs=epochs or settings.retrain_epochs, patience=3, seed=0, progress=True)
    result = train(split, config, tcfg, vocab=vocab, init_state=init_state, item_content=content)
    candidate_holdout = result.test
    live_holdout = evaluate_model(live_model, live.vocab, split.test) if live_model is not None else {}

    with tempfile.TemporaryDirectory(prefix="streamrec-retrain-") as tmp:
        plot = _round_plot(result.history, candidate_holdout, live_holdout, Path(tmp) / "round.png")
        metrics = {"holdout": candidate_holdout, "live_holdout": live_holdout, "split": split.summary(),
                   "events_read": read, "new_items": new_items, "warm_start": init_state is not None,
                   "train_seconds": round(result.train_seconds, 1)}
        version_dir = write_artifact(result.model, vocab, settings.models_path, metrics=metrics,
                                     real_sequences=[c.history for c in split.test[:128]],
                                     extra_files={"retrain_round.png": plot})
    candidate = load_artifact(version_dir).version
    rounds_dir = settings.state_dir / "retrain"
    rounds_dir.mkdir(parents=True, exist_ok=True)
    kept_plot = rounds_dir / f"round-v{candidate:06d}.png"
    kept_plot.write_bytes((version_dir / "retrain_round.png").read_bytes())

    cand = candidate_holdout.get("ndcg@10", 0.0)
    live_score = live_holdout.get("ndcg@10")
    outcome = RoundResult(
        "published", "", events=read, users=len(split.train), new_items=new_items, candidate_version=candidate,
        live_version=live.version if live else None, candidate_holdout=candidate_holdout,
        live_holdout=live_holdout, plot=str(kept_plot),
    )
    if settings.retrain_gate == "online" and live is not None:
        # The holdout figures stay in the artifact's metrics; live traffic decides.
        verdict = online_gate(settings, registry, candidate, announce=announce)
        outcome.gate, outcome.online = "online", verdict.as_dict()
        outcome.outcome, outcome.reason = ("published" if verdict.promoted else "rejected"), verdict.reason
    else:
        _decide_offline(settings, registry, outcome, candidate, cand, live_score, announce)
    outcome.duration_s = round(time.monotonic() - started, 1)
    log.info("retrain round: %s", asdict(outcome))
    return outcome


def _decide_offline(settings: Settings, registry: ModelRegistry, outcome: RoundResult, candidate: int, cand: float,
                    live_score: float | None, announce: bool) -> None:
    """The holdout duel decides: publish (and announce) or reject the candidate."""
    publish, outcome.reason = judge(cand, live_score, settings.retrain_tolerance)
    if not publish:
        outcome.outcome = "rejected"
        registry.reject(candidate, outcome.reason)
    else:
        _previous, failure = publish_and_announce(settings, registry, candidate, reason=outcome.reason,
                                                  announcement="retrained", announce=announce)
        if failure is not None:
            log.warning("could not announce version %d: %s (workers will find it in the registry)", candidate, failure)


def judge(candidate_ndcg: float, live_ndcg: float | None, tolerance: float) -> tuple[bool, str]:
    """Publish unless the candidate is worse than live by more than ``tolerance`` (holdout NDCG@10)."""
    if live_ndcg is None:
        return True, f"first model, holdout NDCG@10 {candidate_ndcg:.4f}"
    if candidate_ndcg < live_ndcg - tolerance:
        return False, (f"holdout NDCG@10 {candidate_ndcg:.4f} is worse than live {live_ndcg:.4f} "
                       f"by more than the tolerance {tolerance}")
    return True, f"holdout NDCG@10 {candidate_ndcg:.4f} vs live {live_ndcg:.4f}"


def _round_plot(
    history: Sequence[Mapping[str, float]], candidate: Mapping[str, float], live: Mapping[str, float], path: Path
) -> Path:
    """Training curves beside the candidate-versus-live holdout comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_cmp) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [row["epoch"] for row in history]
    ax_loss.plot(epochs, [row["loss"] for row in history], label="train loss")
    if history and "valid_ndcg@10" in history[0]:
        ax2 = ax_loss.twinx()
        ax2.plot(epochs, [row["valid_ndcg@10"] for row in history], color="tab:orange", label="valid NDCG@10")
        ax2.set_ylabel("valid NDCG@10")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("candidate training")
    names = ["ndcg@10", "recall@10", "ndcg@20", "recall@20"]
    xs = range(len(names))
    ax_cmp.bar([x - 0.2 for x in xs], [candidate.get(n, 0.0) for n in names], width=0.4, label="candidate")
    if live:
        ax_cmp.bar([x + 0.2 for x in xs], [live.get(n, 0.0) for n in names], width=0.4, label="live")
    ax_cmp.set_xticks(list(xs), names)
    ax_cmp.set_title("temporal holdout")
    ax_cmp.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
