"""`streamrec items load` against the real Kafka: good records on the compacted items topic, bad ones dead-lettered."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from streamrec.config import Settings
from streamrec.stream.events import DeadLetter
from streamrec.stream.items import read_catalogue
from tests.integration.helpers import produce, read_topic

pytestmark = pytest.mark.integration


def items_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **settings.to_env()}
    return subprocess.run([sys.executable, "-m", "streamrec", "items", "load", *args],
                          env=env, capture_output=True, text=True, timeout=120)


def test_items_load_keys_good_records_by_item_and_dead_letters_bad_ones(isolated: Settings, tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_bytes(
        b'{"item_id": "m1", "title": "Alien", "categories": ["Sci-Fi", "Horror"], "attributes": {"year": 1979}}\n'
        b'{"item_id": "m2", "title": ""}\n'
        b'not json at all\n'
        b'{"item_id": 3, "title": "Heat", "categories": ["Crime"]}\n'
        b'{"item_id": "m1", "title": "Alien (director\'s cut)", "categories": ["Sci-Fi"]}\n'
    )
    proc = items_cli(isolated, str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "produced 3 items" in proc.stdout and "dead-lettered 2 bad records" in proc.stdout

    on_topic = read_topic(isolated, isolated.items_topic, min_messages=3)
    assert sorted(k for k, _ in on_topic) == [b"3", b"m1", b"m1"]
    assert {orjson.loads(v)["title"] for _, v in on_topic} == {"Alien", "Heat", "Alien (director's cut)"}

    letters = [DeadLetter.from_json(v) for _, v in read_topic(isolated, isolated.dlq_topic, min_messages=2)]
    assert sorted(l.reason for l in letters) == ["empty_field", "malformed_json"]
    assert {l.payload for l in letters} == {b'{"item_id": "m2", "title": ""}', b"not json at all"}
    assert all(l.source_topic == isolated.items_topic and str(path) in l.detail for l in letters)

    # The catalogue as a worker or the retrainer reads it: the latest record per item.
    catalogue = asyncio.run(read_catalogue(isolated))
    assert sorted(catalogue) == ["3", "m1"]
    assert catalogue["m1"].title == "Alien (director's cut)"
    # A tombstone removes an item from the catalogue.
    produce(isolated, [(b"3", None)], topic=isolated.items_topic)
    assert sorted(asyncio.run(read_catalogue(isolated))) == ["m1"]

    admin = AdminClient({"bootstrap.servers": isolated.kafka_bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, isolated.items_topic)
    config = admin.describe_configs([resource])[resource].result()
    assert config["cleanup.policy"].value == "compact"


def test_items_load_reads_a_csv_and_reports_a_missing_file(isolated: Settings, tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("item_id,title,categories,price\nsku-1,Trail shoe,shoes|running,89\nsku-2,,,\n")
    proc = items_cli(isolated, str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    on_topic = read_topic(isolated, isolated.items_topic, min_messages=1)
    assert [orjson.loads(v) for _, v in on_topic] == [
        {"v": 1, "item_id": "sku-1", "title": "Trail shoe", "categories": ["shoes", "running"], "attributes": {"price": 89}}
    ]
    missing = items_cli(isolated, str(tmp_path / "nope.jsonl"))
    assert missing.returncode != 0 and "no such file" in missing.stderr
