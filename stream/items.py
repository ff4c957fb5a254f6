"""The versioned item catalogue contract: item records, validation, loading and the items topic.

An item record says what an item *is* (title, optional description,
categories, free attributes), so that a model can read its content and
recommend it before anyone has interacted with it. The published contract is
``schemas/item.schema.json``; :func:`parse_item` never raises on input and
answers an :class:`Item` or a :class:`~streamrec.stream.events.Rejection`,
exactly as :func:`~streamrec.stream.events.parse_event` does for events.

Where the catalogue lives: the compacted ``<prefix>.items`` topic, keyed by
item id, is the system of record (the latest record per item survives
compaction; a tombstone, a null value, removes an item). Whoever needs the
catalogue (the retrainer, a worker at start-up) replays it from the beginning
with :func:`read_catalogue`, as Kafka Streams builds a global table. The
model artifact keeps what a version was trained with (its item table is
computed from the content views at export time), so a version never depends
on the topic's later state. No Cassandra table: the catalogue is small next to
the users' windows, every worker needs all of it (not a partition), and a
second store would be a second truth to keep in step.

Decisions (mirrored in the JSON Schema, keep both in step):

* ``v``: integer, currently ``1``; absent means 1. Unknown extra fields are ignored.
* ``item_id``: a string, or an integer coerced to its decimal string (as events).
* ``title``: required, a non-empty string of at most ``max_title_chars``.
* ``description``: optional string (or null) of at most ``max_description_chars``.
* ``categories``: optional array of non-empty strings (each at most
  ``max_id_length`` characters, at most ``max_categories`` of them); duplicates
  are dropped, order kept.
* ``attributes``: optional object of scalars (string, number, boolean, null),
  at most ``max_attributes`` keys; free-form, carried as parsed.
"""

from __future__ import annotations

import asyncio
import csv
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from streamrec.errors import DataError
from streamrec.stream.events import DeadLetter, Reason, Rejection, _absent_or_wrong, _check_id, _json_type

if TYPE_CHECKING:
    from streamrec.config import Settings

log = logging.getLogger(__name__)

ITEM_VERSION = 1
# Separator of the categories column in CSV files (genres such as "Sci-Fi" keep their hyphen).
CSV_CATEGORY_SEPARATOR = "|"
_SCALAR_TYPES = (str, int, float, bool, type(None))


@dataclass(frozen=True, slots=True)
class Item:
    """A validated item record (contract version ``v``)."""

    item_id: str
    title: str
    description: str | None = None
    categories: tuple[str, ...] = ()
    attributes: dict[str, str | int | float | bool | None] = field(default_factory=dict)
    v: int = ITEM_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The canonical wire form; optional fields omitted when empty."""
        out: dict[str, Any] = {"v": self.v, "item_id": self.item_id, "title": self.title}
        if self.description:
            out["description"] = self.description
        if self.categories:
            out["categories"] = list(self.categories)
        if self.attributes:
            out["attributes"] = self.attributes
        return out

    def to_json(self) -> bytes:
        """UTF-8 JSON of :meth:`to_dict` (the value on the items topic)."""
        return orjson.dumps(self.to_dict())

    def kafka_key(self) -> bytes:
        """Records are keyed by item id: compaction keeps each item's latest record."""
        return self.item_id.encode()

    def text(self) -> str:
        """What the text encoder reads: title, attributes that read as words, categories, description."""
        parts = [self.title]
        year = self.attributes.get("year")
        if isinstance(year, int) and not isinstance(year, bool):
            parts[0] = f"{self.title} ({year})"
        if self.categories:
            parts.append(", ".join(self.categories))
        if self.description:
            parts.append(self.description)
        return ". ".join(parts)


@dataclass(frozen=True, slots=True)
class ItemRules:
    """Limits :func:`parse_item` enforces."""

    max_item_bytes: int = 64 * 1024
    max_id_length: int = 256
    max_title_chars: int = 1024
    max_description_chars: int = 16 * 1024
    max_categories: int = 64
    max_attributes: int = 64

    @classmethod
    def from_settings(cls, settings: Settings) -> ItemRules:
        """The byte and id limits events use apply to item records too."""
        return cls(max_item_bytes=settings.max_event_bytes, max_id_length=settings.max_id_length)


def parse_item(raw: bytes | bytearray | memoryview | None, *, rules: ItemRules = ItemRules()) -> Item | Rejection:
    """Parse one raw record (a Kafka value or a JSONL line) into an :class:`Item`, or say why not. Never raises."""
    if raw is None:
        return Rejection(Reason.EMPTY_PAYLOAD, "record has no value (null)")
    data = bytes(raw)
    if not data.strip():
        return Rejection(Reason.EMPTY_PAYLOAD, "record value is empty")
    if len(data) > rules.max_item_bytes:
        return Rejection(Reason.PAYLOAD_TOO_LARGE, f"{len(data)} bytes > limit {rules.max_item_bytes}")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return Rejection(Reason.INVALID_UTF8, f"invalid UTF-8 at byte {uexc.start}")
        return Rejection(Reason.MALFORMED_JSON, str(exc))
    if type(obj) is not dict:
        return Rejection(Reason.NOT_AN_OBJECT, f"top-level JSON value is {_json_type(obj)}, expected object")
    return validate_item(obj, rules=rules)


