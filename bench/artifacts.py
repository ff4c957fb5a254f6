"""The model a benchmark serves: a given registry or artifact, or one trained quickly on the run's own events.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from streamrec.config import Settings
from streamrec.onnx.artifact import MANIFEST, version_dir_name
from streamrec.onnx.registry import ModelRegistry, resolve_artifact_dir


def prepare_model(settings: Settings, model: Path | None, train_events: Sequence[dict[str, Any]], epochs: int,
                  seed: int = 0) -> dict[str, Any]:
    """Make ``settings.models_path`` a registry with a live model: copy ``model`` in or train one quickly.

    ``model`` is a model directory (its live version is copied, as a worker
    would serve it) or one artifact directory; None trains on ``train_events``. An empty
    ``train_events`` with no ``model`` leaves the registry empty (popularity fallback).
    """
    import shutil


    target = settings.models_path
    target.mkdir(parents=True, exist_ok=True)
    if model is not None:
        model = Path(model)
        source = resolve_artifact_dir(model)
        name = source.name if source != model else version_dir_name(1)
        shutil.copytree(source, target / name, dirs_exist_ok=True)
        return {"source": str(model), "trained": False}
    if not train_events:
        return {"source": None, "trained": False, "note": "no model: popularity fallback"}
    from streamrec.onnx.writer import train_from_events  # torch: 3-6.5 s, only when a bench trains

    t0 = time.monotonic()
    artifact = train_from_events(train_events, target, epochs=epochs, seed=seed)
    info: dict[str, Any] = {"source": str(artifact), "trained": True, "train_events": len(train_events),
                            "epochs": epochs, "train_seconds": round(time.monotonic() - t0, 1)}
    metrics = artifact / "metrics.json"
    if metrics.exists():
        info["offline_test"] = json.loads(metrics.read_text()).get("test", {})
    return info


def prepare_shadow(settings: Settings, model: Path, fraction: float) -> dict[str, Any]:
    """Copy ``model`` into the run's registry as the next version and make it the shadow on ``fraction`` of users.

    The live version is pinned first; the copy's manifest gets its new
    version number (workers check that the loaded shadow is the one pointed at).
    """
    import shutil

    registry = ModelRegistry.at(settings.models_path)
    registry.pin_live()
    source = resolve_artifact_dir(Path(model))
    version = max(registry.storage.versions(), default=0) + 1
    target = registry.storage.artifact_path(version)
    shutil.copytree(source, target)
    manifest = json.loads((target / MANIFEST).read_text())
    manifest["version"] = version
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2))
    pointer = registry.start_shadow(version, fraction, reason="bench latency")
    return {"source": str(model), "version": pointer.version, "fraction": pointer.fraction}
