"""Config -> RouteTable: the one step from the validated model to the hot path.

A pure function of its input: the same Config and version give an equal
table. It copies what the data plane needs into the plain dataclasses of
`routing.table` so that listeners never see pydantic or config code. It does
no checking of its own: the Config has passed `merge.validate` already.
"""

from __future__ import annotations

from meshgate.config.model import Backend, Config, Listener
from meshgate.routing.table import (
    EndpointAddr,
    ListenerKey,
    ListenerSpec,
    PoolSpec,
    RouteTable,
    Timeouts,
    UdpSpec,
)


def compile_table(config: Config, *, version: int, sources: tuple[str, ...] = ()) -> RouteTable:
    """Build the immutable table for `config`, listeners in config order."""
    # One PoolSpec per backend, shared by every listener that uses it.
    pools = {backend.name: _pool(backend) for backend in config.backends}
    return RouteTable(
        version=version,
        listeners=tuple(_listener(listener, pools) for listener in config.listeners),
        sources=sources,
    )


def _pool(backend: Backend) -> PoolSpec:
    return PoolSpec(
        name=backend.name,
        endpoints=tuple(EndpointAddr(ep.host, ep.port) for ep in backend.endpoints),
        balance=backend.balance,
        timeouts=Timeouts(
            connect=backend.timeouts.connect,
            idle=backend.timeouts.idle,
            half_closed=backend.timeouts.half_closed,
        ),
        builtin=backend.builtin,
    )


def _listener(listener: Listener, pools: dict[str, PoolSpec]) -> ListenerSpec:
    pool = pools.get(listener.backend)
    if pool is None:
        # Only reachable when a caller skipped validation: fail loudly, not late.
        raise ValueError(
            f"listener {listener.name!r} refers to unknown backend {listener.backend!r}; "
            "validate the config before compiling it"
        )
    return ListenerSpec(
        key=ListenerKey(listener.address, listener.port, listener.protocol),
        name=listener.name,
        pool=pool,
        udp=UdpSpec(
            flow_idle_timeout=listener.udp.flow_idle_timeout,
            max_flows=listener.udp.max_flows,
        ),
    )
