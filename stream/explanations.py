"""Explanations in recommendation messages (``STREAMREC_EXPLAIN=true``): per item, its top contributing event ids.

The attribution itself is :mod:`streamrec.onnx.explain` (leave-one-out on the
served graph); this module maps its window positions back to the events' ids
and keeps one :class:`~streamrec.onnx.explain.Explainer` per model version.
An explanation that fails is logged and left out: the recommendation still goes
out, without ``because`` (serving never waits on, or breaks for, explanations).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from streamrec.config import Settings
from streamrec.onnx.explain import Explainer
from streamrec.onnx.runtime import ServedModel
from streamrec.stream.item_vectors import ContentAwareSession
from streamrec.stream.window import WindowEntry, user_sequence

log = logging.getLogger(__name__)

# Per user, per recommended item: the ids of its top contributing events, largest first.
Because = list[list[tuple[str, ...]]]


class Explanations:
    """Explains a batch's recommendations with the model that produced them."""

    def __init__(self, settings: Settings) -> None:
        self.max_events = settings.explain_events
        self.top = settings.explain_top
        self._explainer: Explainer | None = None

    def _explainer_for(self, model: ServedModel) -> Explainer:
        if self._explainer is None or self._explainer.session is not model:
            if self._explainer is not None:
                self._explainer.close()
            self._explainer = Explainer.for_session(model)  # once per model version (reads its graph)
        return self._explainer

    def because(self, model: object, windows: Sequence[Sequence[WindowEntry]], items: Sequence[Sequence[str]]) -> Because | None:
        """Top contributing event ids per user and item, or None when this model cannot be explained now."""
        if not isinstance(model, ServedModel) or not windows:
            return None
        # Items new since this version was trained are explained with the content vectors they were ranked by.
        new_items = model.new_item_table() if isinstance(model, ContentAwareSession) else None
        try:
            attributions = self._explainer_for(model).attribute(
                [user_sequence(w) for w in windows], items, max_events=self.max_events, new_items=new_items
            )
        except Exception as exc:  # noqa: BLE001 - a failed explanation must not cost the user the recommendation
            log.error("explaining a batch of %d users with model v%s failed (%s: %s); sent without explanations",
                      len(windows), model.version, type(exc).__name__, exc)
            return None
        return [
            [tuple(window[p].event_id for p in top) for top in attribution.top_positions(self.top)]
            for window, attribution in zip(windows, attributions)
        ]
