"""``streamrec explain user ID``: which of a user's recent events led to each recommended item.

Reads the user's window from Cassandra and the registry's live model (or
``--model``), recomputes the user's top-K with that model, attributes each item
to the window's events by leave-one-out on the served ONNX graph
(:mod:`streamrec.onnx.explain`), prints the table and writes a heat map
(events × recommended items). The root CLI imports this module at every start,
so ONNX Runtime, the Cassandra driver and matplotlib are imported inside the
command.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import orjson

from streamrec.config import Settings
from streamrec.errors import ModelError, StreamrecError
from streamrec.onnx.registry import ModelRegistry, resolve_artifact_dir
from streamrec.stream.window import WindowEntry, user_sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UserExplanation:
    """A user's window, the items recommended from it and each event's contribution to each item."""

    user_id: str
    model_version: int
    window: tuple[WindowEntry, ...]
    item_ids: tuple[str, ...]
    scores: tuple[float, ...]
    positions: tuple[int, ...]  # window positions explained (rows of ``contributions``)
    contributions: tuple[tuple[float, ...], ...]  # (events, items)

    def top_event(self, column: int) -> int | None:
        """Window position of the item's largest positive contribution."""
        best = max(range(len(self.positions)), key=lambda row: self.contributions[row][column], default=None)
        if best is None or self.contributions[best][column] <= 0:
            return None
        return self.positions[best]

    def to_dict(self) -> dict[str, Any]:
        rows = dict(zip(self.positions, self.contributions))
        return {
            "user_id": self.user_id,
            "model_version": self.model_version,
            "items": [
                {"item_id": item, "score": score, "top_event_id": self._event_id(self.top_event(col))}
                for col, (item, score) in enumerate(zip(self.item_ids, self.scores))
            ],
            "window": [
                {
                    "event_id": e.event_id, "item_id": e.item_id, "event_type": e.event_type, "ts": e.ts_ms,
                    "contributions": list(rows[pos]) if pos in rows else None,
                }
                for pos, e in enumerate(self.window)
            ],
        }

    def _event_id(self, position: int | None) -> str | None:
        return None if position is None else self.window[position].event_id


def live_model_dir(settings: Settings, model: Path | None) -> Path:
    """``--model`` (an artifact or a registry root), else the registry's live version; a clear error if none."""
    if model is not None:
        return resolve_artifact_dir(model)
    root = settings.models_path
    live = ModelRegistry.at(root).live_path() if root.is_dir() else None  # at() would create a missing root
    if live is None:
        raise ModelError(f"no live model in the registry at {settings.models_path} (train one, or pass --model)")
    return live


def load_window(settings: Settings, user_id: str) -> tuple[WindowEntry, ...]:
    """The user's stored window; a clear error when the user has none."""
    from streamrec.stream.state.cassandra import CassandraStore  # Cassandra driver: 0.1-0.45 s

    async def run() -> tuple[WindowEntry, ...]:
        store = CassandraStore.open(settings, create_schema=False)
        try:
            windows = await store.load_windows([user_id])
        finally:
            await store.close()
        window = windows.get(user_id)
        return window.entries if window is not None else ()

    entries = asyncio.run(run())
    if not entries:
        raise StreamrecError(
            f"user {user_id!r} has no window in keyspace {settings.cassandra_keyspace} (unknown user, or expired)"
        )
    return entries


def explain_user(
    settings: Settings, user_id: str, model_dir: Path, *, k: int, max_events: int | None
) -> UserExplanation:
    """Recompute the user's recommendation with the model at ``model_dir`` and attribute it to the window."""
    from streamrec.onnx.explain import Explainer  # ONNX Runtime: 0.3-0.5 s
    from streamrec.onnx.runtime import ServedModel

    window = load_window(settings, user_id)
    session = ServedModel.load(model_dir, device="cpu", threads=1, warmup=False)
    try:
        sequence = user_sequence(window)
        top = session.recommend([sequence], k=min(k, session.n_recommendable), exclude_seen=settings.exclude_seen)[0]
        attribution = Explainer.for_session(session).attribute([sequence], [top.item_ids], max_events=max_events)[0]
    finally:
        session.close()
    return UserExplanation(
        user_id=user_id,
        model_version=session.version,
        window=window,
        item_ids=tuple(top.item_ids),
        scores=tuple(float(s) for s in top.scores),
        positions=attribution.positions,
        contributions=tuple(tuple(float(v) for v in row) for row in attribution.contributions.tolist()),
    )


