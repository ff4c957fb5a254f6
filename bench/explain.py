"""``streamrec bench explain``: how faithful the explanations are, and whether they find a planted pattern.

Two small models are trained on two planted patterns "item A is followed by
item B":

* the bare pattern (:class:`PairWorld`): ``a<j>`` is always followed by
  ``b<j>``, everything else is uniform noise, so nothing but ``a<j>`` can
  explain ``b<j>``;
* the synthetic stream's chain (``stream/generator.py``): every item is
  followed by its successor with probability ``p_follow``, inside interest
  clusters that also predict it.

Over held-out users' windows it reports:

* planted rate: among the (user, recommended item B) cases where B's
  predecessor A is in the window, the share where A is B's top contributing
  event (leave-one-out, :mod:`streamrec.onnx.explain`);
* faithfulness (chain model): for each attribution method, the drop of the
  item's score (on the served ONNX graph) when the method's top event is
  removed, against a random event of the same window; and when its top 3
  events are removed together, against 3 random ones. Methods: leave-one-out
  (served), gradient × input and attention rollout (both on the torch model),
  and "newest event" as the naive baseline. Single-event removal is what
  leave-one-out measures by definition, so it wins there by construction; the
  top-3 removal is optimised by no method.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamrec.models.config import EncoderConfig
from streamrec.models.encoder import SequenceEncoder, position_ids
from streamrec.models.features import UserSequence, featurize
from streamrec.onnx.explain import Attribution, Explainer, model_view
from streamrec.onnx.runtime import ServedModel
from streamrec.onnx.writer import train_from_events
from streamrec.stream.generator import SyntheticConfig, build_world, generate_events, item_key

log = logging.getLogger(__name__)

# The chain signal strong and the catalogue small: a model that learns in seconds.
PLANTED = SyntheticConfig(num_users=300, num_items=120, num_events=12_000, seed=11, cluster_size=20,
                          p_follow=0.8, p_same_cluster=0.1, p_repeat=0.02)
PLANTED_MODEL = EncoderConfig(n_items=0, max_len=20, hidden=32, layers=2, heads=2, dropout=0.1, emb_dropout=0.1)
TOP_N_REMOVED = 3


@dataclass(frozen=True)
class PlantedRate:
    """How often B's predecessor A is B's top contributing event, when B is recommended and A is in the window."""

    cases: int
    hits: int
    rate: float | None
    recommended_pairs: int  # (user, item) pairs looked at
    newest_cases: int = 0  # of the cases, those where A is the newest event of the window
    newest_hits: int = 0


def planted_events(config: SyntheticConfig = PLANTED) -> list[dict[str, Any]]:
    return list(generate_events(config))


@dataclass(frozen=True)
class PairWorld:
    """The bare planted pattern: ``a<j>`` is always followed by ``b<j>``; every other event is uniform noise.

    Nothing but ``a<j>`` predicts ``b<j>`` (it never follows anything else), so
    when a model recommends ``b<j>`` the reason should be ``a<j>``.
    """

    users: int = 400
    events_per_user: int = 30
    pairs: int = 15
    noise_items: int = 80
    p_pair: float = 0.25
    seed: int = 0

    def predecessor(self, item_id: str) -> str | None:
        return "a" + item_id[1:] if item_id.startswith("b") else None

    def events(self) -> list[dict[str, Any]]:
        """Event dicts, users one after another, 30 s apart."""
        rng = np.random.default_rng(self.seed)
        out: list[dict[str, Any]] = []
        ts = 1_704_067_200_000
        for user in range(self.users):
            items: list[str] = []
            while len(items) < self.events_per_user:
                if rng.random() < self.p_pair:
                    pair = int(rng.integers(self.pairs))
                    items += [f"a{pair}", f"b{pair}"]
                else:
                    items.append(f"n{int(rng.integers(self.noise_items))}")
            for n, item in enumerate(items):
                ts += 30_000
                out.append({"event_id": f"p{user}-{n}", "user_id": f"u{user}", "item_id": item, "event_type": "view", "ts": ts})
        return out


def pair_windows(events: Sequence[dict[str, Any]], seed: int = 0) -> list[UserSequence]:
    """Windows as a worker would hold them: each user's history up to every ``a`` event, and cut at one random point."""
    rng = np.random.default_rng(seed)
    out = []
    for sequence in user_windows(events, 10**6):
        ends = [n + 1 for n, item in enumerate(sequence.item_ids) if item.startswith("a")]
        ends.append(int(rng.integers(3, len(sequence) + 1)))
        out.extend(
            UserSequence(sequence.item_ids[:end], sequence.event_types[:end], sequence.timestamps_ms[:end]) for end in ends
        )
    return out


