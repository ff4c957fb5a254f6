"""Changing what is live: the registry first (the truth), then an announcement (a speed-up).

The one publish-and-announce path, used by a retraining round and by
``streamrec model publish | rollback``. A failed announcement is returned, not
raised: the registry already changed, and workers also poll it.
"""

from __future__ import annotations

import asyncio

from streamrec.config import Settings
from streamrec.onnx.registry import ModelRegistry
from streamrec.stream.model_updates import announce


def announce_live(settings: Settings, registry: ModelRegistry, version: int, reason: str) -> Exception | None:
    """Announce that ``version`` is live on the model-updates topic; the failure, if any, is returned."""
    try:
        asyncio.run(announce(settings, version, registry.record(version).checksum, reason))
    except Exception as exc:  # workers also poll the registry; an announcement is a speed-up
        return exc
    return None


def publish_and_announce(
    settings: Settings, registry: ModelRegistry, version: int, *, reason: str, announcement: str,
    announce: bool = True,
) -> tuple[int | None, Exception | None]:
    """Make ``version`` live in the registry (``reason`` recorded there), then announce it as ``announcement``.

    Returns the previously live version and the announcement's failure, if any
    (``None`` when it went out, or when ``announce`` is false).
    """
    previous = registry.publish(version, reason=reason)
    failure = announce_live(settings, registry, version, announcement) if announce else None
    return previous, failure