def validate_item(obj: Mapping[str, Any], *, rules: ItemRules = ItemRules()) -> Item | Rejection:
    """Validate an already decoded item object (CSV rows, RecBole ``.item`` rows, tests)."""
    version = obj.get("v", ITEM_VERSION)
    if type(version) is not int:
        return Rejection(Reason.WRONG_TYPE, f"v must be an integer, got {_json_type(version)}", "v")
    if version != ITEM_VERSION:
        return Rejection(Reason.UNSUPPORTED_VERSION, f"v={version} is not supported (supported: {ITEM_VERSION})", "v")
    item_id = _check_id(obj, "item_id", rules.max_id_length, True)
    if type(item_id) is not str:
        return item_id
    title = _check_text(obj, "title", rules.max_title_chars, required=True)
    if isinstance(title, Rejection):
        return title
    description = _check_text(obj, "description", rules.max_description_chars, required=False)
    if isinstance(description, Rejection):
        return description
    categories = _check_categories(obj, rules)
    if isinstance(categories, Rejection):
        return categories
    attributes = obj.get("attributes")
    if attributes is None:
        attributes = {}
    elif type(attributes) is not dict:
        return Rejection(Reason.WRONG_TYPE, f"attributes must be an object, got {_json_type(attributes)}", "attributes")
    elif len(attributes) > rules.max_attributes:
        return Rejection(Reason.FIELD_TOO_LONG, f"{len(attributes)} attributes > limit {rules.max_attributes}", "attributes")
    for key, value in attributes.items():
        if not isinstance(value, _SCALAR_TYPES):
            detail = f"attribute {key[:64]!r} must be a string, number, boolean or null, got {_json_type(value)}"
            return Rejection(Reason.WRONG_TYPE, detail, "attributes")
    return Item(item_id, title or "", description, categories, attributes)


def _check_text(obj: Mapping[str, Any], name: str, limit: int, *, required: bool) -> str | None | Rejection:
    value = obj.get(name)
    if value is None and not required:
        return None
    if type(value) is not str:
        return _absent_or_wrong(obj, name, "a string")
    text = value.strip()
    if not text:
        if not required:
            return None
        return Rejection(Reason.EMPTY_FIELD, f"{name} is empty", name)
    if len(text) > limit:
        return Rejection(Reason.FIELD_TOO_LONG, f"{name} has {len(text)} characters > limit {limit}", name)
    return text


def _check_categories(obj: Mapping[str, Any], rules: ItemRules) -> tuple[str, ...] | Rejection:
    value = obj.get("categories")
    if value is None:
        return ()
    if type(value) is not list:
        return Rejection(Reason.WRONG_TYPE, f"categories must be an array of strings, got {_json_type(value)}", "categories")
    if len(value) > rules.max_categories:
        return Rejection(Reason.FIELD_TOO_LONG, f"{len(value)} categories > limit {rules.max_categories}", "categories")
    seen: dict[str, None] = {}
    for entry in value:
        if type(entry) is not str:
            return Rejection(Reason.WRONG_TYPE, f"each category must be a string, got {_json_type(entry)}", "categories")
        name = entry.strip()
        if not name:
            return Rejection(Reason.EMPTY_FIELD, "a category is empty", "categories")
        if len(name) > rules.max_id_length:
            detail = f"a category has {len(name)} characters > limit {rules.max_id_length}"
            return Rejection(Reason.FIELD_TOO_LONG, detail, "categories")
        seen.setdefault(name, None)
    return tuple(seen)


# --- files --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One record read from a file, before validation: its raw bytes and where it came from."""

    location: str
    raw: bytes


