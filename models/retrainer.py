"""Periodic retraining: recent events from Kafka → warm-started candidate → holdout duel → publish or reject.

Training data comes from the events topic itself, read by a group-less
consumer from ``now − horizon`` (``offsets_for_times``) to the end offsets
seen when the round starts. The topic is the durable, replayable record of
what users did (the serving windows are capped and would bias training to
heavy users' last N events); Kafka retention must cover the horizon. Events
are streamed, validated with the worker's own rules, and kept per user in a
bounded deque, so memory is bounded by users × ``retrain_user_cap`` whatever
the number of events.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from streamrec.config import Settings
from streamrec.errors import ModelError, StreamrecError

log = logging.getLogger(__name__)


class RetrainError(StreamrecError):
    """A retraining round could not run (no data, Kafka unreachable)."""


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


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #
T = TypeVar("T")


def newest_share(first: dict[T, int], ends: dict[T, int], max_events: int) -> dict[T, int]:
    """Start offsets that keep at most ``max_events`` records over all partitions: the newest of each.

    Each partition gives up the oldest part of its range, in proportion to its
    size, so a capped round trains on the most recent behaviour, not the oldest.
    """
    total = sum(max(0, ends[tp] - first[tp]) for tp in first)
    if total <= max_events:
        return dict(first)
    return {tp: ends[tp] - (max(0, ends[tp] - first[tp]) * max_events) // total for tp in first}


async def _read_recent(settings: Settings, since_ms: int, user_cap: int, max_events: int) -> tuple[dict[str, deque], int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from tqdm import tqdm

    from streamrec.stream.events import Event, ValidationRules, parse_event

    rules = ValidationRules.from_settings(settings)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                enable_auto_commit=False, **settings.kafka_client_kwargs())
    await consumer.start()
    per_user: dict[str, deque] = {}
    read = 0
    try:
        partitions = consumer.partitions_for_topic(settings.events_topic)
        if not partitions:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - first contact with the topic
            partitions = consumer.partitions_for_topic(settings.events_topic) or set()
        tps = [TopicPartition(settings.events_topic, p) for p in sorted(partitions)]
        if not tps:
            raise RetrainError(f"topic {settings.events_topic} does not exist")
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.offsets_for_times({tp: since_ms for tp in tps})
        begin = await consumer.beginning_offsets(tps)
        first = {tp: max(starts[tp].offset if starts.get(tp) is not None else ends[tp], begin[tp]) for tp in tps}
        first = newest_share(first, ends, max_events)
        todo = 0
        remaining = set()
        for tp in tps:
            start = first[tp]
            consumer.seek(tp, start)
            todo += max(0, ends[tp] - start)
            if start < ends[tp]:
                remaining.add(tp)
        with tqdm(total=min(todo, max_events), unit="ev", desc="read events", disable=todo < 10_000) as bar:
            while remaining and read < max_events:
                batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=5000)
                for tp, records in batch.items():
                    for record in records:
                        if record.offset >= ends[tp]:
                            break
                        parsed = parse_event(record.value, rules=rules)
                        if isinstance(parsed, Event):
                            window = per_user.get(parsed.user_id)
                            if window is None:
                                window = per_user[parsed.user_id] = deque(maxlen=user_cap)
                            window.append((parsed.ts_ms, parsed.event_id, parsed.item_id, parsed.event_type))
                        read += 1
                    bar.update(len(records))
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
    finally:
        await consumer.stop()
    return per_user, read


def end_offsets_total(settings: Settings) -> int:
    """Events ever appended to the events topic (sum of end offsets): the retrainer's "new events" clock."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def total() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                    **settings.kafka_client_kwargs())
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(settings.events_topic) or set()
            tps = [TopicPartition(settings.events_topic, p) for p in partitions]
            return sum((await consumer.end_offsets(tps)).values()) if tps else 0
        finally:
            await consumer.stop()

    try:
        return asyncio.run(total())
    except Exception as exc:
        raise RetrainError(f"cannot read {settings.events_topic}: {exc}") from exc


def recent_event_log(settings: Settings) -> tuple[Any, int]:
    """The recent events as an EventLog (deduplicated by event_id per user) and the number read."""
    from streamrec.models.data import EventLog

    since = int(time.time() * 1000 - settings.retrain_horizon_hours * 3_600_000)
    per_user, read = asyncio.run(_read_recent(settings, since, settings.retrain_user_cap, settings.retrain_max_events))
    log_ = EventLog()
    for user, rows in per_user.items():
        seen: set[str] = set()
        for ts, event_id, item, event_type in sorted(rows):
            if event_id not in seen:
                seen.add(event_id)
                log_.append(user, item, event_type, ts)
    return log_, read


