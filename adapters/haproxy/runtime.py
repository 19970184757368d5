"""HAProxy's runtime API (the admin-level stats socket, one command per connection): the
`LoadBalancer` implementation, the switch and its safety rules (see the package docstring).
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
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from adapters.haproxy.config import persist_retirement
from cutover import facts as F
from cutover.errors import ErrorKind, error
from cutover.site import HAProxy
from cutover.traffic import Address, Admin, BackendPrior, Detail, ServerState, Switch, Timeouts

log = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------- haproxy


class HAProxyRuntime:
    """HAProxy through its runtime API: a UNIX stats socket at `level admin`."""

    def __init__(
        self,
        socket_path: str,
        command_timeout: float = 10.0,
        reconnect_for: float = 3.0,
        config_file: str | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.command_timeout = command_timeout
        #: A reload briefly leaves no process on the socket: retry connecting this long.
        self.reconnect_for = reconnect_for
        #: The config file `retire` writes the final state into (None: it cannot).
        self.config_file = config_file

    @classmethod
    def from_settings(cls, settings: HAProxy) -> HAProxyRuntime:
        return cls(settings.socket, config_file=settings.configFile)

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
                    raise error(
                        ErrorKind.LOAD_BALANCER_UNAVAILABLE,
                        f"HAProxy runtime API at {self.socket_path} is unreachable: "
                        f"{exc.strerror or exc}",
                        retryable=True,
                    ) from None
                time.sleep(0.05)
            except PermissionError:
                raise error(
                    ErrorKind.CONFIG_ERROR,
                    f"this worker may not open the HAProxy socket {self.socket_path} "
                    "(check its owner and mode)",
                ) from None
            except OSError as exc:
                raise error(
                    ErrorKind.LOAD_BALANCER_UNAVAILABLE,
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
            return error(
                ErrorKind.CONFIG_ERROR,
                f"HAProxy refused {line!r}: the socket {self.socket_path} must be `level admin`",
            )
        if answer.startswith(("No such server", "No such backend", "Can't find")):
            return error(ErrorKind.CONFIG_ERROR, f"HAProxy: {answer} ({line!r})")
        return error(ErrorKind.LOAD_BALANCER_ERROR, f"HAProxy refused {line!r}: {answer}")

    # -- reading state

    def state(self, backend: str) -> dict[str, ServerState]:
        _check_name(backend, "backend")
        servers = self.command(f"show servers state {backend}")
        if servers.startswith("Can't find backend"):
            raise error(ErrorKind.CONFIG_ERROR, f"HAProxy has no backend named '{backend}'")
        stats = self.command(f"show stat {backend} 4 -1")
        return _parse_state(servers, stats)

    # -- the interface

    def switch_to_target(
        self, backend: str, source: str, target: str, target_addr: Address, timeouts: Timeouts
    ) -> Switch:
        return self._move(backend, target, source, target_addr, timeouts, to_target=True)

    def switch_to_source(
        self,
        backend: str,
        source: str,
        target: str,
        timeouts: Timeouts,
        prior: BackendPrior | None = None,
    ) -> Switch:
        moved = self._move(backend, source, target, None, timeouts, to_target=False)
        if prior is not None:
            put_back = self._put_back(backend, prior)
            if put_back:
                moved.changed = True
                moved.details["put_back"] = "; ".join(put_back)
                moved.details.update(
                    _after(self.state(backend), source, target, "source", "target")
                )
        return moved

    def _put_back(self, backend: str, prior: BackendPrior) -> list[str]:
        """What the switch changed besides the admin states, back as `prior` recorded it:
        the target's address, weight and health check (it is in maintenance now, so none
        of it sends traffic anywhere), and the source's weight."""
        now = self.state(backend)
        done: list[str] = []
        target, source = now.get(prior.target.name), now.get(prior.source.name)
        if target is not None and target.admin == "maint":
            name = f"{backend}/{target.name}"
            if prior.target.address and str(target.address) != prior.target.address:
                addr = Address.parse(prior.target.address, "recorded address")
                answer = self.command(f"set server {name} addr {addr.ip} port {addr.port}")
                after = self.state(backend).get(target.name)
                if after is None or after.address != addr:
                    raise self._refused(f"set server {name} addr", answer.strip())
                done.append(f"{name} address {addr}")
            if target.weight != prior.target.weight:
                self._set(f"set weight {name} {prior.target.weight}")
                done.append(f"{name} weight {prior.target.weight}")
            if target.check_enabled and not prior.target.checkEnabled:
                self._set(f"disable health {name}")
                done.append(f"{name} health check disabled")
        if source is not None and source.serving and 0 < prior.source.weight != source.weight:
            self._set(f"set weight {backend}/{source.name} {prior.source.weight}")
            done.append(f"{backend}/{source.name} weight {prior.source.weight}")
        return done

    def retire(
        self,
        backend: str,
        source: str,
        target: str,
        target_addr: Address,
        timeouts: Timeouts,
        why: str = "",
    ) -> Switch:
        # `del server` works only for dynamic servers (added with `add server`); the
        # source is a config server: retiring it means making sure the target serves and
        # the source takes nothing (re-applied here if a reload reverted the switch), then
        # writing that into the config so no reload undoes it.
        moved = self._move(backend, target, source, target_addr, timeouts, to_target=True)
        moved.facts[F.LB_SOURCE_RETIRED] = "maint"
        if self.config_file is None:
            raise _traffic_error(
                ErrorKind.CONFIG_ERROR,
                f"{backend}/{target} at {target_addr} serves and {backend}/{source} is in "
                "maintenance, but only in HAProxy's runtime state: the site sets no "
                "loadBalancer.configFile, so the next reload sends traffic back to the "
                f"source. Set it, or edit the config by hand (server {target} {target_addr}, "
                f"server {source} ... disabled)",
                traffic_on="target",
                serving=[target],
            )
        edit = persist_retirement(
            Path(self.config_file), backend, source, target, target_addr, why or "cutover"
        )
        moved.changed = moved.changed or edit.changed
        moved.facts[F.LB_PERSISTED] = "config"
        moved.details["config_file"] = self.config_file
        if edit.backup:
            moved.details["config_backup"] = edit.backup
        moved.details["note"] = edit.note
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
        facts = {F.LB_BACKEND: backend, F.LB_SERVING: to}
        if to_addr is not None:
            facts[F.LB_TARGET_ADDRESS] = str(to_addr)
        if _done(before, to, away, to_addr):
            details.update(_after(before, to, away, to_role, away_role), seconds=0.0)
            return Switch(changed=False, facts=facts, details=details)
        facts[F.lb_previous_state(to_role)] = new.describe()
        facts[F.lb_previous_state(away_role)] = old.describe()

        if not (new.serving and (to_addr is None or new.address == to_addr)):
            if new.serving and not old.serving:
                raise error(
                    ErrorKind.INVALID_STATE,
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
            raise error(
                ErrorKind.LOAD_BALANCER_CHANGED,
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
            raise error(
                ErrorKind.CONFIG_ERROR,
                f"HAProxy backend '{backend}' has no server named {', '.join(missing)} "
                f"(it has: {', '.join(servers) or 'none'}); set the runbook's "
                "endpoint.loadBalancer.sourceServer/targetServer",
            )
        if not servers[to].checked:
            raise error(
                ErrorKind.CONFIG_ERROR,
                f"{backend}/{to} has no health check: add `check` to its server line, so "
                "traffic moves only to a server that passed one",
            )
        others = [
            n for n, s in servers.items() if n not in (to, away) and s.serving and not s.backup
        ]
        if others:
            raise error(
                ErrorKind.CONFIG_ERROR,
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
        moved_addr = addr is not None and server.address != addr
        if addr is not None and moved_addr:
            if server.admin != "maint":
                self._set(f"set server {name} state maint")
            log.info("haproxy runtime API: set server %s addr %s port %d", name, addr.ip, addr.port)
            answer = self.command(f"set server {name} addr {addr.ip} port {addr.port}")
            now = self.state(backend).get(server.name)
            if now is None or now.address != addr:
                raise self._refused(f"set server {name} addr", answer.strip())
        enabled_health = not server.check_enabled
        if enabled_health:
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
                raise error(
                    ErrorKind.LOAD_BALANCER_CHANGED,
                    f"{name} went back to maintenance while waiting for its health checks "
                    "(HAProxy reloaded?); retrying re-applies the switch",
                    retryable=True,
                )
            if now.status == "UP":
                break
            if time.monotonic() >= deadline:
                # Back to how it was (but its address: in maintenance it takes nothing),
                # so a give-up leaves no half-made switch behind.
                self._set(f"set server {name} state maint")
                self._set(f"set weight {name} {weight}")
                if enabled_health:
                    self._set(f"disable health {name}")
                if moved_addr and server.address is not None:
                    back = server.address
                    self.command(f"set server {name} addr {back.ip} port {back.port}")
                last = f" (last health check: {now.last_check})" if now.last_check else ""
                after = self.state(backend)
                serving = sorted(n for n, s in after.items() if s.serving)
                where = (
                    ", ".join(f"{backend}/{n} at {after[n].address}" for n in serving)
                    if serving
                    else "none: no server of the backend is serving"
                )
                raise _traffic_error(
                    ErrorKind.TARGET_UNHEALTHY if role == "target" else ErrorKind.SOURCE_UNHEALTHY,
                    f"{role} {shown} never became healthy in {timeouts.health_s:g}s; traffic "
                    f"stays on the {other_role} (serving: {where}); {name} is back in "
                    f"maintenance, nothing else changed{last}",
                    traffic_on=other_role if serving else "none",
                    serving=serving,
                    # A rollback waits for a source that may still be booting: a retry can
                    # help. The target failing its checks is this switch's answer.
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
                raise error(
                    ErrorKind.LOAD_BALANCER_CHANGED,
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


def _traffic_error(
    kind: ErrorKind, message: str, *, traffic_on: str, serving: list[str], retryable: bool = False
) -> ApplicationError:
    """A typed failure that says where traffic is, in words and in its details (the
    workflow decides from them which undo may still run)."""
    return ApplicationError(
        message,
        {"trafficOn": traffic_on, "serving": serving},
        type=kind.value,
        non_retryable=not retryable,
    )


def _check_name(name: str, what: str) -> None:
    if not _NAME.fullmatch(name):
        raise error(
            ErrorKind.CONFIG_ERROR,
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
