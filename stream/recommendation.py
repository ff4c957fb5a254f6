"""The recommendation message published per affected user (``schemas/recommendation.schema.json``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from streamrec.errors import StreamrecError

logger = logging.getLogger(__name__)

RECOMMENDATION_VERSION = 1
# Additive revisions within version 1 (old consumers ignore the new fields):
# 2 added the optional items[].because (STREAMREC_EXPLAIN=true).
RECOMMENDATION_SCHEMA_REVISION = 2


class RecommendationDecodeError(StreamrecError, ValueError):
    """A message on the recommendations topic does not follow the contract."""


@dataclass(frozen=True, slots=True)
class ScoredItem:
    """One recommended item and its model score (higher is better).

    ``because``: ids of the window events that contributed most to this item's
    score, largest first (only with explanations on; None otherwise).
    """

    item_id: str
    score: float
    because: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.because is None:
            return {"item_id": self.item_id, "score": self.score}
        return {"item_id": self.item_id, "score": self.score, "because": list(self.because)}


@dataclass(frozen=True, slots=True)
class OnlineEval:
    """How the user's previous recommendation scored against the triggering event."""

    k: int
    hit: bool
    rank: int | None = None
    ndcg: float | None = None
    previous_event_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"k": self.k, "hit": self.hit, "rank": self.rank}
        if self.ndcg is not None:
            out["ndcg"] = self.ndcg
        if self.previous_event_id is not None:
            out["previous_event_id"] = self.previous_event_id
        return out


@dataclass(frozen=True, slots=True)
class Recommendation:
    """Top-K items for ``user_id`` after the triggering event ``event_id``.

    ``(user_id, event_id)`` identifies the message: a replayed event yields a
    message with the same pair, which consumers can drop as a repeat.
    """

    user_id: str
    items: tuple[ScoredItem, ...]
    model_version: int
    event_id: str
    event_ts_ms: int
    emitted_at_ms: int
    worker_id: str
    online: OnlineEval | None = None
    v: int = RECOMMENDATION_VERSION

    @classmethod
    def from_ranked(
        cls,
        user_id: str,
        item_ids: Sequence[str],
        scores: Iterable[float],
        *,
        model_version: int,
        event_id: str,
        event_ts_ms: int,
        emitted_at_ms: int,
        worker_id: str,
        online: OnlineEval | None = None,
        because: Sequence[Sequence[str]] | None = None,
    ) -> Recommendation:
        """Build from parallel ranked sequences (e.g. a numpy top-k; scores become Python floats).

        ``because``: per item, its top contributing event ids (explanations on).
        """
        if because is None:
            items = tuple(ScoredItem(i, float(s)) for i, s in zip(item_ids, scores, strict=True))
        else:
            items = tuple(
                ScoredItem(i, float(s), tuple(b)) for i, s, b in zip(item_ids, scores, because, strict=True)
            )
        return cls(
            user_id, items, int(model_version), event_id, int(event_ts_ms), int(emitted_at_ms), worker_id, online
        )

    @property
    def dedup_key(self) -> tuple[str, str]:
        """What identifies a repeat: the user and the triggering event."""
        return (self.user_id, self.event_id)

    def to_dict(self) -> dict[str, Any]:
        """The wire form described by the JSON Schema."""
        out: dict[str, Any] = {
            "v": self.v,
            "user_id": self.user_id,
            "items": [it.to_dict() for it in self.items],
            "model_version": self.model_version,
            "event_id": self.event_id,
            "event_ts": self.event_ts_ms,
            "emitted_at": self.emitted_at_ms,
            "worker_id": self.worker_id,
        }
        if self.online is not None:
            out["online"] = self.online.to_dict()
        return out

    def to_json(self) -> bytes:
        """UTF-8 JSON bytes for the recommendations topic."""
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(cls, raw: bytes | bytearray | memoryview | str) -> Recommendation:
        """Decode and check a message; raises :class:`RecommendationDecodeError` when it breaks the contract."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RecommendationDecodeError(f"not JSON: {exc}") from exc
        if type(obj) is not dict:
            raise RecommendationDecodeError("recommendation must be a JSON object")
        return cls.from_dict(obj)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Recommendation:
        """Build from the decoded wire form, checking required fields and types."""
        version = _get(obj, "v", int)
        if version != RECOMMENDATION_VERSION:
            raise RecommendationDecodeError(f"unsupported recommendation version {version}")
        raw_items = _get(obj, "items", list)
        items = []
        for pos, it in enumerate(raw_items):
            if type(it) is not dict:
                raise RecommendationDecodeError(f"items[{pos}] must be an object")
            score = it.get("score")
            if type(score) not in (int, float) or not math.isfinite(score):
                raise RecommendationDecodeError(f"items[{pos}].score must be a finite number")
            because = it.get("because")
            if because is not None and (type(because) is not list or any(type(e) is not str for e in because)):
                raise RecommendationDecodeError(f"items[{pos}].because must be a list of event ids")
            items.append(ScoredItem(_get(it, "item_id", str), float(score), None if because is None else tuple(because)))
        online_obj = obj.get("online")
        online = None
        if online_obj is not None:
            if type(online_obj) is not dict:
                raise RecommendationDecodeError("online must be an object or null")
            rank = online_obj.get("rank")
            ndcg = online_obj.get("ndcg")
            previous = online_obj.get("previous_event_id")
            if not (rank is None or type(rank) is int) or not (ndcg is None or type(ndcg) in (int, float)):
                raise RecommendationDecodeError("online.rank must be an integer and online.ndcg a number")
            if not (previous is None or type(previous) is str):
                raise RecommendationDecodeError("online.previous_event_id must be a string")
            online = OnlineEval(
                k=_get(online_obj, "k", int),
                hit=_get(online_obj, "hit", bool),
                rank=rank,
                ndcg=None if ndcg is None else float(ndcg),
                previous_event_id=previous,
            )
        return cls(
            user_id=_get(obj, "user_id", str),
            items=tuple(items),
            model_version=_get(obj, "model_version", int),
            event_id=_get(obj, "event_id", str),
            event_ts_ms=_get(obj, "event_ts", int),
            emitted_at_ms=_get(obj, "emitted_at", int),
            worker_id=_get(obj, "worker_id", str),
            online=online,
            v=version,
        )


def _get(obj: dict[str, Any], name: str, kind: type) -> Any:
    value = obj.get(name)
    # type() rather than isinstance: a JSON true must not pass as an integer.
    if type(value) is not kind:
        if name not in obj:
            raise RecommendationDecodeError(f"{name} is missing")
        raise RecommendationDecodeError(f"{name} must be {kind.__name__}, got {type(value).__name__}")
    return value
