"""The routing table: the only thing the control and data planes share.

Plain frozen, slotted dataclasses with no validation logic (that happened at
the edge) and no imports from `config`: the hot path reads attributes and
nothing else. A table is never changed; a reload builds a new one with a
higher `version`, and every connection keeps the table it was accepted with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Protocol = Literal["tcp", "udp"]


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class ListenerKey:
    """What identifies a listening socket: reloads diff listeners by this key."""

    address: str
    port: int
    protocol: Protocol

    def __str__(self) -> str:
        return f"{self.protocol}://{hostport(self.address, self.port)}"


@dataclass(frozen=True, slots=True)
class EndpointAddr:
    host: str  # IP literal or DNS name, resolved at connect time
    port: int

    def __str__(self) -> str:
        return hostport(self.host, self.port)


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    idle: float
    half_closed: float


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """A backend: where to send traffic and how. Pools are keyed by `name`."""

    name: str
    endpoints: tuple[EndpointAddr, ...]
    balance: str  # round_robin | random | least_conn
    timeouts: Timeouts
    builtin: str | None = None  # "hello" | "echo": answered in-process


@dataclass(frozen=True, slots=True)
class UdpSpec:
    flow_idle_timeout: float
    max_flows: int


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    key: ListenerKey
    name: str
    pool: PoolSpec
    udp: UdpSpec


@dataclass(frozen=True, slots=True)
class RouteTable:
    version: int
    listeners: tuple[ListenerSpec, ...]
    sources: tuple[str, ...] = ()
    _by_key: dict[ListenerKey, ListenerSpec] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_key", {spec.key: spec for spec in self.listeners})

    def get(self, key: ListenerKey) -> ListenerSpec | None:
        return self._by_key.get(key)

    @property
    def keys(self) -> frozenset[ListenerKey]:
        return frozenset(self._by_key)

    @property
    def pools(self) -> dict[str, PoolSpec]:
        return {spec.pool.name: spec.pool for spec in self.listeners}

    def to_json(self) -> dict[str, Any]:
        """The table as plain JSON data (for /config and `meshgate check`)."""
        return {
            "version": self.version,
            "sources": list(self.sources),
            "listeners": [
                {
                    "name": spec.name,
                    "address": spec.key.address,
                    "port": spec.key.port,
                    "protocol": spec.key.protocol,
                    "backend": spec.pool.name,
                    **(
                        {
                            "udp": {
                                "flow_idle_timeout": spec.udp.flow_idle_timeout,
                                "max_flows": spec.udp.max_flows,
                            }
                        }
                        if spec.key.protocol == "udp"
                        else {}
                    ),
                }
                for spec in self.listeners
            ],
            "backends": [
                {
                    "name": pool.name,
                    "endpoints": [str(ep) for ep in pool.endpoints],
                    "builtin": pool.builtin,
                    "balance": pool.balance,
                    "timeouts": {
                        "connect": pool.timeouts.connect,
                        "idle": pool.timeouts.idle,
                        "half_closed": pool.timeouts.half_closed,
                    },
                }
                for pool in self.pools.values()
            ],
        }