def split_users(events: Sequence[dict[str, Any]], train_share: float = 0.75) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Events of the first ``train_share`` of users (in order of appearance) and of the rest."""
    users = list(dict.fromkeys(e["user_id"] for e in events))
    train_users = set(users[: int(len(users) * train_share)])
    return [e for e in events if e["user_id"] in train_users], [e for e in events if e["user_id"] not in train_users]


def train_planted(out_dir: Path, events: Sequence[dict[str, Any]], *, epochs: int = 15, seed: int = 0,
                  model_config: EncoderConfig = PLANTED_MODEL) -> Path:
    """A small model trained on ``events``, written as an artifact under ``out_dir``; returns its directory."""
    return train_from_events(events, out_dir, epochs=epochs, seed=seed, model_config=model_config)


def user_windows(events: Sequence[dict[str, Any]], size: int) -> list[UserSequence]:
    """Each user's newest ``size`` events of ``events`` (users with at least 2)."""
    by_user: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_user.setdefault(event["user_id"], []).append(event)
    out = []
    for user_events in by_user.values():
        kept = user_events[-size:]
        if len(kept) >= 2:
            out.append(UserSequence([e["item_id"] for e in kept], [e["event_type"] for e in kept], [int(e["ts"]) for e in kept]))
    return out


def predecessors(config: SyntheticConfig) -> dict[str, str]:
    """Item B -> the item A whose chain successor B is."""
    world = build_world(config)
    return {item_key(b): item_key(a) for a, b in enumerate(world.successor)}


def planted_rate(sequences: Sequence[UserSequence], attributions: Sequence[Attribution],
                 predecessor: Callable[[str], str | None]) -> PlantedRate:
    """Share of (user, recommended B) cases with A in the explained events where A is B's top contributor."""
    cases = hits = pairs = newest_cases = newest_hits = 0
    for sequence, attribution in zip(sequences, attributions):
        for column, item in enumerate(attribution.item_ids):
            pairs += 1
            a = predecessor(item)
            if a is None or not any(sequence.item_ids[p] == a for p in attribution.positions):
                continue
            cases += 1
            top = attribution.positions[int(np.argmax(attribution.contributions[:, column]))]
            hits += int(sequence.item_ids[top] == a)
            if sequence.item_ids[-1] == a:
                newest_cases += 1
                newest_hits += int(sequence.item_ids[top] == a)
    return PlantedRate(cases=cases, hits=hits, rate=(hits / cases) if cases else None, recommended_pairs=pairs,
                       newest_cases=newest_cases, newest_hits=newest_hits)


# --------------------------------------------------------------------------- #
# faithfulness
# --------------------------------------------------------------------------- #
def torch_model(artifact_dir: Path) -> SequenceEncoder:
    """The artifact's torch model (``weights.pt``), for the gradient and attention baselines."""
    config = EncoderConfig.load(artifact_dir / "config.json")
    model = SequenceEncoder(config)
    model.load_state_dict(torch.load(artifact_dir / "weights.pt", map_location="cpu"))
    return model.eval()


def _torch_inputs(views: Sequence[UserSequence], session: ServedModel) -> tuple[torch.Tensor, ...]:
    f = featurize(views, session.vocab, session.config)
    return tuple(torch.from_numpy(a) for a in (f.item_idx, f.event_type, f.time_bucket, f.attention_mask))


def gradient_x_input(model: SequenceEncoder, session: ServedModel, views: Sequence[UserSequence],
                     items: Sequence[Sequence[str]]) -> list[np.ndarray]:
    """Per user ``(len(view), n_items)``: gradient × input of each item's score, summed over the embedding."""
    item_idx, etype, tbucket, mask = _torch_inputs(views, session)
    x = model.embed(item_idx, etype, tbucket).detach().requires_grad_(True)
    hidden = model.backbone(inputs_embeds=x, attention_mask=mask, position_ids=position_ids(mask)).last_hidden_state
    user_vector = hidden[:, -1]
    k = max(len(i) for i in items)
    columns = torch.tensor([list(session.vocab.lookup(list(i))) + [0] * (k - len(i)) for i in items])
    scores = (user_vector.unsqueeze(1) * model.item_emb.weight[columns]).sum(-1)  # (batch, k)
    out = np.zeros((len(views), x.shape[1], k), dtype=np.float32)
    for column in range(k):
        (grad,) = torch.autograd.grad(scores[:, column].sum(), x, retain_graph=column < k - 1)
        out[:, :, column] = (grad * x).sum(-1).detach().numpy()
    width = x.shape[1]
    return [out[row, width - len(view):, : len(items[row])] for row, view in enumerate(views)]


