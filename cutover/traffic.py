"""What a load balancer reports and does, in words every implementation shares: the
`LoadBalancer` port (cutover.ports) speaks them; `adapters.haproxy` is one implementation.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict

from cutover.errors import ErrorKind, error
from cutover.site import HAProxy

Detail = str | int | float | bool
Admin = Literal["ready", "drain", "maint"]


@dataclass(frozen=True)
class Address:
    """An IP literal and a port: where a server receives traffic."""

    ip: str
    port: int

    @classmethod
    def parse(cls, text: str, what: str = "address") -> Address:
        """`IP:port` or `[IPv6]:port`; HAProxy's `set server addr` takes no host name."""
        host, _, port = text.strip().rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            address = cls(str(ipaddress.ip_address(host)), int(port))
        except ValueError:
            address = None
        if address is None or not 1 <= address.port <= 65535:
            raise error(
                ErrorKind.CONFIG_ERROR,
                f"{what} {text!r} is not IP:port (e.g. 10.0.0.5:8080 or [::1]:80)",
            )
        return address

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class Timeouts:
    #: How long a server may take to pass its health checks once made ready.
    health_s: float
    #: How long the old server may take to finish its sessions once draining.
    drain_s: float
    #: How often the state is polled while waiting.
    poll_s: float = 0.05

    @classmethod
    def from_settings(cls, settings: HAProxy) -> Timeouts:
        return cls(float(settings.healthTimeoutSeconds), float(settings.drainTimeoutSeconds))


@dataclass(frozen=True)
class ServerState:
    """One server of a backend, as the load balancer reports it."""

    name: str
    address: Address | None
    admin: Admin
    #: Operational state from health checks: UP, DOWN, STARTING (slowstart), STOPPING.
    op: str
    weight: int
    initial_weight: int
    #: Whether a health check is configured / currently enabled for it.
    checked: bool
    check_enabled: bool
    #: The stats page's status, e.g. "UP", "DOWN 1/2", "MAINT", "DRAIN".
    status: str
    #: Current sessions plus queued requests.
    sessions: int
    backup: bool = False
    last_check: str = ""

    @property
    def up(self) -> bool:
        return self.op == "UP"

    @property
    def serving(self) -> bool:
        """Takes new traffic: ready, UP and a weight above 0."""
        return self.admin == "ready" and self.up and self.weight > 0

    def describe(self) -> str:
        where = f" at {self.address}" if self.address else ""
        return f"{self.admin}/{self.status} weight {self.weight}{where}"


@dataclass
class Switch:
    """What a traffic move did: whether it changed anything, facts for later steps, and
    details for the record."""

    changed: bool
    facts: dict[str, str] = field(default_factory=dict)
    details: dict[str, Detail] = field(default_factory=dict)


class PriorServer(BaseModel):
    """One server as it was before the switch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    admin: Admin
    weight: int
    address: str | None
    checkEnabled: bool
    #: As `ServerState.describe()` said it, for people.
    state: str

    @classmethod
    def of(cls, server: ServerState) -> PriorServer:
        return cls(
            name=server.name,
            admin=server.admin,
            weight=server.weight,
            address=str(server.address) if server.address else None,
            checkEnabled=server.check_enabled,
            state=server.describe(),
        )


class BackendPrior(BaseModel):
    """The source and target servers before a cutover's switch (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflowId: str
    runId: str | None = None
    backend: str
    source: PriorServer
    target: PriorServer
    recordedAt: str
