"""The load balancer: move an application's traffic between its source and target servers.

The only module that talks to HAProxy. `LoadBalancer` is the interface a load balancer
implements (nginx, F5, AVI or a cloud LB can plug in later); `HAProxyRuntime` implements it
over HAProxy's runtime API (the admin-level stats socket named in the site config, one
command per connection). `LoadBalancerActivities` turns it into the cutover's activities.

The switch, measured to lose no request under load (LAB.md):

1. the new server gets weight 0, its address (switch only), `state ready`, then
   `health down`: leaving maintenance, HAProxy marks a server UP *before* any check ran
   (measured on 2.6: "UP 1/3" at a dead port for ~100 ms). Forcing it down means it is UP
   again only after `rise` real health checks passed; it waits for that, with weight 0 so
   it takes no traffic meanwhile;
2. its weight is restored: both servers serve;
3. the old server drains (no new sessions) until its current sessions reach 0, then goes to
   maintenance;
4. `show servers state` must show the new server as the only active one ready and UP.

The rollback is the same procedure in the other direction. No step reloads HAProxy; a
reload reverts runtime changes (the servers return to their config state), and running the
activity again re-applies the wanted state. Errors are typed `ApplicationError`s:
non-retryable `ConfigError`, `TargetUnhealthy` (the switch gave up; the source still
serves), `LoadBalancerError`; retryable `LoadBalancerUnavailable` (socket unreachable),
`LoadBalancerChanged` (state changed under us, e.g. a reload mid-switch) and
`SourceUnhealthy` (rollback: the source may still be booting after `restart_source`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import attempt as _attempt
from activities.common import error as _error
from cutover.catalog import Compensation, FinalizeStep, Step
from cutover.models import StepInput, StepResult
from cutover.site import HAProxy

log = logging.getLogger(__name__)

Detail = str | int | float | bool
Admin = Literal["ready", "drain", "maint"]

# `show servers state` bit fields (HAProxy 2.6 include/haproxy/server-t.h, check-t.h).
_ADMF_MAINT = 0x01 | 0x02 | 0x20  # forced, inherited, DNS resolution (not CMAINT 0x04)
_ADMF_DRAIN = 0x08 | 0x10  # forced, inherited
_OP_STATES = {0: "DOWN", 1: "STARTING", 2: "UP", 3: "STOPPING"}
_CHK_CONFIGURED, _CHK_ENABLED = 0x02, 0x04
#: HAProxy's own rule for proxy and server names; anything else could smuggle a second
#: command into a runtime API line (';' separates commands).
_NAME = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")


def _heartbeat(**details: Detail) -> None:
    if activity.in_activity():
        activity.heartbeat(details)


# ----------------------------------------------------------------------------- model


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
            raise _error(
                "ConfigError", f"{what} {text!r} is not IP:port (e.g. 10.0.0.5:8080 or [::1]:80)"
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


class LoadBalancer(Protocol):
    """A load balancer that can move one backend's traffic between two servers.

    Every method is idempotent and safe to re-run after a crash or a load balancer reload,
    and raises typed `ApplicationError`s (see the module documentation).
    """

    def switch_to_target(
        self, backend: str, source: str, target: str, target_addr: Address, timeouts: Timeouts
    ) -> Switch:
        """Point `target` at target_addr, send it traffic once a real health check passed,
        then drain `source` and put it in maintenance."""
        ...

    def switch_to_source(
        self, backend: str, source: str, target: str, timeouts: Timeouts
    ) -> Switch:
        """The mirror image: `source` serves again once healthy; `target` drains."""
        ...

    def retire(
        self, backend: str, source: str, target: str, target_addr: Address, timeouts: Timeouts
    ) -> Switch:
        """The cutover is final: the target serves, the source stays out for good."""
        ...

    def state(self, backend: str) -> dict[str, ServerState]:
        """Every server of the backend, by name."""
        ...


# --------------------------------------------------------------------------- haproxy


class HAProxyRuntime:
    """HAProxy through its runtime API: a UNIX stats socket at `level admin`."""

    def __init__(
        self, socket_path: str, command_timeout: float = 10.0, reconnect_for: float = 3.0
    ) -> None:
        self.socket_path = socket_path
        self.command_timeout = command_timeout
        #: A reload briefly leaves no process on the socket: retry connecting this long.
        self.reconnect_for = reconnect_for

    @classmethod
    def from_settings(cls, settings: HAProxy) -> HAProxyRuntime:
        return cls(settings.socket)

    # -- the socket

    def command(self, line: str) -> str:
        """Send one command on its own connection and return HAProxy's whole answer."""
        if "\n" in line or ";" in line:
            raise ValueError(f"one command per call: {line!r}")
        deadline = time.monotonic() + self.reconnect_for
        while True:
            try:
                return self._once(line)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                if time.monotonic() >= deadline:
                    raise _error(
                        "LoadBalancerUnavailable",
                        f"HAProxy runtime API at {self.socket_path} is unreachable: "
                        f"{exc.strerror or exc}",
                        retryable=True,
                    ) from None
                time.sleep(0.05)
            except PermissionError:
                raise _error(
                    "ConfigError",
                    f"this worker may not open the HAProxy socket {self.socket_path} "
                    "(check its owner and mode)",
                ) from None
            except OSError as exc:
                raise _error(
                    "LoadBalancerUnavailable",
                    f"HAProxy runtime API at {self.socket_path}: {exc}",
                    retryable=True,
                ) from None

    def _once(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.command_timeout)
            sock.connect(self.socket_path)
            sock.sendall(line.encode() + b"\n")
            chunks: list[bytes] = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def _set(self, line: str) -> None:
        """A command that answers nothing on success."""
        log.info("haproxy runtime API: %s", line)
        answer = self.command(line).strip()
        if answer:
            raise self._refused(line, answer)

    def _refused(self, line: str, answer: str) -> ApplicationError:
        if "Permission denied" in answer:
            return _error(
                "ConfigError",
                f"HAProxy refused {line!r}: the socket {self.socket_path} must be `level admin`",
            )
        if answer.startswith(("No such server", "No such backend", "Can't find")):
            return _error("ConfigError", f"HAProxy: {answer} ({line!r})")
        return _error("LoadBalancerError", f"HAProxy refused {line!r}: {answer}")

    # -- reading state

    def state(self, backend: str) -> dict[str, ServerState]:
        _check_name(backend, "backend")
        servers = self.command(f"show servers state {backend}")
        if servers.startswith("Can't find backend"):
            raise _error("ConfigError", f"HAProxy has no backend named '{backend}'")
        stats = self.command(f"show stat {backend} 4 -1")
        return _parse_state(servers, stats)

    # -- the interface

    def switch_to_target(
        self, backend: str, source: str, target: str, target_addr: Address, timeouts: Timeouts
    ) -> Switch:
        return self._move(backend, target, source, target_addr, timeouts, to_target=True)

    def switch_to_source(
        self, backend: str, source: str, target: str, timeouts: Timeouts
    ) -> Switch:
        return self._move(backend, source, target, None, timeouts, to_target=False)

    def retire(
        self, backend: str, source: str, target: str, target_addr: Address, timeouts: Timeouts
    ) -> Switch:
        # `del server` works only for dynamic servers (added with `add server`); the
        # source is a config server, so it stays in maintenance: retiring it means
        # making sure the target serves and the source takes nothing (re-applied here if
        # a reload reverted the switch). Removing it for good is a config change.
        moved = self._move(backend, target, source, target_addr, timeouts, to_target=True)
        moved.facts["lb_source_retired"] = "maint"
        moved.details["note"] = (
            f"runtime state only: update the HAProxy config (remove server {source}, point "
            f"{target} at {target_addr}) before the next reload"
        )
        return moved

    # -- the procedure (both directions)

    def _move(
        self,
        backend: str,
        to: str,
        away: str,
        to_addr: Address | None,
        timeouts: Timeouts,
        *,
        to_target: bool,
    ) -> Switch:
        to_role, away_role = ("target", "source") if to_target else ("source", "target")
        started = time.monotonic()
        before = self._servers(backend, to, away)
        new, old = before[to], before[away]
        details: dict[str, Detail] = {
            f"{to_role}_before": new.describe(),
            f"{away_role}_before": old.describe(),
        }
        facts = {"lb_backend": backend, "lb_serving": to}
        if to_addr is not None:
            facts["lb_target_address"] = str(to_addr)
        if _done(before, to, away, to_addr):
            details.update(_after(before, to, away, to_role, away_role), seconds=0.0)
            return Switch(changed=False, facts=facts, details=details)
        facts[f"lb_previous_{to_role}_state"] = new.describe()
        facts[f"lb_previous_{away_role}_state"] = old.describe()

        if not (new.serving and (to_addr is None or new.address == to_addr)):
            if new.serving and not old.serving:
                raise _error(
                    "InvalidState",
                    f"{backend}/{to} serves traffic at {new.address}, not {to_addr}, and "
                    f"{backend}/{away} is not serving: refusing to re-point the only live "
                    "server",
                )
            details["health_wait_s"] = self._bring_up(
                backend, new, to_addr, timeouts, to_role, away_role
            )
        details.update(self._take_out(backend, old, timeouts))

        final = self.state(backend)
        if not _done(final, to, away, to_addr):
            raise _error(
                "LoadBalancerChanged",
                f"{backend}/{to} is not the only active server ready and UP after the switch "
                f"(now: {_summary(final)}); HAProxy changed under us (reloaded?), retrying "
                "re-applies it",
                retryable=True,
            )
        details.update(
            _after(final, to, away, to_role, away_role),
            seconds=round(time.monotonic() - started, 3),
        )
        log.info("haproxy: %s/%s serves (%s)", backend, to, details)
        return Switch(changed=True, facts=facts, details=details)

    def _servers(self, backend: str, to: str, away: str) -> dict[str, ServerState]:
        """The backend's state, checked to be one this procedure can act on."""
        _check_name(to, "server")
        _check_name(away, "server")
        servers = self.state(backend)
        missing = [n for n in (to, away) if n not in servers]
        if missing:
            raise _error(
                "ConfigError",
                f"HAProxy backend '{backend}' has no server named {', '.join(missing)} "
                f"(it has: {', '.join(servers) or 'none'}); set the runbook's "
                "endpoint.loadBalancer.sourceServer/targetServer",
            )
        if not servers[to].checked:
            raise _error(
                "ConfigError",
                f"{backend}/{to} has no health check: add `check` to its server line, so "
                "traffic moves only to a server that passed one",
            )
        others = [
            n for n, s in servers.items() if n not in (to, away) and s.serving and not s.backup
        ]
        if others:
            raise _error(
                "ConfigError",
                f"HAProxy backend '{backend}' has other active servers taking traffic "
                f"({', '.join(others)}); this step moves the whole backend between "
                f"{away} and {to}",
            )
        return servers

    def _bring_up(
        self,
        backend: str,
        server: ServerState,
        addr: Address | None,
        timeouts: Timeouts,
        role: str,
        other_role: str,
    ) -> float:
        """Make `server` serve, gated on real health checks; seconds waited for them."""
        name = f"{backend}/{server.name}"
        restore = server.weight or server.initial_weight or 1
        weight = "100%" if restore == server.initial_weight else str(restore)
        self._set(f"set weight {name} 0%")
        if addr is not None and server.address != addr:
            if server.admin != "maint":
                self._set(f"set server {name} state maint")
            log.info("haproxy runtime API: set server %s addr %s port %d", name, addr.ip, addr.port)
            answer = self.command(f"set server {name} addr {addr.ip} port {addr.port}")
            now = self.state(backend).get(server.name)
            if now is None or now.address != addr:
                raise self._refused(f"set server {name} addr", answer.strip())
        if not server.check_enabled:
            self._set(f"enable health {name}")
        self._set(f"set server {name} state ready")
        # Leaving maintenance, HAProxy marks the server UP before any check ran: force it
        # DOWN so that only `rise` real, passing checks bring it UP.
        self._set(f"set server {name} health down")
        shown = addr or server.address
        deadline = time.monotonic() + timeouts.health_s
        start = time.monotonic()
        while True:
            now = self.state(backend).get(server.name)
            if now is None or now.admin == "maint":
                raise _error(
                    "LoadBalancerChanged",
                    f"{name} went back to maintenance while waiting for its health checks "
                    "(HAProxy reloaded?); retrying re-applies the switch",
                    retryable=True,
                )
            if now.status == "UP":
                break
            if time.monotonic() >= deadline:
                self._set(f"set server {name} state maint")
                self._set(f"set weight {name} {weight}")
                last = f" (last health check: {now.last_check})" if now.last_check else ""
                raise _error(
                    "TargetUnhealthy" if role == "target" else "SourceUnhealthy",
                    f"{role} {shown} never became healthy in {timeouts.health_s:g}s; traffic "
                    f"stays on the {other_role}{last}",
                    # A rollback waits for a source that may still be booting: let it retry.
                    retryable=role == "source",
                )
            _heartbeat(waiting="health check", server=name, status=now.status)
            time.sleep(timeouts.poll_s)
        self._set(f"set weight {name} {weight}")
        return round(time.monotonic() - start, 3)

    def _take_out(self, backend: str, server: ServerState, timeouts: Timeouts) -> dict[str, Detail]:
        """Drain `server` until its sessions end (or the drain timeout), then maint."""
        name = f"{backend}/{server.name}"
        if server.admin == "maint":
            return {}
        if server.admin != "drain":
            self._set(f"set server {name} state drain")
        start = time.monotonic()
        deadline = start + timeouts.drain_s
        left = server.sessions
        while True:
            now = self.state(backend).get(server.name)
            if now is None or now.admin == "ready":
                raise _error(
                    "LoadBalancerChanged",
                    f"{name} is ready again while draining (HAProxy reloaded?); retrying "
                    "re-applies the switch",
                    retryable=True,
                )
            left = now.sessions
            if left == 0 or now.admin == "maint" or time.monotonic() >= deadline:
                break
            _heartbeat(waiting="drain", server=name, sessions=left)
            time.sleep(timeouts.poll_s)
        # Sessions still open at the drain timeout are not cut: maintenance only stops
        # new ones (and persistent-cookie traffic, which drain still lets through).
        self._set(f"set server {name} state maint")
        return {
            "drain_wait_s": round(time.monotonic() - start, 3),
            "drain_timed_out": left > 0,
            "sessions_left_at_maint": left,
        }


