"""Train/validation/test splits of an interaction log: leave-one-out and global temporal."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamrec.models.data import EventLog
from streamrec.models.features import UserSequence


@dataclass(frozen=True)
class EvalCase:
    """Predict ``target`` (a raw item id) for ``user_id`` given ``history`` (oldest -> newest)."""

    user_id: str
    history: UserSequence
    target: str


@dataclass
class Split:
    """Training sequences per user, and the validation and test cases."""

    kind: str
    train: dict[str, UserSequence]
    valid: list[EvalCase]
    test: list[EvalCase]

    def summary(self) -> dict[str, int | str]:
        return {
            "kind": self.kind,
            "train_users": len(self.train),
            "train_events": sum(len(s) for s in self.train.values()),
            "valid_cases": len(self.valid),
            "test_cases": len(self.test),
        }


def slice_sequence(seq: UserSequence, start: int | None, stop: int | None) -> UserSequence:
    """The events ``seq[start:stop]`` as a new sequence."""
    return UserSequence(
        item_ids=list(seq.item_ids[start:stop]),
        event_types=list(seq.event_types[start:stop]),
        timestamps_ms=list(seq.timestamps_ms[start:stop]),
        contexts=list(seq.contexts[start:stop]) if seq.contexts is not None else None,
    )


def leave_one_out(log: EventLog, *, min_events: int = 3) -> Split:
    """Per user: last event is the test target, second-last the validation target, the rest trains.

    Users with fewer than ``min_events`` events only contribute training data.
    """
    train: dict[str, UserSequence] = {}
    valid: list[EvalCase] = []
    test: list[EvalCase] = []
    for user, seq in log.user_sequences().items():
        n = len(seq)
        if n < max(min_events, 3):
            train[user] = seq
            continue
        train[user] = slice_sequence(seq, None, n - 2)
        valid.append(EvalCase(user, slice_sequence(seq, None, n - 2), seq.item_ids[n - 2]))
        test.append(EvalCase(user, slice_sequence(seq, None, n - 1), seq.item_ids[n - 1]))
    return Split(kind="leave_one_out", train=train, valid=valid, test=test)


def temporal_split(log: EventLog, *, valid_frac: float = 0.1, test_frac: float = 0.1) -> Split:
    """Global time cut: the oldest events train; later events become next-item cases.

    Cut points are quantiles of all timestamps. Every validation/test event is a
    case whose history is all of the user's earlier events (earlier cases
    included); events of users with no earlier history are skipped.
    """
    if not (0 < valid_frac < 1 and 0 < test_frac < 1 and valid_frac + test_frac < 1):
        raise ValueError("valid_frac and test_frac must be in (0, 1) and sum below 1")
    ts = np.asarray(log.ts_ms, dtype=np.int64)
    t_valid, t_test = np.quantile(ts, [1 - valid_frac - test_frac, 1 - test_frac], method="lower")
    train: dict[str, UserSequence] = {}
    valid: list[EvalCase] = []
    test: list[EvalCase] = []
    for user, seq in log.user_sequences().items():
        times = np.asarray(seq.timestamps_ms, dtype=np.int64)
        n_train = int(np.searchsorted(times, t_valid, side="left"))
        if n_train:
            train[user] = slice_sequence(seq, None, n_train)
        for i in range(max(n_train, 1), len(seq)):
            case = EvalCase(user, slice_sequence(seq, None, i), seq.item_ids[i])
            (valid if times[i] < t_test else test).append(case)
    return Split(kind="temporal", train=train, valid=valid, test=test)
