"""Token buckets per client IP address: `connection_rate` and `request_rate`.

Sans-I/O: the caller passes the time. A bucket holds up to `burst` tokens and
gains `rate` per second; taking one when none is left is a refusal. Buckets
are kept in one dict per listener and limit kind, bounded: when it is full,
buckets that have refilled completely (they would say the same as a new one)
are dropped first, then the oldest. A flood from many spoofed or rotating
addresses therefore costs a bounded amount of memory, and a client that
was dropped comes back with a full bucket (the generous direction).
"""

from __future__ import annotations

import math

# Clients remembered per bucket table: ~100 bytes each, ~6.4 MB at most.
MAX_CLIENTS = 65536


def effective_burst(rate: float, burst: int | None) -> float:
    """The bucket size: as configured, else twice the rate and at least one
    (a client doing its steady rate with a little jitter is never refused)."""
    return float(burst if burst is not None else max(1, math.ceil(rate * 2)))


def keep_or_new(current: ClientBuckets | None, rate: float, burst: int | None) -> ClientBuckets:
    """`current` when it already has this rate and burst (a reload that leaves
    the limit alone must not refill every client's bucket), else new buckets."""
    if current is not None and (current.rate, current.burst) == (
        rate,
        effective_burst(rate, burst),
    ):
        return current
    return ClientBuckets(rate, burst)


class TokenBucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class ClientBuckets:
    """One token bucket per client address, all with the same rate and burst."""

    __slots__ = ("_buckets", "_max", "burst", "rate")

    def __init__(self, rate: float, burst: int | None = None, max_clients: int = MAX_CLIENTS):
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError("rate must be a positive number")
        self.rate = rate
        self.burst = effective_burst(rate, burst)
        self._max = max_clients
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, client: str, now: float) -> bool:
        """Spend a token of `client`'s bucket; False when it is empty."""
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._evict(now)
            self._buckets[client] = TokenBucket(self.burst - 1.0, now)
            return True
        tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if tokens < 1.0:
            bucket.tokens = tokens
            return False
        bucket.tokens = tokens - 1.0
        return True

    def retry_after(self, client: str) -> float:
        """Seconds until `client` has a token again (0 when it has one)."""
        bucket = self._buckets.get(client)
        if bucket is None or bucket.tokens >= 1.0:
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def _evict(self, now: float) -> None:
        full = [
            client
            for client, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.stamp) * self.rate >= self.burst
        ]
        for client in full:
            del self._buckets[client]
        if len(self._buckets) >= self._max:
            # Every client is busy: forget the oldest tenth (dict order is
            # insertion order), never the whole table at once.
            for client in list(self._buckets)[: max(1, self._max // 10)]:
                del self._buckets[client]

    def __len__(self) -> int:
        return len(self._buckets)