def _check_name(name: str, what: str) -> None:
    if not _NAME.fullmatch(name):
        raise _error(
            "ConfigError",
            f"{what} name {name!r} is not a valid HAProxy name (letters, digits, '-', '_', "
            "'.', ':')",
        )


def _done(servers: dict[str, ServerState], to: str, away: str, to_addr: Address | None) -> bool:
    """`to` is the only active server that is ready and UP, at the wanted address, and
    `away` is in maintenance."""
    new = servers.get(to)
    old = servers.get(away)
    if new is None or old is None or not new.serving or old.admin != "maint":
        return False
    if to_addr is not None and new.address != to_addr:
        return False
    return not any(
        s.admin == "ready" and s.up and not s.backup for n, s in servers.items() if n != to
    )


def _after(
    servers: dict[str, ServerState], to: str, away: str, to_role: str, away_role: str
) -> dict[str, Detail]:
    return {
        f"{to_role}_after": servers[to].describe(),
        f"{away_role}_after": servers[away].describe(),
    }


def _summary(servers: dict[str, ServerState]) -> str:
    return ", ".join(f"{n} {s.describe()}" for n, s in servers.items())


def _parse_state(servers_state: str, stat_csv: str) -> dict[str, ServerState]:
    """Join `show servers state <b>` (admin and operational state, weights, address,
    check flags) with `show stat <b> 4 -1` (status text, sessions, backup flag)."""
    header: list[str] = []
    rows: dict[str, dict[str, str]] = {}
    for line in servers_state.splitlines():
        if line.startswith("# "):
            header = line[2:].split()
        elif header and line.strip():
            row = dict(zip(header, line.split(), strict=False))
            rows[row["srv_name"]] = row
    stat_lines = stat_csv.strip().splitlines()
    stats: dict[str, dict[str, str]] = {}
    if stat_lines and stat_lines[0].startswith("# "):
        reader = csv.DictReader(io.StringIO("\n".join([stat_lines[0][2:], *stat_lines[1:]])))
        for rec in reader:
            if rec.get("svname") not in (None, "FRONTEND", "BACKEND"):
                stats[rec["svname"]] = rec
    out: dict[str, ServerState] = {}
    for name, row in rows.items():
        admin_bits = int(row["srv_admin_state"])
        admin: Admin = (
            "maint"
            if admin_bits & _ADMF_MAINT
            else "drain"
            if admin_bits & _ADMF_DRAIN
            else "ready"
        )
        check_bits = int(row["srv_check_state"])
        stat = stats.get(name, {})
        last_check = " ".join(
            v for v in (stat.get("check_status"), stat.get("check_code")) if v
        ) + (f" {stat['check_desc']}" if stat.get("check_desc") else "")
        addr = row.get("srv_addr", "-")
        port = int(row.get("srv_port", "0") or 0)
        with contextlib.suppress(ValueError):
            addr = str(ipaddress.ip_address(addr))
        out[name] = ServerState(
            name=name,
            address=Address(addr, port) if addr not in ("-", "") and port else None,
            admin=admin,
            op=_OP_STATES.get(int(row["srv_op_state"]), row["srv_op_state"]),
            weight=int(row["srv_uweight"]),
            initial_weight=int(row["srv_iweight"]),
            checked=bool(check_bits & _CHK_CONFIGURED),
            check_enabled=bool(check_bits & _CHK_ENABLED),
            status=stat.get("status", ""),
            sessions=int(stat.get("scur") or 0) + int(stat.get("qcur") or 0),
            backup=stat.get("bck") == "1",
            last_check=last_check.strip(),
        )
    return out


