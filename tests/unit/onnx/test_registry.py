"""The model registry: publish, rollback, refusal of broken artifacts, no path escapes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from streamrec.errors import ModelError
from streamrec.models.config import EncoderConfig
from streamrec.onnx.registry import ModelRegistry, parse_version, resolve_artifact_dir


@pytest.fixture(scope="module")
def one_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamrec.testing.artifacts import random_artifact

    root = tmp_path_factory.mktemp("template")
    return random_artifact(root, EncoderConfig(n_items=30, hidden=16, layers=1, heads=1, max_len=8))


def make_registry(tmp_path: Path, template: Path, versions: int) -> ModelRegistry:
    import json

    root = tmp_path / "models"
    root.mkdir()
    for v in range(1, versions + 1):
        target = root / f"v{v:06d}"
        shutil.copytree(template, target)
        manifest = json.loads((target / "manifest.json").read_text())
        manifest["version"] = v
        (target / "manifest.json").write_text(json.dumps(manifest))
    return ModelRegistry.at(root)


def test_without_a_pointer_the_newest_version_is_live(tmp_path: Path, one_artifact: Path) -> None:
    registry = make_registry(tmp_path, one_artifact, 2)
    assert registry.live_version() == 2


def test_publish_and_rollback(tmp_path: Path, one_artifact: Path) -> None:
    registry = make_registry(tmp_path, one_artifact, 3)
    registry.publish(1)
    registry.publish(2)
    assert registry.live_version() == 2
    assert {r.version: r.status for r in registry.list()} == {1: "retired", 2: "live", 3: "candidate"}
    assert registry.rollback() == 1
    assert registry.live_version() == 1
    assert registry.rollback("v000002") == 2


def test_rejected_versions_are_recorded_with_the_reason(tmp_path: Path, one_artifact: Path) -> None:
    registry = make_registry(tmp_path, one_artifact, 2)
    registry.publish(1)
    registry.reject(2, "holdout NDCG@10 0.10 < live 0.20 - tolerance")
    record = registry.record(2)
    assert record.status == "rejected" and "holdout" in record.reason
    assert registry.live_version() == 1


def test_a_corrupted_artifact_cannot_be_published(tmp_path: Path, one_artifact: Path) -> None:
    registry = make_registry(tmp_path, one_artifact, 2)
    registry.publish(1)
    onnx_file = registry.storage.artifact_path(2) / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:100])  # truncated
    with pytest.raises(ModelError, match="bytes|checksum"):
        registry.publish(2)
    assert registry.live_version() == 1


@pytest.mark.parametrize("bad", ["../../etc", "v1/../../x", "-1", "0", "", "abc", "1e3"])
def test_crafted_version_names_are_refused(bad: str) -> None:
    with pytest.raises(ModelError):
        parse_version(bad)


def test_version_names_parse() -> None:
    assert parse_version("3") == parse_version("v000003") == parse_version(3) == 3


def test_a_model_directory_resolves_to_its_live_version(tmp_path: Path, one_artifact: Path) -> None:
    registry = make_registry(tmp_path, one_artifact, 3)
    root = tmp_path / "models"
    assert resolve_artifact_dir(root) == root / "v000003"  # no pointer yet: the newest
    registry.publish(2)
    assert resolve_artifact_dir(root) == root / "v000002"
    assert resolve_artifact_dir(root / "v000001") == root / "v000001"  # a version directory as given
    for version in (1, 2, 3):
        registry.reject(version, "worse")
    (root / "LIVE").unlink()
    with pytest.raises(ModelError, match="none is live"):
        resolve_artifact_dir(root)


def test_a_shadow_is_never_live_and_a_verdict_ends_it(tmp_path: Path, one_artifact: Path) -> None:
    registry = make_registry(tmp_path, one_artifact, 3)
    registry.publish(1)
    pointer = registry.start_shadow(3, 0.25)
    assert (pointer.version, pointer.fraction) == (3, 0.25)
    assert registry.shadow() == pointer and registry.shadow_path() == registry.storage.artifact_path(3)
    assert {r.version: r.status for r in registry.list()} == {1: "live", 2: "candidate", 3: "shadow"}
    assert registry.live_version() == 1
    with pytest.raises(ModelError, match="is live"):
        registry.start_shadow(1, 1.0)
    with pytest.raises(ModelError, match="fraction"):
        registry.start_shadow(2, 1.5)
    registry.reject(3, "online hit@10 0.10 vs live 0.30")
    assert registry.shadow() is None and registry.record(3).status == "rejected"
    with pytest.raises(ModelError, match="rejected"):
        registry.start_shadow(3, 1.0)
    registry.start_shadow(2, 1.0)
    registry.publish(2)
    assert registry.shadow() is None and registry.live_version() == 2


def test_without_a_live_pointer_shadowing_pins_live_first(tmp_path: Path, one_artifact: Path) -> None:
    registry = make_registry(tmp_path, one_artifact, 2)
    with pytest.raises(ModelError, match="is live"):
        registry.start_shadow(2, 1.0)  # the newest version is what workers serve without a pointer
    registry.start_shadow(1, 1.0)
    assert registry.storage.read_text("LIVE") == "2\n" and registry.live_version() == 2
    assert registry.stop_shadow() == 1 and registry.record(1).status == "candidate" and registry.shadow() is None
