"""Loading interaction logs in every supported format, and the splits."""

from __future__ import annotations

import json
import sys

import pytest

from streamrec.errors import DataError
from streamrec.models.data import load_events, parse_ts_ms
from streamrec.models.splits import leave_one_out, temporal_split


def write(path, text):
    path.write_text(text)
    return path


def test_jsonl_epoch_ms_and_iso(tmp_path):
    p = write(tmp_path / "e.jsonl", "\n".join([
        json.dumps({"user_id": "u1", "item_id": "i1", "event_type": "click", "ts": 1_700_000_000_000}),
        "",
        json.dumps({"user_id": 7, "item_id": "i2", "ts": "2023-11-14T22:13:20Z"}),
        json.dumps({"user_id": "u1", "item_id": "i3", "event_type": "view", "ts": "2023-11-14T22:13:21"}),
    ]))
    log = load_events(p)
    assert log.user_ids == ["u1", "7", "u1"]
    assert log.event_types == ["click", "view", "view"]  # missing type -> default "view"
    assert log.ts_ms == [1_700_000_000_000, 1_700_000_000_000, 1_700_000_001_000]  # naive ISO = UTC


def test_jsonl_errors_name_the_line(tmp_path):
    p = write(tmp_path / "bad.jsonl", '{"user_id": "u", "item_id": "i", "ts": 1}\n{not json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        load_events(p)
    p = write(tmp_path / "missing.jsonl", '{"user_id": "u", "ts": 1}\n')
    with pytest.raises(DataError, match="item_id"):
        load_events(p)


def test_csv(tmp_path):
    p = write(tmp_path / "e.csv", "user_id,item_id,event_type,ts\nu1,i1,purchase,5\nu2,i2,,2023-01-01T00:00:00+01:00\n")
    log = load_events(p)
    assert log.item_ids == ["i1", "i2"]
    assert log.event_types == ["purchase", "view"]
    assert log.ts_ms == [5, 1672527600000]


def test_csv_missing_column(tmp_path):
    p = write(tmp_path / "e.csv", "user,item,ts\nu1,i1,5\n")
    with pytest.raises(DataError, match="user_id"):
        load_events(p)


def test_parquet_with_the_csv_columns_loads(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"user_id": ["u1", "u1", "u2"], "item_id": ["i1", "i2", "i1"],
                             "event_type": ["view", "purchase", "view"], "ts": [3, 5, 4]}), path)
    log = load_events(path)
    assert sorted(zip(log.user_ids, log.item_ids, log.event_types, log.ts_ms)) == [
        ("u1", "i1", "view", 3), ("u1", "i2", "purchase", 5), ("u2", "i1", "view", 4)]


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    p = write(tmp_path / "e.parquet", "not really parquet")
    with pytest.raises(DataError, match="pyarrow"):
        load_events(p)


def test_movielens_u_data_seconds_to_ms(tmp_path):
    p = write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    log = load_events(p)
    assert log.user_ids == ["196", "186"]
    assert log.item_ids == ["242", "302"]
    assert log.ts_ms == [881250949000, 891717742000]


def test_recbole_inter(tmp_path):
    p = write(tmp_path / "ml.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n")
    log = load_events(p)
    assert (log.user_ids, log.item_ids, log.ts_ms) == (["196"], ["242"], [881250949000])


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="format"):
        load_events(write(tmp_path / "x.bin", ""))
    with pytest.raises(DataError, match="no such file"):
        load_events(tmp_path / "nope.csv")


def test_parse_ts_rejects_garbage():
    with pytest.raises(ValueError):
        parse_ts_ms("yesterday")
    with pytest.raises(ValueError):
        parse_ts_ms(True)


def _log(tmp_path, rows):
    lines = ["user_id,item_id,ts"] + [f"{u},{i},{t}" for u, i, t in rows]
    return load_events(write(tmp_path / "e.csv", "\n".join(lines) + "\n"))


def test_user_sequences_sorted_by_time_ties_in_file_order(tmp_path):
    log = _log(tmp_path, [("u", "c", 30), ("u", "a", 10), ("u", "b1", 20), ("u", "b2", 20)])
    assert list(log.user_sequences()["u"].item_ids) == ["a", "b1", "b2", "c"]


def test_leave_one_out(tmp_path):
    log = _log(tmp_path, [("u", f"i{n}", n) for n in range(5)] + [("short", "x", 1), ("short", "y", 2)])
    split = leave_one_out(log)
    assert list(split.train["u"].item_ids) == ["i0", "i1", "i2"]
    (valid,), (test,) = split.valid, split.test
    assert valid.target == "i3" and list(valid.history.item_ids) == ["i0", "i1", "i2"]
    assert test.target == "i4" and list(test.history.item_ids) == ["i0", "i1", "i2", "i3"]
    # Users too short for validation and test only train.
    assert list(split.train["short"].item_ids) == ["x", "y"]


def test_temporal_split(tmp_path):
    rows = [("u", f"i{n}", n) for n in range(10)] + [("v", "late", 9)]
    split = temporal_split(_log(tmp_path, rows), valid_frac=0.2, test_frac=0.2)
    train_items = list(split.train["u"].item_ids)
    assert train_items == [f"i{n}" for n in range(len(train_items))]
    # Every case's history is strictly the user's earlier events; no case for a user without history.
    for case in (*split.valid, *split.test):
        assert case.user_id == "u"
        n = int(case.target[1:])
        assert list(case.history.item_ids) == [f"i{k}" for k in range(n)]
    assert max(int(c.target[1:]) for c in split.valid) < min(int(c.target[1:]) for c in split.test)
    assert len(split.valid) + len(split.test) + len(train_items) == 10