# ------------------------------------------------------------------------ activities


def _haproxy(settings: HAProxy) -> LoadBalancer:
    return HAProxyRuntime.from_settings(settings)


@dataclass
class LoadBalancerActivities:
    """The traffic-switch activities; `factory` builds a load balancer from the site's
    settings (injected: tests and other load balancer types pass their own)."""

    factory: Callable[[HAProxy], LoadBalancer] = _haproxy

    def _lb(self, inp: StepInput) -> tuple[LoadBalancer, Timeouts]:
        settings = inp.context.site.loadBalancer
        if settings is None:
            raise _error("ConfigError", "the site config has no `loadBalancer` section")
        return self.factory(settings), Timeouts.from_settings(settings)

    @staticmethod
    def _target_address(inp: StepInput) -> Address:
        ctx = inp.context
        text = (
            ctx.facts.get("target_address")
            or ctx.facts.get("lb_target_address")
            or ctx.runbook.endpoint.targetAddress
        )
        if not text:
            raise _error(
                "ConfigError",
                f"no address to send {ctx.application}'s traffic to: no earlier step reported "
                "`target_address` and the runbook sets no endpoint.targetAddress",
            )
        return Address.parse(text, "target address")

    @staticmethod
    def _result(inp: StepInput, moved: Switch) -> StepResult:
        return StepResult(
            step=inp.step,
            changed=moved.changed,
            facts=moved.facts,
            details=moved.details,
            attempt=_attempt(),
        )

    @activity.defn(name=Step.UPDATE_LOAD_BALANCER)
    def update_load_balancer(self, inp: StepInput) -> StepResult:
        lb, timeouts = self._lb(inp)
        rb = inp.context.runbook
        servers = rb.endpoint.loadBalancer
        moved = lb.switch_to_target(
            rb.lb_backend,
            servers.sourceServer,
            servers.targetServer,
            self._target_address(inp),
            timeouts,
        )
        return self._result(inp, moved)

    @activity.defn(name=Compensation.RESTORE_LOAD_BALANCER)
    def restore_load_balancer(self, inp: StepInput) -> StepResult:
        if inp.context.site.loadBalancer is None:
            # The switch failed on this same missing section: it never moved anything.
            note = "the site config has no `loadBalancer` section: nothing was switched"
            return self._result(inp, Switch(changed=False, details={"note": note}))
        lb, timeouts = self._lb(inp)
        rb = inp.context.runbook
        servers = rb.endpoint.loadBalancer
        moved = lb.switch_to_source(
            rb.lb_backend, servers.sourceServer, servers.targetServer, timeouts
        )
        return self._result(inp, moved)

    @activity.defn(name=FinalizeStep.RETIRE_SOURCE_FROM_LOAD_BALANCER)
    def retire_source_from_load_balancer(self, inp: StepInput) -> StepResult:
        """The source stays in maintenance (HAProxy deletes only dynamic servers); the
        target is made to serve again if a reload reverted the switch."""
        lb, timeouts = self._lb(inp)
        rb = inp.context.runbook
        servers = rb.endpoint.loadBalancer
        moved = lb.retire(
            rb.lb_backend,
            servers.sourceServer,
            servers.targetServer,
            self._target_address(inp),
            timeouts,
        )
        return self._result(inp, moved)

    def activities(self) -> list[Callable[..., StepResult]]:
        return [
            self.update_load_balancer,
            self.restore_load_balancer,
            self.retire_source_from_load_balancer,
        ]
