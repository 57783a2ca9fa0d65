"""Per-client token buckets (dataplane/ratelimit.py): sans-I/O, so the clock
is a number the test passes."""

from __future__ import annotations

import pytest

from meshgate.dataplane.ratelimit import ClientBuckets


def takes(buckets: ClientBuckets, client: str, now: float, n: int) -> list[bool]:
    return [buckets.take(client, now) for _ in range(n)]


def test_a_new_client_gets_the_whole_burst_then_is_refused() -> None:
    buckets = ClientBuckets(rate=2.0, burst=5)
    assert takes(buckets, "10.0.0.1", 100.0, 5) == [True] * 5
    assert not buckets.take("10.0.0.1", 100.0)


def test_default_burst_is_twice_the_rate_and_at_least_one() -> None:
    assert ClientBuckets(rate=3.0).burst == 6
    assert ClientBuckets(rate=0.2).burst == 1
    assert takes(ClientBuckets(rate=0.2), "c", 0.0, 2) == [True, False]


def test_tokens_come_back_at_the_rate_and_never_past_the_burst() -> None:
    buckets = ClientBuckets(rate=2.0, burst=4)
    assert takes(buckets, "c", 0.0, 4) == [True] * 4
    assert not buckets.take("c", 0.0)
    # Half a second at 2/s: one token, one request.
    assert takes(buckets, "c", 0.5, 2) == [True, False]
    # An hour idle refills to the burst, not beyond.
    assert takes(buckets, "c", 3600.0, 5) == [True] * 4 + [False]


def test_a_refused_request_spends_nothing() -> None:
    buckets = ClientBuckets(rate=1.0, burst=1)
    assert buckets.take("c", 0.0)
    # Hammering while empty does not push the next token further away.
    assert takes(buckets, "c", 0.5, 10) == [False] * 10
    assert buckets.take("c", 1.0)


def test_clients_are_counted_apart() -> None:
    buckets = ClientBuckets(rate=1.0, burst=2)
    assert takes(buckets, "a", 0.0, 3) == [True, True, False]
    assert takes(buckets, "b", 0.0, 2) == [True, True]
    assert len(buckets) == 2


def test_retry_after_says_when_the_next_token_comes() -> None:
    buckets = ClientBuckets(rate=4.0, burst=2)
    assert buckets.retry_after("unknown") == 0.0
    assert takes(buckets, "c", 10.0, 2) == [True, True]
    assert buckets.retry_after("c") == pytest.approx(0.25)
    assert not buckets.take("c", 10.125)  # half a token by now
    assert buckets.retry_after("c") == pytest.approx(0.125)
    assert buckets.take("c", 10.25)


def test_retry_after_is_long_for_a_slow_rate() -> None:
    buckets = ClientBuckets(rate=0.1, burst=1)
    assert buckets.take("c", 0.0)
    assert not buckets.take("c", 0.0)
    assert buckets.retry_after("c") == pytest.approx(10.0)


def test_the_table_is_bounded_and_forgets_full_buckets_first() -> None:
    buckets = ClientBuckets(rate=1.0, burst=2, max_clients=10)
    busy = [f"busy{i}" for i in range(5)]
    for client in busy:
        assert takes(buckets, client, 0.0, 2) == [True, True]  # spent
    for i in range(5):
        buckets.take(f"idle{i}", -100.0)  # long ago: full again by now
    assert len(buckets) == 10
    assert buckets.take("new", 0.0)
    # The idle clients (whose buckets a new one would equal) made room; the
    # busy ones are remembered and still refused.
    assert len(buckets) == 6
    assert not any(buckets.take(client, 0.0) for client in busy)


def test_a_flood_of_busy_addresses_stays_within_the_bound() -> None:
    buckets = ClientBuckets(rate=1.0, burst=1, max_clients=100)
    for i in range(10_000):
        assert buckets.take(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 0.0)
        assert len(buckets) <= 100
    # The oldest were dropped a tenth at a time: the newest are still known.
    assert not buckets.take("10.0.39.15", 0.0)  # client 9999


@pytest.mark.parametrize("rate", [0.0, -1.0, float("inf"), float("nan")])
def test_a_rate_must_be_positive_and_finite(rate: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        ClientBuckets(rate)