def format_table(explanation: UserExplanation) -> str:
    """The window, oldest first, with each event's contribution to each item; ``*`` marks each item's top event."""
    e = explanation
    width = max(8, *(len(item) + 1 for item in e.item_ids)) if e.item_ids else 8
    item_w = min(24, max(len("item_id"), *(len(x.item_id) for x in e.window)))
    id_w = min(40, max(len("event_id"), *(len(x.event_id) for x in e.window)))
    left = f"{'#':>3} {'event_type':<12} {'item_id':<{item_w}} {'event_id':<{id_w}}"
    tops = {col: e.top_event(col) for col in range(len(e.item_ids))}
    lines = [
        f"user {e.user_id}: {len(e.window)} events in window, model v{e.model_version}; "
        "contribution = item score minus its score without that event",
        left + "".join(f"{item:>{width}}" for item in e.item_ids),
    ]
    rows = dict(zip(e.positions, e.contributions))
    for pos, event in enumerate(e.window):
        cells = ""
        for col in range(len(e.item_ids)):
            if pos not in rows:
                cells += f"{'·':>{width - 1}} "
                continue
            mark = "*" if tops[col] == pos else " "
            cells += f"{rows[pos][col]:>{width - 1}.3f}{mark}"
        line = f"{pos:>3} {event.event_type:<12} {event.item_id[:item_w]:<{item_w}} {event.event_id[:id_w]:<{id_w}}{cells}"
        lines.append(line.rstrip())
    lines.append(f"{'score':>{len(left)}}" + "".join(f"{s:>{width - 1}.3f} " for s in e.scores).rstrip())
    return "\n".join(lines)


def plot_heatmap(explanation: UserExplanation, path: Path) -> Path:
    """Heat map PNG of contributions, events (rows, oldest on top) × recommended items (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    e = explanation
    values = np.asarray(e.contributions, dtype=np.float32).reshape(len(e.positions), len(e.item_ids))
    bound = float(np.abs(values).max(initial=0.0)) or 1.0
    fig, ax = plt.subplots(figsize=(1.2 + 0.75 * max(len(e.item_ids), 1), 1.5 + 0.28 * max(len(e.positions), 1)))
    image = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(range(len(e.item_ids)), labels=list(e.item_ids), rotation=60, ha="right", fontsize=8)
    ax.set_yticks(
        range(len(e.positions)),
        labels=[f"{e.window[p].item_id} ({e.window[p].event_type})" for p in e.positions], fontsize=7,
    )
    for col in range(len(e.item_ids)):
        top = e.top_event(col)
        if top is not None:
            ax.add_patch(plt.Rectangle((col - 0.5, e.positions.index(top) - 0.5), 1, 1, fill=False, lw=1.5, ec="black"))
    ax.set_xlabel("recommended item (best first)")
    ax.set_ylabel("window event (oldest on top)")
    ax.set_title(f"user {e.user_id}, model v{e.model_version}: score change when the event is removed", fontsize=9)
    fig.colorbar(image, ax=ax, label="contribution to the item's score")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@click.group()
def explain() -> None:
    """Why items were recommended."""


@explain.command("user")
@click.argument("user_id")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="Artifact directory or registry root. [default: the registry's live version]")
@click.option("-k", "--top-k", "k", type=int, default=None, help="Items to explain. [default: settings top_k]")
@click.option("--events", "max_events", type=click.IntRange(min=1), default=None,
              help="Explain only the newest N events. [default: every event the model reads]")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Heat-map path. [default: explain-<user>.png in the current folder]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
@click.pass_obj
def explain_user_command(
    settings: Settings, user_id: str, model: Path | None, k: int | None, max_events: int | None,
    png: Path | None, as_json: bool,
) -> None:
    """Print USER_ID's window with each event's contribution to each recommended item, and write a heat map."""
    explanation = explain_user(settings, user_id, live_model_dir(settings, model), k=k or settings.top_k, max_events=max_events)
    path = plot_heatmap(explanation, png or Path(f"explain-{safe_name(user_id)}.png"))
    if as_json:
        click.echo(orjson.dumps({**explanation.to_dict(), "heatmap": str(path)}, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(format_table(explanation))
    click.echo(f"heat map: {path}")


def safe_name(user_id: str) -> str:
    """A user id usable in a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in user_id)[:100] or "user"
