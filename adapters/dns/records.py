"""Record changes, each a compare-and-swap verified afterwards: the switch to the target and
its restore, the TTL lowered ahead of the wave and restored at the end, and the companion
TXT records that make them safe to retry on any worker (see the package docstring).
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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

from adapters.dns.server import (
    IN,
    TXT,
    A,
    Answer,
    DnsServer,
    DnsTransport,
    PrerequisiteFailed,
    ipv4,
    marker_name,
    prior_name,
    record_name,
    show,
)
from adapters.dns.tsig import load_tsig_key
from adapters.progress import heartbeat
from cutover.errors import ErrorKind, config_error, error
from cutover.site import Dns

_MARKER_TEXT = re.compile(r"^\s*old=(\d+)\s+at=(\d+)\s*$")
_PRIOR_TEXT = re.compile(
    r"^\s*prev=([0-9.,]+)\s+ttl=(\d+)\s+orig=(\d+)\s+to=([0-9.]+)\s+at=(\d+)\s*$"
)

# ------------------------------------------------------------------- record changes


def _rdataset(
    rdtype: dns.rdatatype.RdataType, ttl: int, values: Iterable[str]
) -> dns.rdataset.Rdataset:
    return dns.rdataset.from_text_list(IN, rdtype, ttl, sorted(values))


def _cas_update(
    server: DnsServer,
    settings: Dns,
    name: dns.name.Name,
    expected: Answer,
    new_values: frozenset[str],
    ttl: int,
    what: str,
    extra: Callable[[dns.update.UpdateMessage], None] | None = None,
) -> None:
    """Replace the A RRset at name with new_values/ttl only if it still holds exactly what
    `expected` read; then verify by query. A lost race raises DnsConflict naming the value
    the server holds now."""
    if expected.rdataset is None:
        raise AssertionError("compare-and-swap needs the current value")
    key = load_tsig_key(settings.tsigKeyFile)  # read now, by this worker; held nowhere
    message = dns.update.UpdateMessage(settings.zone, keyring=key, keyname=key.name)
    # RFC 2136 3.2.3 "RRset exists (value dependent)": the whole RRset, TTLs ignored.
    message.present(name, _rdataset(A, 0, expected.values))
    message.replace(name, _rdataset(A, ttl, new_values))
    if extra is not None:
        extra(message)
    heartbeat(what)
    try:
        server.update(message, what, key)
    except PrerequisiteFailed as why:
        now = server.read(name, A, f"{what} (re-reading after a conflict)")
        raise error(
            ErrorKind.DNS_CONFLICT,
            f"{what}: {name} changed while we were changing it ({why}): we read "
            f"{show(expected.values)}, the server now holds {now.describe()}. Someone else "
            "updated the record; nothing was overwritten. Find out who, then re-run or roll "
            "back",
        ) from None
    after = server.read(name, A, f"{what} (verifying)")
    if after.values != new_values or after.ttl != ttl:
        raise error(
            ErrorKind.DNS_CONFLICT,
            f"{what}: the update was accepted, but {server.where} now answers "
            f"{after.describe()} for {name} instead of {show(new_values)} (TTL {ttl}s): "
            "another client changed it right after us",
        )


@dataclass(frozen=True)
class TtlMarker:
    """The companion TXT record: `old` TTL seconds may still be cached from before `at`."""

    old: int
    at: int

    @property
    def text(self) -> str:
        return f"old={self.old} at={self.at}"

    @property
    def fresh_from(self) -> int:
        """From this time on, no resolver can still hold the record at its old TTL."""
        return self.at + self.old

    @classmethod
    def parse(cls, text: str) -> TtlMarker | None:
        m = _MARKER_TEXT.match(text)
        return cls(int(m.group(1)), int(m.group(2))) if m else None


def read_marker(server: DnsServer, fqdn: dns.name.Name, what: str) -> tuple[TtlMarker | None, str]:
    """The marker, and a note when it exists but cannot be read."""
    answer = server.read(marker_name(fqdn), TXT, what)
    for text in sorted(answer.values):
        marker = TtlMarker.parse(text)
        if marker is not None:
            return marker, ""
    if answer.values:
        return None, f"the marker {marker_name(fqdn)} is unreadable ({show(answer.values)})"
    return None, ""


@dataclass(frozen=True)
class PriorState:
    """What update_dns replaced, kept in the zone itself (see the module docstring).

    ``previous``/``ttl``: the A RRset the switch found; ``original_ttl``: the TTL in place
    before the cutover (before ``lower_dns_ttl`` lowered it, when it did); ``target``: the
    address the switch wrote; ``at``: when (unix seconds)."""

    previous: frozenset[str]
    ttl: int
    original_ttl: int
    target: str
    at: int

    @property
    def text(self) -> str:
        return (
            f"prev={','.join(sorted(self.previous))} ttl={self.ttl} "
            f"orig={self.original_ttl} to={self.target} at={self.at}"
        )

    @classmethod
    def parse(cls, text: str) -> PriorState | None:
        m = _PRIOR_TEXT.match(text)
        if m is None:
            return None
        try:
            previous = frozenset(str(ipaddress.IPv4Address(v)) for v in m.group(1).split(","))
            target = str(ipaddress.IPv4Address(m.group(4)))
        except ValueError:
            return None
        return cls(previous, int(m.group(2)), int(m.group(3)), target, int(m.group(5)))

    def rdataset(self, ttl: int) -> dns.rdataset.Rdataset:
        # One TXT string holds at most 255 bytes: a long round-robin set spans several
        # (read back joined, see rdata_text).
        raw = self.text.encode()
        chunks = [raw[i : i + 255] for i in range(0, len(raw), 255)]
        return dns.rdataset.from_rdata(ttl, dns.rdtypes.ANY.TXT.TXT(IN, TXT, chunks))


def read_prior(server: DnsServer, fqdn: dns.name.Name, what: str) -> PriorState | None:
    answer = server.read(prior_name(fqdn), TXT, what)
    for text in sorted(answer.values):
        prior = PriorState.parse(text)
        if prior is not None:
            return prior
    return None


def _forget(fqdn: dns.name.Name) -> Callable[[dns.update.UpdateMessage], None]:
    """Remove both companion records, in the same update that restores the record."""

    def delete(message: dns.update.UpdateMessage) -> None:
        message.delete(prior_name(fqdn), TXT)
        message.delete(marker_name(fqdn), TXT)

    return delete


@dataclass(frozen=True)
class Switch:
    """What a switch or restore did (``changed`` False: the record was already as wanted)."""

    name: str
    changed: bool
    value: str
    ttl: int
    previous_value: str | None
    previous_ttl: int | None
    note: str = ""
    #: The TTL in place before the cutover (switch: as recorded in _cutover-prior).
    original_ttl: int | None = None


def switch_record(
    settings: Dns,
    name: str,
    target: str,
    ttl: int,
    transport: DnsTransport | None = None,
    clock: Callable[[], float] = time.time,
) -> Switch:
    """Point the A record `name` at the IPv4 `target` with `ttl`, compare-and-swap, and in
    the same update record what it held in ``_cutover-prior.<name>``."""
    fqdn = record_name(name, settings.zone)
    target = ipv4(target, "target")
    server = DnsServer.for_site(settings, transport)
    what = f"switching {fqdn} to {target}"
    current = server.read_authoritative(fqdn, f"{what} (reading it first)")
    if current.rdataset is None:
        raise error(
            ErrorKind.DNS_RECORD_NOT_FOUND,
            f"{what}: {server.where} has {current.describe()} for {fqdn}; update_dns switches "
            "an existing A record: check endpoint.dns.name and the site's dns.zone",
        )
    wanted = frozenset({target})
    prior = read_prior(server, fqdn, f"{what} (reading {prior_name(fqdn)})")
    if current.values == wanted:
        # A retry after a switch that landed (the prior record, written by the same update,
        # says what it replaced), or a record pointed there before this cutover (unknown:
        # restore_dns falls back to endpoint.sourceAddress).
        known = prior if prior is not None and prior.target == target else None
        changed = current.ttl != ttl
        if changed:
            _cas_update(server, settings, fqdn, current, wanted, ttl, f"{what} (TTL {ttl}s)")
        note = (
            f"the record already pointed at the target (a switch that landed before this "
            f"attempt); what it replaced is read from {prior_name(fqdn)}"
            if known is not None
            else "the record already pointed at the target before this cutover: what it held "
            "before is unknown"
        )
        return Switch(
            str(fqdn),
            changed=changed,
            value=target,
            ttl=ttl,
            previous_value=",".join(sorted(known.previous)) if known else None,
            previous_ttl=known.ttl if known else None,
            note=note + (f" (its TTL was {current.ttl}s)" if changed else ""),
            original_ttl=known.original_ttl if known else None,
        )
    assert current.ttl is not None
    marker, _ = read_marker(server, fqdn, f"{what} (reading {marker_name(fqdn)})")
    # The TTL before the cutover: the one lower_dns_ttl replaced, if it lowered it.
    original = max(marker.old, current.ttl) if marker is not None else current.ttl
    record = PriorState(current.values, current.ttl, original, target, int(clock()))

    def add_prior(message: dns.update.UpdateMessage) -> None:
        message.replace(prior_name(fqdn), record.rdataset(ttl))

    _cas_update(
        server,
        settings,
        fqdn,
        current,
        wanted,
        ttl,
        f"{what} (and recording what it held in {prior_name(fqdn)} TXT)",
        extra=add_prior,
    )
    return Switch(
        str(fqdn),
        changed=True,
        value=target,
        ttl=ttl,
        previous_value=",".join(sorted(current.values)),
        previous_ttl=current.ttl,
        original_ttl=original,
    )


def restore_record(
    settings: Dns,
    name: str,
    target: str | None,
    previous: str | None,
    previous_ttl: int | None,
    transport: DnsTransport | None = None,
    *,
    original_ttl: int | None = None,
    fallback: str | None = None,
) -> Switch:
    """Point `name` back at what the switch replaced, only if it still holds the target
    (our switch), compare-and-swap, with the TTL in place before the cutover; the same
    update removes ``_cutover-prior.<name>`` and ``_cutover-ttl.<name>``.

    What the switch replaced: `previous` (update_dns's facts), else the prior record in the
    zone, else `fallback` (the runbook's source address, a guess). The TTL: `original_ttl`
    (facts), else the prior record's, else the lowering marker's, else `previous_ttl`, else
    the current one. A record that already holds the previous value keeps it; only its TTL
    is restored (a rollback that finds the switch never happened, or already undone).

    A record holding anything else is someone's later change when the switch is known to
    have landed (DnsConflict); otherwise the switch never happened and there is nothing to
    undo."""
    fqdn = record_name(name, settings.zone)
    server = DnsServer.for_site(settings, transport)
    current = server.read_authoritative(fqdn, f"restoring {fqdn} (reading it first)")
    prior = read_prior(server, fqdn, f"restoring {fqdn} (reading {prior_name(fqdn)})")
    marker, _ = read_marker(server, fqdn, f"restoring {fqdn} (reading {marker_name(fqdn)})")
    ours = frozenset({ipv4(target, "target")}) if target else None
    if prior is not None and ours is not None and frozenset({prior.target}) != ours:
        prior = None  # another switch's record (not to the target this cutover started)
    if ours is None and prior is not None:
        ours = frozenset({prior.target})
    old: frozenset[str] | None
    if previous:
        old = frozenset(ipv4(v, "previous") for v in previous.split(",") if v.strip())
    elif prior is not None:
        old = prior.previous
    elif fallback:
        old = frozenset({ipv4(fallback, "source")})
    else:
        old = None
    switched = bool(previous) or prior is not None
    ttl = next(
        (
            t
            for t in (
                original_ttl,
                prior.original_ttl if prior else None,
                marker.old if marker else None,
                previous_ttl,
            )
            if t is not None
        ),
        None,
    )
    what = f"restoring {fqdn} to {show(old) if old else 'its previous value'}"
    if old is not None and current.rdataset is not None and current.values == old:
        assert current.ttl is not None
        if prior is None and marker is None and ttl in (None, current.ttl):
            return Switch(
                str(fqdn),
                False,
                show(old),
                current.ttl,
                None,
                None,
                note="the record already holds the previous value (never switched, or restored)",
            )
        # Never switched (or restored without its TTL): the TTL lowered for the cutover
        # goes back, and the companion records go.
        restored = ttl if ttl is not None else current.ttl
        _cas_update(
            server,
            settings,
            fqdn,
            current,
            old,
            restored,
            f"{what} (TTL {restored}s, as before the cutover)",
            extra=_forget(fqdn),
        )
        return Switch(
            str(fqdn),
            True,
            show(old),
            restored,
            None,
            current.ttl,
            note=f"the record already holds the previous value; its TTL {current.ttl}s is "
            f"back to {restored}s, as before the cutover",
        )
    if ours is None or current.rdataset is None or current.values != ours:
        if not switched:
            return Switch(
                str(fqdn),
                False,
                current.describe(),
                current.ttl or 0,
                None,
                None,
                note=f"the record holds {current.describe()}, not the target: it was never "
                "switched, so there is nothing to restore",
            )
        raise error(
            ErrorKind.DNS_CONFLICT,
            f"{what}: {fqdn} holds {current.describe()}, neither the target "
            f"{show(ours) if ours else '(unknown)'} nor the previous value: someone changed "
            "it after the switch. Not overwriting their change: decide which value is right "
            "and set it by hand",
        )
    if old is None:
        raise config_error(
            f"{what}: {fqdn} points at the target, but its previous value is unknown "
            f"(update_dns reported none and there is no {prior_name(fqdn)} record: the record "
            "pointed at the target before the cutover): set the runbook's endpoint.sourceAddress"
        )
    restored = ttl if ttl is not None else int(current.rdataset.ttl)
    _cas_update(server, settings, fqdn, current, old, restored, what, extra=_forget(fqdn))
    return Switch(str(fqdn), True, show(old), restored, show(current.values), current.ttl)


@dataclass(frozen=True)
class TtlRestored:
    name: str
    changed: bool
    ttl: int
    previous_ttl: int
    note: str = ""


def restore_ttl(
    settings: Dns,
    name: str,
    original_ttl: int | None,
    transport: DnsTransport | None = None,
) -> TtlRestored:
    """Put back the TTL in place before the cutover on whatever the record holds now (the
    target after a finalize), compare-and-swap on its values, and remove the companion
    records in the same update. The TTL: `original_ttl` (facts), else the prior record's,
    else the lowering marker's; none known: nothing to do.

    A record the switch pointed at the target that now holds something else was changed by
    someone after the switch: DnsConflict, nothing touched."""
    fqdn = record_name(name, settings.zone)
    server = DnsServer.for_site(settings, transport)
    what = f"restoring the TTL of {fqdn}"
    current = server.read_authoritative(fqdn, f"{what} (reading it first)")
    if current.rdataset is None or current.ttl is None:
        raise error(
            ErrorKind.DNS_RECORD_NOT_FOUND,
            f"{what}: {server.where} has {current.describe()} for {fqdn}",
        )
    prior = read_prior(server, fqdn, f"{what} (reading {prior_name(fqdn)})")
    marker, _ = read_marker(server, fqdn, f"{what} (reading {marker_name(fqdn)})")
    ttl = next(
        (
            t
            for t in (
                original_ttl,
                prior.original_ttl if prior else None,
                marker.old if marker else None,
            )
            if t is not None
        ),
        None,
    )
    if prior is not None and current.values != frozenset({prior.target}):
        raise error(
            ErrorKind.DNS_CONFLICT,
            f"{what}: {fqdn} holds {current.describe()}, not the target {prior.target} the "
            f"cutover wrote: someone changed it after the switch. Not touching it: set its "
            f"TTL by hand (it was {prior.original_ttl}s before the cutover) and delete "
            f"{prior_name(fqdn)} and {marker_name(fqdn)} TXT",
        )
    if ttl is None:
        return TtlRestored(
            str(fqdn),
            False,
            current.ttl,
            current.ttl,
            note="nothing records the TTL from before the cutover (no marker, no prior record, "
            "no fact): left as it is",
        )
    if current.ttl == ttl and prior is None and marker is None:
        return TtlRestored(
            str(fqdn), False, ttl, ttl, note=f"the TTL is already {ttl}s, as before the cutover"
        )
    _cas_update(
        server,
        settings,
        fqdn,
        current,
        current.values,
        ttl,
        f"{what} to {ttl}s",
        extra=_forget(fqdn),
    )
    return TtlRestored(str(fqdn), True, ttl, current.ttl)


@dataclass(frozen=True)
class TtlLowered:
    name: str
    changed: bool
    ttl: int
    previous_ttl: int
    marker: TtlMarker | None
    note: str = ""


def lower_ttl(
    settings: Dns,
    name: str,
    ttl: int,
    transport: DnsTransport | None = None,
    clock: Callable[[], float] = time.time,
) -> TtlLowered:
    """Lower the A record's TTL to `ttl` (values untouched, compare-and-swap) and publish
    the marker `_cutover-ttl.<name>` = "old=<ttl it had> at=<now>" in the same update.

    A TTL already at or below `ttl` is left alone (changed=False). Lowering in two stages
    keeps whichever marker ends later: caches holding the older, higher TTL still count.
    """
    fqdn = record_name(name, settings.zone)
    server = DnsServer.for_site(settings, transport)
    what = f"lowering the TTL of {fqdn} to {ttl}s"
    current = server.read_authoritative(fqdn, f"{what} (reading it first)")
    if current.rdataset is None or current.ttl is None:
        raise error(
            ErrorKind.DNS_RECORD_NOT_FOUND,
            f"{what}: {server.where} has {current.describe()} for {fqdn}",
        )
    existing, _ = read_marker(server, fqdn, f"{what} (reading the marker)")
    if current.ttl <= ttl:
        return TtlLowered(
            str(fqdn),
            False,
            current.ttl,
            current.ttl,
            existing,
            note=f"the TTL is already {current.ttl}s",
        )
    now = int(clock())
    marker = TtlMarker(current.ttl, now)
    if existing is not None and existing.fresh_from > marker.fresh_from:
        marker = existing
    mark = marker_name(fqdn)
    text = marker.text

    def add_marker(message: dns.update.UpdateMessage) -> None:
        message.replace(mark, ttl, TXT, f'"{text}"')

    _cas_update(server, settings, fqdn, current, current.values, ttl, what, extra=add_marker)
    return TtlLowered(str(fqdn), True, ttl, current.ttl, marker)
