"""Moved: the retraining round is :mod:`streamrec.retrain.round` (the retrain room, above the worker).

A forwarder until ``tests/integration/test_retrain.py`` imports ``retrain_round``
from there (LAYERING_NOTES.md); the layering contract ignores its one upward
import until then. Delete this file with that change.
"""

from __future__ import annotations

from typing import Any


def retrain_round(*args: Any, **kwargs: Any) -> Any:
    """:func:`streamrec.retrain.round.retrain_round`."""
    from streamrec.retrain.round import retrain_round as moved

    return moved(*args, **kwargs)
