"""The catalogue as a model reads it: item records -> :class:`~streamrec.models.content.ItemContent`.

Training a multi-view model (``streamrec train --items``, the retrainer when
the live version is multi-view) needs each item's text vector and categories.
The records come from a file or from the items topic (the system of record,
:func:`streamrec.stream.items.read_catalogue`); the vectors from the packaged
text encoder, cached on disk by their texts (:func:`encode_texts_cached`), so
a retrain round encodes only a catalogue it has not seen.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path

from streamrec.config import Settings
from streamrec.errors import DataError
from streamrec.models.content import ItemContent
from streamrec.models.data import fetch_ml100k_items, load_recbole_items
from streamrec.models.text import encode_texts_cached
from streamrec.stream.items import Item, parse_items, read_catalogue, read_item_file, records_from_dicts

log = logging.getLogger(__name__)

TOPIC_SOURCE = "topic"


def catalogue_content(items: Iterable[Item], cache_dir: Path, *, progress: bool = False) -> ItemContent:
    """Text vectors (packaged encoder, cached) and categories of ``items``, in their order."""
    items = list(items)
    vectors = encode_texts_cached([i.text() for i in items], cache_dir, progress=progress)
    return ItemContent([i.item_id for i in items], vectors, [i.categories for i in items])


def items_from_source(settings: Settings, source: str) -> list[Item]:
    """Item records from ``source``: ``topic`` (the items topic), ``ml-100k``, a RecBole ``.item``, JSONL or CSV file.

    Bad records of a file are skipped with a warning (``streamrec items load``
    is where they are dead-lettered).
    """
    if source == TOPIC_SOURCE:
        items = list(asyncio.run(read_catalogue(settings)).values())
        if not items:
            raise DataError(f"the items topic {settings.items_topic} holds no item records (streamrec items load FILE)")
        return items
    if source.lower() in {"ml-100k", "ml100k", "movielens-100k"}:
        path = fetch_ml100k_items(settings.state_dir / "data")
        records = records_from_dicts(load_recbole_items(path), str(path))
    elif Path(source).suffix.lower() == ".item":
        records = records_from_dicts(load_recbole_items(Path(source)), source)
    else:
        records = read_item_file(Path(source))
    items, rejected = parse_items(records)
    for record, why in rejected:
        log.warning("item record %s skipped: %s (%s)", record.location, why.reason, why.detail)
    if not items:
        raise DataError(f"{source}: no valid item records")
    return items