def attention_rollout(model: SequenceEncoder, session: ServedModel, views: Sequence[UserSequence]) -> list[np.ndarray]:
    """Per user ``(len(view),)``: attention rollout (Abnar & Zuidema) from the newest position, heads averaged."""
    item_idx, etype, tbucket, mask = _torch_inputs(views, session)
    with torch.no_grad():
        x = model.embed(item_idx, etype, tbucket)
        out = model.backbone(inputs_embeds=x, attention_mask=mask, position_ids=position_ids(mask), output_attentions=True)
        width = x.shape[1]
        rollout = torch.eye(width).expand(len(views), width, width)
        for layer in out.attentions:
            attn = layer.mean(1)
            attn = 0.5 * attn + 0.5 * torch.eye(width)  # the residual stream
            attn = attn / attn.sum(-1, keepdim=True)
            rollout = attn @ rollout
        newest = rollout[:, -1, :].numpy()
    return [newest[row, width - len(view):] for row, view in enumerate(views)]


def _remove(view: UserSequence, positions: Sequence[int]) -> UserSequence:
    drop = set(positions)
    keep = [p for p in range(len(view)) if p not in drop]
    return UserSequence([view.item_ids[p] for p in keep], [view.event_types[p] for p in keep],
                        [view.timestamps_ms[p] for p in keep])


def faithfulness(session: ServedModel, explainer: Explainer, model: SequenceEncoder, sequences: Sequence[UserSequence],
                 k: int, seed: int = 0) -> dict[str, Any]:
    """Score drops (served graph) when each method's top event(s) are removed, against random removals."""
    views = [model_view(s, session.config.max_len)[0] for s in sequences]
    views = [v for v in views if len(v) > TOP_N_REMOVED]
    tops = session.recommend(views, k=k)
    items = [t.item_ids for t in tops]
    occlusion = explainer.attribute(views, items)
    gxi = gradient_x_input(model, session, views, items)
    rollout = attention_rollout(model, session, views)
    rng = np.random.default_rng(seed)
    # Per method, per user: (len(view), n_items) attribution matrices (higher = more important).
    methods: dict[str, list[np.ndarray]] = {
        "leave_one_out": [a.contributions for a in occlusion],
        "gradient_x_input": gxi,
        "attention_rollout": [np.repeat(r[:, None], len(i), axis=1) for r, i in zip(rollout, items)],
        "newest_event": [np.repeat(np.arange(len(v), dtype=np.float32)[:, None], len(i), axis=1) for v, i in zip(views, items)],
    }
    randoms = [[rng.permutation(len(v)) for _ in i] for v, i in zip(views, items)]
    # Top-3 removals of every method and the random ones, in one batched ONNX call.
    variants: list[UserSequence] = []
    index: list[tuple[str, int, int]] = []
    for name, matrices in [*methods.items(), ("random", None)]:
        for user, view in enumerate(views):
            for column in range(len(items[user])):
                if matrices is None:
                    removed = randoms[user][column][:TOP_N_REMOVED]
                else:
                    removed = np.argsort(-matrices[user][:, column], kind="stable")[:TOP_N_REMOVED]
                variants.append(_remove(view, removed.tolist()))
                index.append((name, user, column))
    vectors = explainer.user_vectors(featurize(variants, session.vocab, session.config))
    base = {(u, c): occlusion[u].scores[c] for u in range(len(views)) for c in range(len(items[u]))}
    drop3: dict[str, list[float]] = {}
    for (name, user, column), vector in zip(index, vectors):
        score = float(explainer.item_scores(vector[None, :], [items[user][column]])[0, 0])
        drop3.setdefault(name, []).append(float(base[(user, column)]) - score)

    single_random = [float(occlusion[u].contributions[randoms[u][c][0], c]) for u in range(len(views)) for c in range(len(items[u]))]
    report: dict[str, Any] = {"users": len(views), "cases": len(single_random), "k": k,
                              "random": {"drop_1": _mean(single_random), f"drop_{TOP_N_REMOVED}": _mean(drop3["random"])}}
    for name, matrices in methods.items():
        # Removing one event: its leave-one-out contribution is exactly that drop (served graph).
        single = [float(occlusion[u].contributions[int(np.argmax(matrices[u][:, c])), c])
                  for u in range(len(views)) for c in range(len(items[u]))]
        report[name] = {
            "drop_1": _mean(single),
            "beats_random_1": _mean([float(s > r) for s, r in zip(single, single_random)]),
            f"drop_{TOP_N_REMOVED}": _mean(drop3[name]),
            f"beats_random_{TOP_N_REMOVED}": _mean([float(s > r) for s, r in zip(drop3[name], drop3["random"])]),
        }
    return report


