"""The item catalogue contract: validation with reasons, files, the RecBole .item reader, the schema."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import orjson
import pytest

from streamrec.errors import DataError
from streamrec.models.data import load_recbole_items
from streamrec.stream.events import Reason, Rejection, load_schema
from streamrec.stream.items import Item, ItemRules, parse_item, parse_items, read_item_file, records_from_dicts


def _parse(obj: object) -> Item | Rejection:
    return parse_item(orjson.dumps(obj))


def test_a_full_record_parses_and_round_trips() -> None:
    record = {"item_id": 7, "title": "  Toy Story ", "description": "Toys come alive.",
              "categories": ["Animation", "Comedy", "Animation"], "attributes": {"year": 1995, "kids": True}}
    item = _parse(record)
    assert isinstance(item, Item)
    assert item.item_id == "7" and item.title == "Toy Story"
    assert item.categories == ("Animation", "Comedy")  # duplicates dropped, order kept
    assert parse_item(item.to_json()) == item
    assert item.kafka_key() == b"7"
    assert item.text() == "Toy Story (1995). Animation, Comedy. Toys come alive."


@pytest.mark.parametrize(
    ("record", "reason", "field"),
    [
        ({"title": "x"}, Reason.MISSING_FIELD, "item_id"),
        ({"item_id": "", "title": "x"}, Reason.EMPTY_ID, "item_id"),
        ({"item_id": "a"}, Reason.MISSING_FIELD, "title"),
        ({"item_id": "a", "title": "   "}, Reason.EMPTY_FIELD, "title"),
        ({"item_id": "a", "title": 5}, Reason.WRONG_TYPE, "title"),
        ({"item_id": "a", "title": "x" * 2000}, Reason.FIELD_TOO_LONG, "title"),
        ({"item_id": "a", "title": "x", "description": 3}, Reason.WRONG_TYPE, "description"),
        ({"item_id": "a", "title": "x", "categories": "Drama"}, Reason.WRONG_TYPE, "categories"),
        ({"item_id": "a", "title": "x", "categories": ["Drama", ""]}, Reason.EMPTY_FIELD, "categories"),
        ({"item_id": "a", "title": "x", "categories": [1]}, Reason.WRONG_TYPE, "categories"),
        ({"item_id": "a", "title": "x", "attributes": []}, Reason.WRONG_TYPE, "attributes"),
        ({"item_id": "a", "title": "x", "attributes": {"k": {"nested": 1}}}, Reason.WRONG_TYPE, "attributes"),
        ({"v": 2, "item_id": "a", "title": "x"}, Reason.UNSUPPORTED_VERSION, "v"),
    ],
)
def test_bad_records_are_rejected_with_a_reason_and_field(record: dict, reason: Reason, field: str) -> None:
    verdict = _parse(record)
    assert isinstance(verdict, Rejection)
    assert (verdict.reason, verdict.field) == (reason, field)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(None, Reason.EMPTY_PAYLOAD), (b"", Reason.EMPTY_PAYLOAD), (b"{not json", Reason.MALFORMED_JSON),
     (b"\xff\xfe", Reason.INVALID_UTF8), (b"[1]", Reason.NOT_AN_OBJECT)],
)
def test_undecodable_records_are_rejected(raw: bytes | None, reason: Reason) -> None:
    verdict = parse_item(raw)
    assert isinstance(verdict, Rejection) and verdict.reason is reason


def test_an_oversized_record_is_rejected() -> None:
    verdict = parse_item(orjson.dumps({"item_id": "a", "title": "x", "description": "y" * 5000}),
                         rules=ItemRules(max_item_bytes=1000))
    assert isinstance(verdict, Rejection) and verdict.reason is Reason.PAYLOAD_TOO_LARGE


def test_the_published_schema_accepts_what_the_parser_accepts() -> None:
    schema = load_schema("item")
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for example in schema["examples"]:
        validator.validate(example)
        assert isinstance(_parse(example), Item)
    for bad in ({"item_id": "a"}, {"item_id": "a", "title": ""}, {"item_id": "a", "title": "x", "categories": [""]}):
        assert not validator.is_valid(bad) and isinstance(_parse(bad), Rejection)


def test_jsonl_and_csv_files_load_the_same_items(tmp_path: Path) -> None:
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_bytes(b'{"item_id": "a", "title": "Alien", "categories": ["Sci-Fi", "Horror"], "attributes": {"year": 1979}}\n'
                      b"\n"
                      b'{"item_id": "b", "title": ""}\n')
    csv_file = tmp_path / "items.csv"
    csv_file.write_text("item_id,title,categories,year\na,Alien,Sci-Fi|Horror,1979\nb,,,\n")
    for path in (jsonl, csv_file):
        items, rejected = parse_items(read_item_file(path))
        assert [i.to_dict() for i in items] == [
            {"v": 1, "item_id": "a", "title": "Alien", "categories": ["Sci-Fi", "Horror"], "attributes": {"year": 1979}}
        ]
        assert [(r.location, j.reason) for r, j in rejected] == [(f"{path}:3", Reason.MISSING_FIELD if path == csv_file else Reason.EMPTY_FIELD)]


def test_a_csv_without_the_required_columns_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("id,name\n1,x\n")
    with pytest.raises(DataError, match="item_id"):
        list(read_item_file(path))


def test_the_recbole_item_file_becomes_item_records(tmp_path: Path) -> None:
    path = tmp_path / "ml.item"
    path.write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                    "1\tToy Story\t1995\tAnimation Children's Comedy\n"
                    "267\tunknown\t\tunknown\n")
    items, rejected = parse_items(records_from_dicts(load_recbole_items(path), str(path)))
    assert not rejected
    assert items[0] == Item("1", "Toy Story", None, ("Animation", "Children's", "Comedy"), {"year": 1995})
    assert items[1].attributes == {}