def read_item_file(path: Path, fmt: str = "auto") -> Iterator[SourceRecord]:
    """Raw item records of a JSONL or CSV file (``fmt``: ``auto`` by suffix, ``jsonl`` or ``csv``).

    CSV: a header naming ``item_id`` and ``title``; optional ``description``
    and ``categories`` (``|``-separated); every other column becomes an
    attribute (all digits: an integer). Each row is turned into the JSON object
    it stands for, so both formats go through one validation.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    kind = fmt if fmt != "auto" else ("csv" if path.suffix.lower() == ".csv" else "jsonl")
    if kind == "jsonl":
        with path.open("rb") as fh:
            for n, line in enumerate(fh, start=1):
                if line.strip():
                    yield SourceRecord(f"{path}:{n}", line.rstrip(b"\r\n"))
    elif kind == "csv":
        with path.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
            reader = csv.DictReader(fh)
            missing = {"item_id", "title"} - set(reader.fieldnames or ())
            if missing:
                raise DataError(f"{path}: CSV header lacks {sorted(missing)}")
            for n, row in enumerate(reader, start=2):
                yield SourceRecord(f"{path}:{n}", orjson.dumps(csv_row_to_item(row)))
    else:
        raise DataError(f"unknown item file format {fmt!r}; choose jsonl or csv")


def csv_row_to_item(row: Mapping[str, str | None]) -> dict[str, Any]:
    """One CSV row as the item object it stands for (empty cells are absent)."""
    record: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    for key, value in row.items():
        if key is None or value is None or value == "":
            continue
        if key in ("item_id", "title", "description"):
            record[key] = value
        elif key == "categories":
            record[key] = [c for c in value.split(CSV_CATEGORY_SEPARATOR)]
        else:
            attributes[key] = int(value) if value.isdigit() else value
    if attributes:
        record["attributes"] = attributes
    return record


def records_from_dicts(records: Iterable[Mapping[str, Any]], source: str) -> Iterator[SourceRecord]:
    """Item dicts (e.g. :func:`streamrec.models.data.load_recbole_items`) as raw records."""
    for n, record in enumerate(records, start=1):
        yield SourceRecord(f"{source}#{n}", orjson.dumps(dict(record)))


def parse_items(records: Iterable[SourceRecord], rules: ItemRules = ItemRules()) -> tuple[list[Item], list[tuple[SourceRecord, Rejection]]]:
    """Validate records: the items, and each rejected record with why (later records of an id win)."""
    items: dict[str, Item] = {}
    rejected: list[tuple[SourceRecord, Rejection]] = []
    for record in records:
        verdict = parse_item(record.raw, rules=rules)
        if isinstance(verdict, Rejection):
            rejected.append((record, verdict))
        else:
            items.pop(verdict.item_id, None)
            items[verdict.item_id] = verdict
    return list(items.values()), rejected


# --- the items topic ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What ``streamrec items load`` did."""

    produced: int
    dead_lettered: int
    reasons: dict[str, int]


async def load_items(settings: Settings, records: Iterable[SourceRecord], *, rules: ItemRules | None = None) -> LoadReport:
    """Validate ``records``; produce the good ones to the items topic (keyed by item id) and dead-letter the rest.

    A bad record never stops the load: it goes to the dead-letter topic with
    its reason, its location in the file in ``detail`` and the items topic as
    ``source_topic`` (where it was headed).
    """
    from aiokafka import AIOKafkaProducer

    rules = rules or ItemRules.from_settings(settings)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
        **settings.kafka_client_kwargs(),
    )
    produced = dead = 0
    reasons: dict[str, int] = {}
    await producer.start()
    try:
        pending: list[asyncio.Future[Any]] = []
        for record in records:
            verdict = parse_item(record.raw, rules=rules)
            if isinstance(verdict, Rejection):
                located = Rejection(verdict.reason, f"{record.location}: {verdict.detail}", verdict.field)
                letter = DeadLetter.from_rejection(located, record.raw, topic=settings.items_topic)
                pending.append(await producer.send(settings.dlq_topic, letter.to_json(), key=letter.kafka_key()))
                dead += 1
                reasons[str(verdict.reason)] = reasons.get(str(verdict.reason), 0) + 1
                log.warning("item record %s rejected: %s (%s)", record.location, verdict.reason, verdict.detail)
            else:
                pending.append(await producer.send(settings.items_topic, verdict.to_json(), key=verdict.kafka_key()))
                produced += 1
        await producer.flush()
        await asyncio.gather(*pending)  # raises if any record was not delivered
    finally:
        await producer.stop()
    return LoadReport(produced=produced, dead_lettered=dead, reasons=reasons)


async def read_catalogue(settings: Settings, *, timeout_s: float = 30.0) -> dict[str, Item]:
    """The catalogue: the items topic replayed from the start to its current end, latest record per item.

    Tombstones (null values) remove an item; records that fail validation
    (written by another producer) are skipped with a warning.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
        **settings.kafka_client_kwargs(),
    )
    await consumer.start()
    catalogue: dict[str, Item] = {}
    rules = ItemRules.from_settings(settings)
    try:
        partitions = await _partitions(settings, settings.items_topic)
        assigned = [TopicPartition(settings.items_topic, p) for p in partitions]
        if not assigned:
            return catalogue
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        remaining = {tp for tp in assigned if ends[tp] > 0}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while remaining:
            if loop.time() > deadline:
                raise DataError(f"reading {settings.items_topic} took more than {timeout_s:g} s")
            batches = await consumer.getmany(*remaining, timeout_ms=500)
            for tp, messages in batches.items():
                for message in messages:
                    key = (message.key or b"").decode("utf-8", "replace")
                    if message.value is None:
                        catalogue.pop(key, None)
                        continue
                    verdict = parse_item(message.value, rules=rules)
                    if isinstance(verdict, Rejection):
                        log.warning("skipping item record at %s[%d]@%d: %s", tp.topic, tp.partition, message.offset, verdict.detail)
                    else:
                        catalogue[verdict.item_id] = verdict
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return catalogue


async def _partitions(settings: Settings, topic: str) -> list[int]:
    """The topic's partition ids from fresh metadata ([] when it does not exist)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, **settings.kafka_client_kwargs())
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(p["partition"] for d in described if d["topic"] == topic and not d.get("error_code") for p in d["partitions"])
