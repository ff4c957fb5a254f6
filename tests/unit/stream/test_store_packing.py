"""How the Cassandra store packs users' writes into multi-user requests (pure logic; the store itself runs in integration)."""

from streamrec.stream.state.cassandra import pack_writes, writes_per_request


def test_writes_of_one_owner_share_requests_up_to_the_cap() -> None:
    groups = pack_writes([("a", 10), ("a", 10), ("a", 10), ("a", 10)], cap_bytes=25, max_writes=10)
    assert groups == [[0, 1], [2, 3]]


def test_owners_never_share_a_request_and_order_is_kept_per_owner() -> None:
    groups = pack_writes([("a", 1), ("b", 1), ("a", 1), ("b", 1), ("c", 1)], cap_bytes=100, max_writes=10)
    assert groups == [[0, 2], [1, 3], [4]]


def test_a_write_larger_than_the_cap_goes_alone_and_every_write_is_in_exactly_one_request() -> None:
    writes = [("a", 5), ("a", 50), ("a", 5), ("b", 30), ("a", 5)]
    groups = pack_writes(writes, cap_bytes=20, max_writes=10)
    assert [1] in groups
    assert sorted(i for g in groups for i in g) == list(range(len(writes)))
    assert all(sum(writes[i][1] for i in g) <= 20 for g in groups if len(g) > 1)


def test_a_group_holds_at_most_max_writes() -> None:
    assert pack_writes([("a", 1)] * 5, cap_bytes=100, max_writes=2) == [[0, 1], [2, 3], [4]]


def test_small_saves_write_one_user_per_request_and_large_ones_fit_the_concurrency() -> None:
    assert writes_per_request(60, concurrency=64) == 1  # light load: every user its own request, all in parallel
    assert writes_per_request(64, concurrency=64) == 1
    assert writes_per_request(65, concurrency=64) == 2
    assert writes_per_request(506, concurrency=64) == 8  # a full batch under a backlog: 64 requests of 8 users
