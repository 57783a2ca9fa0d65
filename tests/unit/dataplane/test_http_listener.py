"""The per-client request-rate buckets an http listener keeps across reloads."""

from __future__ import annotations

import dataclasses

from meshgate.dataplane.certs import TlsStore
from meshgate.dataplane.http_listener import HttpListener, HttpsListener, request_buckets
from meshgate.dataplane.listener import Context
from meshgate.obs.metrics import Metrics
from meshgate.routing.table import (
    ClientLimitsSpec,
    ListenerKey,
    ListenerSpec,
    UdpSpec,
)
from meshgate.upstream.pool import PoolRegistry


def spec_with(limits: ClientLimitsSpec | None) -> ListenerSpec:
    key = ListenerKey("127.0.0.1", 8080, "http")
    return ListenerSpec(key, "web", None, UdpSpec(60.0, 100), per_client=limits)


def context() -> Context:
    return Context(metrics=Metrics(), pools=PoolRegistry(), tls=TlsStore())


def test_buckets_survive_a_swap_that_keeps_the_rate() -> None:
    listener = HttpListener(spec_with(ClientLimitsSpec(request_rate=5.0, burst=10)), context())
    buckets = listener.requests
    assert buckets is not None
    assert (buckets.rate, buckets.burst) == (5.0, 10)
    buckets.take("10.0.0.1", 0.0)
    # Another change to the listener (its connection cap) leaves them alone.
    listener.swap(spec_with(ClientLimitsSpec(max_connections=3, request_rate=5.0, burst=10)))
    assert listener.requests is buckets
    assert len(buckets) == 1


def test_buckets_are_rebuilt_when_the_rate_or_burst_changes() -> None:
    listener = HttpsListener(spec_with(ClientLimitsSpec(request_rate=5.0)), context())
    first = listener.requests
    assert first is not None
    assert first.burst == 10  # the default: twice the rate
    listener.swap(spec_with(ClientLimitsSpec(request_rate=5.0, burst=10)))
    assert listener.requests is first  # the same limit, spelt out
    listener.swap(spec_with(ClientLimitsSpec(request_rate=5.0, burst=20)))
    second = listener.requests
    assert second is not None
    assert second is not first
    assert second.burst == 20
    listener.swap(spec_with(ClientLimitsSpec(request_rate=1.0, burst=20)))
    assert listener.requests is not second
    listener.swap(spec_with(None))
    assert listener.requests is None


def test_no_request_rate_no_buckets() -> None:
    spec = spec_with(ClientLimitsSpec(max_connections=2))
    assert request_buckets(spec, None) is None
    assert request_buckets(dataclasses.replace(spec, per_client=None), None) is None