# --------------------------------------------------------------------------- #
# Warm start
# --------------------------------------------------------------------------- #
def grow_vocab(live_vocab: Any, items: list[str]) -> tuple[Any, int]:
    """The live vocabulary plus items first seen since (appended, so live indices keep their rows)."""
    from streamrec.models.features import ItemVocab

    known = set(live_vocab.ids[2:]) if hasattr(live_vocab, "ids") else set()
    new = [i for i in dict.fromkeys(items) if i not in known]
    return ItemVocab(list(live_vocab.ids[2:]) + new), len(new)


def warm_state(live_state: dict[str, Any], fresh_state: dict[str, Any]) -> dict[str, Any]:
    """The live weights, with embedding tables grown to the new sizes (new rows keep fresh init)."""
    state = dict(fresh_state)
    for name, tensor in live_state.items():
        if name not in state:
            continue
        target = state[name]
        if target.shape == tensor.shape:
            state[name] = tensor.clone()
        elif target.dim() == tensor.dim() and target.shape[1:] == tensor.shape[1:] and target.shape[0] > tensor.shape[0]:
            grown = target.clone()
            grown[: tensor.shape[0]] = tensor
            state[name] = grown
    return state


# --------------------------------------------------------------------------- #
# One round
# --------------------------------------------------------------------------- #
def retrain_round(settings: Settings, *, epochs: int | None = None, announce: bool = True) -> RoundResult:
    """Read, train a warm-started candidate, duel it with the live model on a temporal holdout, publish or reject."""
    import torch

    from streamrec.models.config import EncoderConfig
    from streamrec.models.encoder import SequenceEncoder
    from streamrec.models.evaluate import evaluate_model
    from streamrec.models.splits import temporal_split
    from streamrec.models.train import TrainConfig, event_types_for, plot_curves, train
    from streamrec.onnx.artifact import load_artifact
    from streamrec.onnx.writer import write_artifact
    from streamrec.onnx.registry import ModelRegistry

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
        from streamrec.models.features import ItemVocab

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

    tcfg = TrainConfig(epochs=epochs or settings.retrain_epochs, patience=3, seed=0, progress=True)
    result = train(split, config, tcfg, vocab=vocab, init_state=init_state)
    candidate_holdout = result.test
    live_holdout = evaluate_model(live_model, live.vocab, split.test) if live_model is not None else {}

    with tempfile.TemporaryDirectory(prefix="streamrec-retrain-") as tmp:
        plot = _round_plot(result.history, candidate_holdout, live_holdout, Path(tmp) / "round.png", plot_curves)
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
    publish, outcome.reason = judge(cand, live_score, settings.retrain_tolerance)
    if not publish:
        outcome.outcome = "rejected"
        registry.reject(candidate, outcome.reason)
    else:
        registry.publish(candidate, reason=outcome.reason)
        if announce:
            _announce(settings, registry, candidate)
    outcome.duration_s = round(time.monotonic() - started, 1)
    log.info("retrain round: %s", asdict(outcome))
    return outcome


def judge(candidate_ndcg: float, live_ndcg: float | None, tolerance: float) -> tuple[bool, str]:
    """Publish unless the candidate is worse than live by more than ``tolerance`` (holdout NDCG@10)."""
    if live_ndcg is None:
        return True, f"first model, holdout NDCG@10 {candidate_ndcg:.4f}"
    if candidate_ndcg < live_ndcg - tolerance:
        return False, (f"holdout NDCG@10 {candidate_ndcg:.4f} is worse than live {live_ndcg:.4f} "
                       f"by more than the tolerance {tolerance}")
    return True, f"holdout NDCG@10 {candidate_ndcg:.4f} vs live {live_ndcg:.4f}"


def _announce(settings: Settings, registry: Any, version: int) -> None:
    from streamrec.stream.model_updates import announce

    try:
        asyncio.run(announce(settings, version, registry.record(version).checksum, "retrained"))
    except Exception as exc:  # workers also poll the registry; an announcement is a speed-up
        log.warning("could not announce version %d: %s (workers will find it in the registry)", version, exc)


def _round_plot(history: list, candidate: dict, live: dict, path: Path, plot_curves: Any) -> Path:
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
