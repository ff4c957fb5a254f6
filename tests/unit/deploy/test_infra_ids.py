"""Identifiers the local infra launcher hands to Kafka's tools."""

from __future__ import annotations

import re

from streamrec.deploy.infra import kafka_cluster_id


def test_kafka_cluster_ids_never_look_like_an_option():
    # About 1 in 64 random ids starts with '-', which kafka-storage parses as a flag.
    ids = {kafka_cluster_id() for _ in range(2_000)}
    assert len(ids) == 2_000
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", cluster_id) for cluster_id in ids)