def _mean(values: Sequence[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def run_explain_bench(work_dir: Path, *, epochs: int, k: int, users: int, seed: int = 0) -> dict[str, Any]:
    """Train the two planted-pattern models; measure the planted rates, faithfulness and the explanation cost."""
    result: dict[str, Any] = {"k": k, "epochs": epochs, "seed": seed}

    # 1. The bare pattern (a<j> -> b<j> in noise): the check.
    world = PairWorld(seed=seed)
    train, test = split_users(world.events())
    t0 = time.perf_counter()
    artifact = train_planted(work_dir / "pairs", train, epochs=epochs, seed=seed)
    session = ServedModel.load(artifact, device="cpu", threads=1)
    windows = pair_windows(test, seed)
    recs = session.recommend(windows, k=k)
    attributions = Explainer.for_session(session).attribute(windows, [r.item_ids for r in recs])
    b_recommended = sum(1 for r in recs for item in r.item_ids if world.predecessor(item) is not None)
    result["pairs"] = {
        "world": asdict(world), "train_seconds": round(time.perf_counter() - t0, 1), "windows": len(windows),
        "b_recommended": b_recommended, "planted_rate": asdict(planted_rate(windows, attributions, world.predecessor)),
    }
    session.close()

    # 2. The synthetic stream's chain (every item has a successor, inside interest clusters):
    #    harder, since cluster context also recommends B; plus faithfulness and cost.
    events = planted_events()
    half = len(events) // 2
    t0 = time.perf_counter()
    artifact = train_planted(work_dir / "chain", events[:half], epochs=epochs, seed=seed)
    train_s = time.perf_counter() - t0
    session = ServedModel.load(artifact, device="cpu", threads=1)
    explainer = Explainer.for_session(session)
    sequences = user_windows(events[half:], session.config.max_len)[:users]
    t0 = time.perf_counter()
    recs = session.recommend(sequences, k=k)
    recommend_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    attributions = explainer.attribute(sequences, [r.item_ids for r in recs])
    explain_s = time.perf_counter() - t0
    pred = predecessors(PLANTED)
    result["chain"] = {
        "world": {name: value for name, value in asdict(PLANTED).items() if name != "event_type_mix"},
        "train_seconds": round(train_s, 1),
        "offline_test": json.loads((artifact / "metrics.json").read_text()).get("test", {}),
        "users": len(sequences),
        "planted_rate": asdict(planted_rate(sequences, attributions, pred.get)),
        "recommend_seconds": round(recommend_s, 4),
        "explain_all_events_seconds": round(explain_s, 4),
        "faithfulness": faithfulness(session, explainer, torch_model(artifact), sequences, k, seed),
    }
    session.close()
    return result


def format_report(result: dict[str, Any]) -> str:
    """The headline figures as a few lines of text."""
    pairs, chain = result["pairs"]["planted_rate"], result["chain"]["planted_rate"]
    lines = [
        f"planted a->b (noise world): A is B's top contributor in {pairs['hits']}/{pairs['cases']} cases "
        f"= {pairs['rate']:.3f} (top-{result['k']})",
        f"planted chain (synthetic stream): {chain['hits']}/{chain['cases']} = {chain['rate']:.3f}; "
        f"where A is the newest event {chain['newest_hits']}/{chain['newest_cases']}",
        "faithfulness (chain model, score drop on the served graph; higher = more faithful):",
        f"  {'method':<20}{'drop top-1':>11}{'> random':>10}{'drop top-3':>11}{'> random':>10}",
    ]
    faith = result["chain"]["faithfulness"]
    for name in ("leave_one_out", "gradient_x_input", "attention_rollout", "newest_event"):
        row = faith[name]
        lines.append(f"  {name:<20}{row['drop_1']:>11.4f}{row['beats_random_1']:>10.3f}{row['drop_3']:>11.4f}{row['beats_random_3']:>10.3f}")
    lines.append(f"  {'random':<20}{faith['random']['drop_1']:>11.4f}{'':>10}{faith['random']['drop_3']:>11.4f}")
    return "\n".join(lines)
