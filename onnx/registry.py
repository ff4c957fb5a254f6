"""The model registry: versions, their status, and which one is live.

Layout under the model directory (a shared volume in docker-compose/k8s)::

    v000001/ v000002/ ...        artifacts (immutable, checksummed; written atomically by write_artifact)
    registry/v000002.json        status record: candidate | shadow | live | rejected | retired, with history
    LIVE                         the live version number (replaced atomically with rename)
    SHADOW                       the shadowed version and its user fraction, JSON (absent: no shadow)

Readers never see a half-written version: artifacts appear by ``rename`` of a
complete directory, status records and ``LIVE`` by ``rename`` of a complete
file. Version names are always formatted from integers, so a crafted name
cannot escape the directory. The storage is behind :class:`RegistryStorage`,
which an S3-compatible store can implement (put-if-absent for artifacts,
atomic object replacement for ``LIVE``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from streamrec.errors import ModelError
from streamrec.onnx.artifact import MANIFEST, list_versions, load_artifact, version_dir_name

log = logging.getLogger(__name__)

STATUSES = ("candidate", "shadow", "live", "rejected", "retired")
_VERSION_TEXT = re.compile(r"^v?0*(\d{1,9})$")


def parse_version(text: str | int) -> int:
    """``3``, ``"3"``, ``"v000003"`` → 3; anything else (``../x``, ``3/..``) is refused."""
    if isinstance(text, int):
        if text < 1:
            raise ModelError(f"model versions start at 1, got {text}")
        return text
    match = _VERSION_TEXT.match(text.strip())
    if not match or int(match.group(1)) < 1:
        raise ModelError(f"{text!r} is not a model version (expected a number such as 3 or v000003)")
    return int(match.group(1))


class RegistryStorage(Protocol):
    """What the registry needs from storage (filesystem here; S3-compatible stores can implement it)."""

    def versions(self) -> list[int]: ...
    def artifact_path(self, version: int) -> Path: ...
    def read_text(self, name: str) -> str | None: ...
    def replace_text(self, name: str, text: str) -> None: ...


@dataclass(frozen=True)
class FilesystemStorage:
    """Registry storage on a local or shared filesystem path."""

    root: Path

    def versions(self) -> list[int]:
        return list_versions(self.root)

    def artifact_path(self, version: int) -> Path:
        return self.root / version_dir_name(version)

    def _file(self, name: str) -> Path:
        path = (self.root / name).resolve()
        if self.root.resolve() not in path.parents:
            raise ModelError(f"registry path {name!r} escapes {self.root}")
        return path

    def read_text(self, name: str) -> str | None:
        try:
            return self._file(name).read_text()
        except FileNotFoundError:
            return None

    def replace_text(self, name: str, text: str) -> None:
        target = self._file(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)


@dataclass(frozen=True)
class ShadowPointer:
    """The version workers score beside the live one, and the share of users they score it for."""

    version: int
    fraction: float

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "fraction": self.fraction})

    @classmethod
    def from_json(cls, text: str) -> "ShadowPointer":
        try:
            doc = json.loads(text)
            return cls(parse_version(int(doc["version"])), check_fraction(float(doc["fraction"])))
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise ModelError(f"unreadable SHADOW pointer {text!r}: {exc}") from exc


def check_fraction(fraction: float) -> float:
    """A shadow fraction is in (0, 1]: the share of users whose events the shadow is scored on."""
    if not 0.0 < fraction <= 1.0:
        raise ModelError(f"shadow fraction must be in (0, 1], got {fraction}")
    return fraction


@dataclass
class VersionRecord:
    """One registry row (what `streamrec model list` prints)."""

    version: int
    status: str
    created_at: str = ""
    checksum: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    parity_passed: bool | None = None
    reason: str = ""
    history: list[dict[str, str]] = field(default_factory=list)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ModelRegistry:
    """Versions, statuses and the live pointer."""

    def __init__(self, storage: RegistryStorage) -> None:
        self.storage = storage

    @classmethod
    def at(cls, root: Path) -> "ModelRegistry":
        Path(root).mkdir(parents=True, exist_ok=True)
        return cls(FilesystemStorage(Path(root)))

    # -- reading ---------------------------------------------------------
    def live_version(self) -> int | None:
        """The live version: the LIVE pointer, else (no pointer yet) the newest version not rejected."""
        pointer = self._pointer()
        if pointer is not None:
            return pointer
        for version in reversed(self.storage.versions()):
            if self._status_doc(version).get("status", "candidate") not in ("rejected", "retired", "shadow"):
                return version
        return None

    def _pointer(self) -> int | None:
        text = self.storage.read_text("LIVE")
        return parse_version(text.strip()) if text is not None and text.strip() else None

    def live_path(self) -> Path | None:
        version = self.live_version()
        return None if version is None else self.storage.artifact_path(version)

    def shadow(self) -> ShadowPointer | None:
        """The shadowed version (never the live one), or None."""
        text = self.storage.read_text("SHADOW")
        if text is None or not text.strip():
            return None
        pointer = ShadowPointer.from_json(text)
        return None if pointer.version == self._pointer() else pointer

    def shadow_path(self) -> Path | None:
        pointer = self.shadow()
        return None if pointer is None else self.storage.artifact_path(pointer.version)

    def _status_doc(self, version: int) -> dict[str, Any]:
        text = self.storage.read_text(f"registry/{version_dir_name(version)}.json")
        return json.loads(text) if text else {}

    def record(self, version: int) -> VersionRecord:
        path = self.storage.artifact_path(version)
        doc = self._status_doc(version)
        live = self.live_version()
        status = "live" if version == live else doc.get("status", "candidate")
        if status == "live" and version != live:
            status = "retired"
        if status == "shadow" and (self.shadow() or ShadowPointer(0, 1.0)).version != version:
            status = "candidate"  # the shadow moved on without a verdict on this one
        manifest: dict[str, Any] = {}
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError):
            pass
        metrics = _read_json_quiet(path / "metrics.json")
        parity = _read_json_quiet(path / "parity.json")
        checksum = (manifest.get("files", {}).get("model.onnx") or {}).get("sha256", "")
        return VersionRecord(
            version=version, status=status, created_at=manifest.get("created_at", ""), checksum=checksum,
            metrics=metrics, parity_passed=parity.get("passed") if parity else None,
            reason=doc.get("reason", ""), history=doc.get("history", []),
        )

    def list(self) -> list[VersionRecord]:
        return [self.record(v) for v in self.storage.versions()]

    # -- writing ---------------------------------------------------------
    def _set_status(self, version: int, status: str, reason: str = "") -> None:
        if status not in STATUSES:
            raise ModelError(f"unknown status {status!r}")
        doc = self._status_doc(version)
        history = doc.get("history", [])
        history.append({"status": status, "at": _now(), "reason": reason})
        self.storage.replace_text(
            f"registry/{version_dir_name(version)}.json",
            json.dumps({"status": status, "reason": reason, "history": history}, indent=2),
        )

    def mark_candidate(self, version: int, reason: str = "") -> None:
        self._set_status(version, "candidate", reason)

    def reject(self, version: int, reason: str) -> None:
        self._set_status(version, "rejected", reason)
        self._end_shadow_of(version)
        log.warning("model version %d rejected: %s", version, reason)

    def start_shadow(self, version: int | str, fraction: float, reason: str = "shadowed") -> ShadowPointer:
        """Make ``version`` the shadow: workers score it on ``fraction`` of users and never serve it.

        The live version is pinned first, so the "newest version" fallback can
        never make the shadow live; a rejected, retired or live version cannot
        be shadowed.
        """
        version = parse_version(version)
        if version not in self.storage.versions():
            raise ModelError(f"model version {version} does not exist")
        load_artifact(self.storage.artifact_path(version))  # refuse a corrupted artifact before workers load it
        pointer = ShadowPointer(version, check_fraction(fraction))
        live = self.pin_live()
        if version == live:
            raise ModelError(f"model version {version} is live; shadow a candidate")
        status = self._status_doc(version).get("status", "candidate")
        if status in ("rejected", "retired"):
            raise ModelError(f"model version {version} is {status}; only a candidate can be shadowed")
        previous = self.shadow()
        if previous is not None and previous.version != version:
            self._set_status(previous.version, "candidate", f"shadow replaced by version {version}")
        self._set_status(version, "shadow", f"{reason} on {fraction:g} of users")
        self.storage.replace_text("SHADOW", pointer.to_json())
        log.info("model version %d is the shadow on %g of users", version, fraction)
        return pointer

    def stop_shadow(self, reason: str = "shadow stopped") -> int | None:
        """No shadow any more; the former shadow goes back to candidate. Returns its version."""
        pointer = self.shadow()
        if pointer is None:
            self.storage.replace_text("SHADOW", "")
            return None
        self._set_status(pointer.version, "candidate", reason)
        self.storage.replace_text("SHADOW", "")
        return pointer.version

    def _end_shadow_of(self, version: int) -> None:
        text = self.storage.read_text("SHADOW")
        if text and text.strip() and ShadowPointer.from_json(text).version == version:
            self.storage.replace_text("SHADOW", "")

    def publish(self, version: int, reason: str = "published") -> int | None:
        """Verify ``version`` and make it live (the previous live one is retired). Returns the previous."""
        version = parse_version(version)
        if version not in self.storage.versions():
            raise ModelError(f"model version {version} does not exist")
        load_artifact(self.storage.artifact_path(version))  # refuse a corrupted artifact before anyone loads it
        previous = self._pointer()  # before any publish, nothing was explicitly live
        if previous is not None and previous != version:
            self._set_status(previous, "retired", f"replaced by version {version}")
        self._set_status(version, "live", reason)
        self.storage.replace_text("LIVE", f"{version}\n")
        self._end_shadow_of(version)
        log.info("model version %d is live (was %s)", version, previous)
        return previous

    def pin_live(self) -> int | None:
        """Turn an implicit live version (no LIVE pointer yet) into an explicit one; returns the live version.

        Called before a candidate is written, so the "newest version" fallback
        can never pick up a candidate that has not won its duel.
        """
        if self._pointer() is None:
            implicit = self.live_version()
            if implicit is not None:
                self.publish(implicit, reason="pinned as live before retraining")
        return self._pointer()

    def rollback(self, version: int | str | None = None) -> int:
        """Make ``version`` (default: the most recent previously-live version) live again."""
        current = self.live_version()
        if version is None:
            candidates = [
                r.version for r in self.list()
                if r.version != current and any(h.get("status") == "live" for h in r.history)
            ]
            if not candidates:
                raise ModelError("no earlier live version to roll back to")
            target = max(v for v in candidates if current is None or v < current) if any(
                current is None or v < current for v in candidates) else max(candidates)
        else:
            target = parse_version(version)
        self.publish(target, reason=f"rollback from version {current}")
        return target


def resolve_artifact_dir(path: Path) -> Path:
    """A version directory as given, or a model directory's live version.

    What a user passes as ``--model`` is either; without this a model
    directory failed with "incomplete: no manifest.json", which sends people
    looking for a broken artifact.
    """
    path = Path(path)
    if (path / MANIFEST).is_file() or not path.is_dir() or not list_versions(path):
        return path  # load_artifact names what is wrong with it
    live = ModelRegistry(FilesystemStorage(path)).live_path()
    if live is None:
        raise ModelError(f"model directory {path} has versions but none is live (all rejected or retired)")
    log.info("model directory %s: using its live version %s", path, live.name)
    return live


def _read_json_quiet(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
