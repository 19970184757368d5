"""The `dns` check: what a name resolves to at the authoritative server, and whether its
TTL (and the time since `lower_dns_ttl` published it) allows the switch.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from datetime import UTC, datetime

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.tsig
import dns.update
from temporalio.exceptions import ApplicationError

from adapters.dns.records import read_marker
from adapters.dns.server import (
    TTL_MARKER_LABEL,
    DnsServer,
    DnsTransport,
    marker_name,
    record_name,
    show,
)
from cutover.errors import config_error
from cutover.models import CheckInput, CheckResult
from cutover.site import DnsProbe

# ---------------------------------------------------------------------------- probe


def iso_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _expected(probe: DnsProbe) -> frozenset[str] | None:
    if probe.expectValue is None:
        return None
    if probe.rdtype == "TXT":
        return frozenset({probe.expectValue})
    parts = [p.strip() for p in probe.expectValue.split(",") if p.strip()]
    if probe.rdtype in ("A", "AAAA"):
        try:
            return frozenset(str(ipaddress.ip_address(p)) for p in parts)
        except ValueError:
            raise config_error(
                f"dns probe {probe.name}: expectValue {probe.expectValue!r} is not a "
                f"comma-separated list of {probe.rdtype} addresses"
            ) from None
    return frozenset(p.rstrip(".").lower() for p in parts)


def dns_probe(
    inp: CheckInput,
    probe: DnsProbe,
    *,
    transport: DnsTransport | None = None,
    clock: Callable[[], float] = time.time,
) -> CheckResult:
    """Query the authoritative server; pass when the answer matches `expectValue` (if set),
    its TTL is at most `maxTtl` (default: the site's dns.ttlThresholdSeconds) and, when the
    `_cutover-ttl` marker exists, the low TTL has been published for at least the old TTL.
    A server that does not answer fails the check; only a misconfigured probe raises."""
    site = inp.dns
    host = probe.server or (site.server if site else None)
    if host is None:
        raise config_error(
            f"check {inp.name}: the dns probe names no server and the site has no `dns` section"
        )
    port = probe.port or (site.port if site and not probe.server else 53)
    zone = site.zone if site else None
    fqdn = record_name(probe.name, zone)
    max_ttl = (
        probe.maxTtl if probe.maxTtl is not None else (site.ttlThresholdSeconds if site else None)
    )
    expected = _expected(probe)
    rdtype = dns.rdatatype.from_text(probe.rdtype)
    server = DnsServer(host, port, probe.timeoutSeconds, transport)

    want = []
    if expected is not None:
        want.append(f"{probe.rdtype} {show(expected)}")
    if max_ttl is not None:
        want.append(f"TTL <= {max_ttl}s, published for at least the previous TTL")
    threshold = "; ".join(want) or f"an {probe.rdtype} record"

    def result(passed: bool, measured: str, detail: str = "") -> CheckResult:
        return CheckResult(
            name=inp.name,
            phase=inp.phase,
            passed=passed,
            measured=measured,
            threshold=threshold,
            detail=detail,
        )

    what = f"check {inp.name}: querying {fqdn} {probe.rdtype} at {server.where}"
    try:
        answer = server.read(fqdn, rdtype, what)
        marker, marker_note = (
            read_marker(server, fqdn, f"{what} (marker)")
            if max_ttl is not None and fqdn.labels[0] != TTL_MARKER_LABEL.encode()
            else (None, "")
        )
    except ApplicationError as err:
        if err.type == "ConfigError":
            raise
        return result(False, "no answer", err.message)
    if answer.rdataset is None or answer.ttl is None:
        return result(False, answer.describe(), f"{fqdn} at {server.where}")

    ttl = answer.ttl
    measured = [f"{probe.rdtype} {show(answer.values)}", f"TTL {ttl}s"]
    failures: list[str] = []
    notes: list[str] = []
    if not answer.authoritative:
        notes.append(f"{server.where} answered from a cache, not authoritatively")
    if expected is not None and answer.values != expected:
        failures.append(f"{fqdn} holds {show(answer.values)}, expected {show(expected)}")
    if max_ttl is not None:
        if ttl > max_ttl:
            failures.append(f"the TTL is {ttl}s, above {max_ttl}s: lower it (lower_dns_ttl)")
        elif marker is not None:
            now = clock()
            age = now - marker.at
            measured.append(f"low TTL published {age:.0f}s ago (previous TTL {marker.old}s)")
            if age < marker.old:
                failures.append(
                    f"the low TTL was published {age:.0f}s ago, but resolvers may cache the "
                    f"previous TTL ({marker.old}s) until {iso_time(marker.fresh_from)} "
                    f"({marker.fresh_from - now:.0f}s from now)"
                )
        else:
            measured.append("low TTL published at an unknown time")
            notes.append(
                marker_note
                or f"no {marker_name(fqdn)} marker: the TTL is low, but how long it has been "
                "published is unknown (lower_dns_ttl writes the marker)"
            )
    return result(not failures, ", ".join(measured), "; ".join([*failures, *notes]))
