"""`streamrec train --items`: a multi-view artifact through the normal training path, ready to serve new items."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
from click.testing import CliRunner

from streamrec.bench.new_items import build_scenario
from streamrec.cli import _register_commands, cli
from streamrec.onnx.artifact import load_artifact
from streamrec.onnx.content_head import load_content_head


def test_train_with_items_writes_a_multi_view_artifact_with_its_content_head(tmp_path: Path) -> None:
    _register_commands()  # what `streamrec` does at start: it also installs the item reader `--items` uses
    scenario = build_scenario(num_events=1500)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(orjson.dumps(e) for e in scenario.events) + b"\n")
    items = tmp_path / "items.jsonl"
    items.write_bytes(b"\n".join(i.to_json() for i in scenario.items) + b'\n{"item_id": "bad", "title": ""}\n')
    out = tmp_path / "models"
    result = CliRunner().invoke(cli, ["train", "--data", str(events), "--items", str(items), "--epochs", "2",
                                      "--patience", "2", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["multi_view"] is True
    artifact = load_artifact(Path(summary["artifact"]))
    assert artifact.config.item_content and artifact.config.id_dropout == 0.5
    head = load_content_head(artifact.path)
    assert head is not None and set(head.categories) == {c for i in scenario.items for c in i.categories}

    # Without --items: the id-only artifact, as before.
    plain = CliRunner().invoke(cli, ["train", "--data", str(events), "--epochs", "1", "--patience", "1",
                                     "--out", str(out), "--no-progress"])
    assert plain.exit_code == 0, plain.output
    artifact = load_artifact(Path(json.loads(plain.stdout[plain.stdout.index("{"):])["artifact"]))
    assert not artifact.config.item_content and load_content_head(artifact.path) is None
