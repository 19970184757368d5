"""DNS: the record switch (RFC 2136 updates signed with TSIG) and the DNS probes.

The only module that imports dnspython. Every change is a compare-and-swap: read the
record at the zone's authoritative server, then send one update whose prerequisite is
that the record still holds exactly what was read (RFC 2136 "RRset exists, value
dependent"), so a concurrent change by anyone else fails the update instead of being
overwritten. Every change is verified by querying the server afterwards.

Names. A record name ending in a dot is absolute. A name without one is taken as written
when it already ends with the zone (``app.apps.test`` in zone ``apps.test``), and as
relative to the zone otherwise (``app`` -> ``app.apps.test.``). Either way it must lie
inside the site's zone.

The TSIG key is read from the site's ``dns.tsigKeyFile`` (a BIND key file, as written by
``tsig-keygen``) by the worker at the moment it signs, and lives only in this process:
no log line, error message, result or workflow history ever holds its secret.

Errors are typed ApplicationErrors: non-retryable ``DnsUpdateRefused`` (REFUSED: unsigned
or the key is not granted by the zone's update-policy; NOTAUTH: not the zone's primary),
``DnsAuthFailed`` (BADSIG, BADKEY, BADTIME), ``DnsConflict`` (the compare-and-swap lost:
the record changed under us), ``DnsRecordNotFound`` and ``ConfigError``; retryable
``DnsUnavailable`` (timeouts, refused connections, SERVFAIL).

The TTL marker. ``lower_dns_ttl`` lowers the record's TTL ahead of the wave and, in the
same atomic update, writes the TXT record ``_cutover-ttl.<name>`` = ``old=<ttl> at=<unix
seconds>``: the TTL resolvers may still be caching and when the low one was published.
The ``dns`` probe then passes only once ``now - at >= old``; without a marker it judges
the TTL alone and says the age is unknown.

The prior-state record. ``update_dns`` writes, in the same atomic update that points the
record at the target, the TXT record ``_cutover-prior.<name>`` = ``prev=<addresses>
ttl=<ttl> orig=<ttl before the cutover> to=<target> at=<unix seconds>``. The zone is the
one store every worker reads and no crash can lose: a retried ``update_dns`` (its first
attempt's update landed, then the worker died or the verification read failed) reads what
the switch replaced from it, and so do ``restore_dns`` and ``restore_dns_ttl``. (Heartbeat
details would die with a worker killed before its heartbeat was sent; the zone cannot
hold the switch without this record.) ``restore_dns`` (rollback) and ``restore_dns_ttl``
(finalize) put back the TTL in place before the cutover (the one ``lower_dns_ttl``
replaced, when it ran) and delete both companion records in the same update. The key
must be granted TXT at ``_cutover-prior.<name>`` and ``_cutover-ttl.<name>`` as well as A
at the name; an update-policy that does not refuses the switch whole (nothing changes).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

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
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import attempt as _attempt
from activities.common import error as _error
from activities.common import heartbeat as _heartbeat
from cutover.catalog import Compensation, Step
from cutover.models import CheckInput, CheckResult, StepInput, StepResult
from cutover.runbook import DnsEndpoint
from cutover.site import Dns, DnsProbe

#: The optional preparation step that lowers the record's TTL ahead of the wave.
LOWER_DNS_TTL = "lower_dns_ttl"
#: First label of the companion TXT record that says when the low TTL was published.
TTL_MARKER_LABEL = "_cutover-ttl"
_MARKER_TEXT = re.compile(r"^\s*old=(\d+)\s+at=(\d+)\s*$")
#: The finalize step that puts back the TTL in place before the cutover.
RESTORE_DNS_TTL = "restore_dns_ttl"
#: First label of the companion TXT record that holds what update_dns replaced.
PRIOR_LABEL = "_cutover-prior"
_PRIOR_TEXT = re.compile(
    r"^\s*prev=([0-9.,]+)\s+ttl=(\d+)\s+orig=(\d+)\s+to=([0-9.]+)\s+at=(\d+)\s*$"
)

_A = dns.rdatatype.A
_TXT = dns.rdatatype.TXT
_CNAME = dns.rdatatype.CNAME
_IN = dns.rdataclass.IN

# ---------------------------------------------------------------------------- errors


def _config(message: str) -> ApplicationError:
    return _error("ConfigError", message)


# --------------------------------------------------------------------------- the key


class TsigKey(dns.tsig.Key):
    """A TSIG key whose repr and str never show its secret (dnspython's repr does)."""

    def __init__(self, name: str, secret: bytes, algorithm: dns.name.Name, source: str) -> None:
        super().__init__(name, secret, algorithm)
        self.source = source

    def __repr__(self) -> str:
        return f"<TSIG key {self.name} ({self.algorithm}) from {self.source}, secret hidden>"

    __str__ = __repr__

    @property
    def label(self) -> str:
        return f"TSIG key '{self.name.to_text(omit_final_dot=True)}' (from {self.source})"


_ALGORITHMS: dict[str, dns.name.Name] = {
    "hmac-md5": dns.tsig.HMAC_MD5,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}
# Quoted strings first, so a `//` or `#` inside a base64 secret is not taken for a comment.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|/\*.*?\*/|//[^\n]*|#[^\n]*|[{};]|[^\s{};"]+', re.DOTALL)


def parse_tsig_key(text: str, source: str = "the key file") -> TsigKey:
    """The one key in a BIND key file: ``key "name" { algorithm hmac-sha256; secret "..."; };``.

    Errors name the file and the key, never the secret (nor any part of it).
    """
    tokens = [
        t[1:-1] if t.startswith('"') else t
        for t in _TOKEN.findall(text)
        if not t.startswith(("#", "//", "/*"))
    ]
    keys: list[tuple[str, dict[str, str]]] = []
    i = 0
    bad = _config(
        f"{source} is not a BIND key file: expected "
        'key "NAME" { algorithm hmac-sha256; secret "BASE64"; }; (as tsig-keygen writes it)'
    )
    while i < len(tokens):
        if tokens[i] != "key" or i + 2 >= len(tokens) or tokens[i + 2] != "{":
            raise bad
        name, fields = tokens[i + 1], {}
        i += 3
        while i < len(tokens) and tokens[i] != "}":
            stmt: list[str] = []
            while i < len(tokens) and tokens[i] not in (";", "}"):
                stmt.append(tokens[i])
                i += 1
            if i < len(tokens) and tokens[i] == ";":
                i += 1
            if len(stmt) == 2:
                fields[stmt[0].lower()] = stmt[1]
            elif stmt:
                raise bad
        if i >= len(tokens):
            raise bad
        i += 1  # "}"
        if i < len(tokens) and tokens[i] == ";":
            i += 1
        keys.append((name, fields))
    if len(keys) != 1:
        raise _config(
            f"{source} holds {len(keys)} keys; the site's dns.tsigKeyFile must hold exactly one"
        )
    name, fields = keys[0]
    algorithm = fields.get("algorithm", "").lower()
    if algorithm not in _ALGORITHMS:
        raise _config(
            f"key '{name}' in {source}: algorithm {algorithm or '(missing)'!r} is not one of "
            + ", ".join(_ALGORITHMS)
        )
    try:
        secret = base64.b64decode(fields.get("secret", ""), validate=True)
    except (binascii.Error, ValueError):
        secret = b""
    if not secret:
        raise _config(f"key '{name}' in {source}: the secret is missing or not valid base64")
    try:
        return TsigKey(name, secret, _ALGORITHMS[algorithm], source)
    except dns.exception.DNSException:
        raise _config(f"{source}: {name!r} is not a valid key name") from None


def load_tsig_key(path: str) -> TsigKey:
    """Read the key file now (the worker reads it each time it signs; nothing caches it)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise _config(f"the TSIG key file {path} (site dns.tsigKeyFile) does not exist") from None
    except PermissionError:
        raise _config(f"the worker may not read the TSIG key file {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _config(f"cannot read the TSIG key file {path}: {type(exc).__name__}") from None
    return parse_tsig_key(text, path)


# ----------------------------------------------------------------------------- names


def record_name(name: str, zone: str | None) -> dns.name.Name:
    """The absolute name of a record (see the module docstring for the rule)."""
    try:
        if zone is None or name.endswith("."):
            absolute = dns.name.from_text(name)
        else:
            origin = dns.name.from_text(zone)
            as_written = dns.name.from_text(name)
            absolute = (
                as_written
                if as_written.is_subdomain(origin)
                else dns.name.from_text(name, origin=origin)
            )
        if zone is not None and not absolute.is_subdomain(dns.name.from_text(zone)):
            raise _config(
                f"{absolute} is outside the site's DNS zone {zone}: the zone's server "
                "cannot change it (fix endpoint.dns.name or the site's dns.zone)"
            )
    except dns.exception.DNSException as exc:
        raise _config(f"{name!r} is not a valid DNS name: {exc}") from None
    return absolute


def marker_name(name: dns.name.Name) -> dns.name.Name:
    """``_cutover-ttl.<name>``: where lower_dns_ttl records the TTL it replaced, and when."""
    return dns.name.Name((TTL_MARKER_LABEL.encode(), *name.labels))


def prior_name(name: dns.name.Name) -> dns.name.Name:
    """``_cutover-prior.<name>``: where update_dns records what it replaced."""
    return dns.name.Name((PRIOR_LABEL.encode(), *name.labels))


def _host(address: str) -> str:
    """The host part of ``host:port``, ``[v6]:port``, or a bare host."""
    address = address.strip()
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    if address.count(":") == 1:
        return address.split(":", 1)[0]
    return address


def _ipv4(address: str, what: str) -> str:
    host = _host(address)
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        raise _config(
            f"the {what} address {address!r} must be an IPv4 address (optionally with :port) "
            "to be written into an A record"
        ) from None


# ------------------------------------------------------------------------- transport


class DnsTransport(Protocol):
    """Sends one DNS message and returns the reply (injectable: tests wrap the real one)."""

    def send(
        self, message: dns.message.Message, address: str, port: int, timeout: float
    ) -> dns.message.Message: ...


class TcpTransport:
    """DNS over TCP: updates and reads alike (no truncation, the connection is the ack)."""

    def send(
        self, message: dns.message.Message, address: str, port: int, timeout: float
    ) -> dns.message.Message:
        return dns.query.tcp(message, address, timeout=timeout, port=port)


@dataclass(frozen=True)
class Answer:
    """One RRset as the authoritative server answered it (``rdataset`` None: no records)."""

    name: dns.name.Name
    rdtype: dns.rdatatype.RdataType
    rcode: str
    rdataset: dns.rdataset.Rdataset | None
    authoritative: bool
    #: The name is an alias (a CNAME) instead of holding records of this type.
    alias: str | None = None

    @property
    def values(self) -> frozenset[str]:
        return frozenset(_value(rd) for rd in self.rdataset or ())

    @property
    def ttl(self) -> int | None:
        return None if self.rdataset is None else int(self.rdataset.ttl)

    def describe(self) -> str:
        if self.rdataset is not None:
            return f"{_show(self.values)} (TTL {self.ttl}s)"
        if self.alias is not None:
            return f"an alias (CNAME) of {self.alias}"
        if self.rcode == "NXDOMAIN":
            return "no such name (NXDOMAIN)"
        return f"no {dns.rdatatype.to_text(self.rdtype)} record"


def _value(rd: dns.rdata.Rdata) -> str:
    """A comparable text form: addresses normalised, names without the final dot, TXT
    strings joined and unquoted."""
    if isinstance(rd, dns.rdtypes.ANY.TXT.TXT):
        return b"".join(rd.strings).decode("utf-8", errors="replace")
    if rd.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return str(ipaddress.ip_address(rd.to_text()))
    return rd.to_text().rstrip(".").lower()


def _show(values: Iterable[str]) -> str:
    return ", ".join(sorted(values)) or "(nothing)"


class DnsServer:
    """One authoritative server, with every failure mapped to a typed error."""

    def __init__(
        self, host: str, port: int, timeout: float, transport: DnsTransport | None = None
    ) -> None:
        self.host, self.port, self.timeout = host, port, float(timeout)
        self.transport: DnsTransport = transport or TcpTransport()

    @classmethod
    def for_site(cls, settings: Dns, transport: DnsTransport | None = None) -> DnsServer:
        return cls(settings.server, settings.port, settings.timeoutSeconds, transport)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def _address(self, what: str) -> str:
        try:
            ipaddress.ip_address(self.host)
            return self.host
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(self.host, self.port, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            raise _error(
                "DnsUnavailable",
                f"{what}: cannot resolve the DNS server name {self.host}: {exc}",
                retryable=True,
            ) from None
        return str(infos[0][4][0])

    def send(
        self, message: dns.message.Message, what: str, key: TsigKey | None = None
    ) -> dns.message.Message:
        try:
            return self.transport.send(message, self._address(what), self.port, self.timeout)
        except ApplicationError:
            raise
        except Exception as exc:
            raise _translate(exc, what, self.where, key) from None

    def read(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType, what: str) -> Answer:
        """Ask the server itself (not a resolver, no cache) for one RRset."""
        reply = self.send(dns.message.make_query(name, rdtype), what)
        rcode = reply.rcode()
        if rcode == dns.rcode.SERVFAIL:
            raise _error(
                "DnsUnavailable",
                f"{what}: {self.where} answered SERVFAIL for {name} (is the zone loaded?)",
                retryable=True,
            )
        if rcode == dns.rcode.REFUSED:
            raise _error(
                "DnsUpdateRefused",
                f"{what}: {self.where} refused to answer for {name}: is it authoritative for "
                "the zone, and does its allow-query admit this worker?",
            )
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise _error(
                "DnsUpdateRefused", f"{what}: {self.where} answered {dns.rcode.to_text(rcode)}"
            )
        answer = Answer(
            name=name,
            rdtype=rdtype,
            rcode=dns.rcode.to_text(rcode),
            rdataset=None,
            authoritative=bool(reply.flags & dns.flags.AA),
        )
        for rrset in reply.answer:
            if rrset.name != name:
                continue
            if rrset.rdtype == rdtype:
                # an RRset is an Rdataset with a name
                return Answer(name, rdtype, answer.rcode, rrset, answer.authoritative)
            if rrset.rdtype == _CNAME and rdtype != _CNAME:
                alias = _value(next(iter(rrset)))
                return Answer(name, rdtype, answer.rcode, None, answer.authoritative, alias)
        return answer

    def read_authoritative(self, name: dns.name.Name, what: str) -> Answer:
        """The A record, from a server that is authoritative for it (else a ConfigError)."""
        answer = self.read(name, _A, what)
        if not answer.authoritative:
            raise _config(
                f"{what}: {self.where} is not authoritative for {name} (its answer came from "
                "a cache): point the site's dns.server at the zone's primary server"
            )
        return answer

    def update(self, message: dns.update.UpdateMessage, what: str, key: TsigKey | None) -> None:
        """Send an update; NOERROR returns, a failed prerequisite raises PrerequisiteFailed,
        anything else a typed ApplicationError."""
        reply = self.send(message, what, key)
        rcode = reply.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        text = dns.rcode.to_text(rcode)
        signer = key.label if key is not None else "no TSIG key (an unsigned update)"
        if rcode == dns.rcode.REFUSED:
            raise _error(
                "DnsUpdateRefused",
                f"{what}: {self.where} REFUSED the update signed with {signer}: the zone's "
                "update-policy does not grant this key that name and type (grant it there, "
                "or fix the site's dns.tsigKeyFile)",
            )
        if rcode == dns.rcode.NOTAUTH:
            raise _error(
                "DnsUpdateRefused",
                f"{what}: {self.where} is not authoritative for the zone (NOTAUTH): send "
                "updates to the zone's primary server (site dns.server/dns.port)",
            )
        if rcode == dns.rcode.NOTZONE:
            raise _config(f"{what}: a record lies outside the zone (NOTZONE): fix the site's zone")
        if rcode == dns.rcode.SERVFAIL:
            raise _error(
                "DnsUnavailable", f"{what}: {self.where} answered SERVFAIL", retryable=True
            )
        if rcode in (dns.rcode.NXRRSET, dns.rcode.YXRRSET, dns.rcode.NXDOMAIN, dns.rcode.YXDOMAIN):
            raise PrerequisiteFailed(text)
        raise _error("DnsUpdateRefused", f"{what}: {self.where} answered {text}")


class PrerequisiteFailed(Exception):
    """An update's prerequisite did not hold (NXRRSET, YXRRSET, NXDOMAIN, YXDOMAIN): the
    compare-and-swap lost. Callers turn it into DnsConflict, naming the values."""


def _translate(exc: BaseException, what: str, where: str, key: TsigKey | None) -> ApplicationError:
    signer = key.label if key is not None else "the TSIG key"
    if isinstance(exc, dns.tsig.PeerBadSignature):
        return _error(
            "DnsAuthFailed",
            f"{what}: {where} rejected the signature of {signer} (BADSIG): the secret in the "
            "key file differs from the server's copy of that key",
        )
    if isinstance(exc, dns.tsig.PeerBadKey):
        return _error(
            "DnsAuthFailed",
            f"{what}: {where} does not know {signer} (BADKEY): the key's name or algorithm "
            "differs from the server's configuration",
        )
    if isinstance(exc, dns.tsig.PeerBadTime):
        return _error(
            "DnsAuthFailed",
            f"{what}: {where} rejected the signature's time (BADTIME): the worker's clock and "
            "the server's differ by more than the TSIG fudge (300 s): fix NTP on both",
        )
    if isinstance(exc, dns.tsig.PeerError):
        return _error("DnsAuthFailed", f"{what}: {where} rejected the TSIG signature: {exc}")
    if isinstance(exc, dns.tsig.BadSignature | dns.tsig.BadKey | dns.tsig.BadTime):
        return _error(
            "DnsAuthFailed",
            f"{what}: the reply from {where} failed TSIG verification with {signer} "
            f"({type(exc).__name__}): something between us answers in the server's name",
        )
    if isinstance(exc, dns.message.UnknownTSIGKey):
        return _error("DnsAuthFailed", f"{what}: {where} signed its reply with another key")
    if isinstance(exc, dns.exception.Timeout):
        return _error(
            "DnsUnavailable", f"{what}: {where} did not answer in time (will retry)", True
        )
    if isinstance(exc, OSError | EOFError):
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        return _error("DnsUnavailable", f"{what}: {where} unreachable: {reason} (will retry)", True)
    if isinstance(exc, dns.exception.FormError | dns.query.BadResponse):
        return _error(
            "DnsUnavailable", f"{what}: malformed reply from {where}: {exc} (will retry)", True
        )
    return _error("DnsError", f"{what}: {type(exc).__name__}: {exc}")


# ------------------------------------------------------------------- record changes


def _rdataset(
    rdtype: dns.rdatatype.RdataType, ttl: int, values: Iterable[str]
) -> dns.rdataset.Rdataset:
    return dns.rdataset.from_text_list(_IN, rdtype, ttl, sorted(values))


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
    message.present(name, _rdataset(_A, 0, expected.values))
    message.replace(name, _rdataset(_A, ttl, new_values))
    if extra is not None:
        extra(message)
    _heartbeat(what)
    try:
        server.update(message, what, key)
    except PrerequisiteFailed as why:
        now = server.read(name, _A, f"{what} (re-reading after a conflict)")
        raise _error(
            "DnsConflict",
            f"{what}: {name} changed while we were changing it ({why}): we read "
            f"{_show(expected.values)}, the server now holds {now.describe()}. Someone else "
            "updated the record; nothing was overwritten. Find out who, then re-run or roll "
            "back",
        ) from None
    after = server.read(name, _A, f"{what} (verifying)")
    if after.values != new_values or after.ttl != ttl:
        raise _error(
            "DnsConflict",
            f"{what}: the update was accepted, but {server.where} now answers "
            f"{after.describe()} for {name} instead of {_show(new_values)} (TTL {ttl}s): "
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


def _read_marker(server: DnsServer, fqdn: dns.name.Name, what: str) -> tuple[TtlMarker | None, str]:
    """The marker, and a note when it exists but cannot be read."""
    answer = server.read(marker_name(fqdn), _TXT, what)
    for text in sorted(answer.values):
        marker = TtlMarker.parse(text)
        if marker is not None:
            return marker, ""
    if answer.values:
        return None, f"the marker {marker_name(fqdn)} is unreadable ({_show(answer.values)})"
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
        # (read back joined, see _value).
        raw = self.text.encode()
        chunks = [raw[i : i + 255] for i in range(0, len(raw), 255)]
        return dns.rdataset.from_rdata(ttl, dns.rdtypes.ANY.TXT.TXT(_IN, _TXT, chunks))


def _read_prior(server: DnsServer, fqdn: dns.name.Name, what: str) -> PriorState | None:
    answer = server.read(prior_name(fqdn), _TXT, what)
    for text in sorted(answer.values):
        prior = PriorState.parse(text)
        if prior is not None:
            return prior
    return None


def _forget(fqdn: dns.name.Name) -> Callable[[dns.update.UpdateMessage], None]:
    """Remove both companion records, in the same update that restores the record."""

    def delete(message: dns.update.UpdateMessage) -> None:
        message.delete(prior_name(fqdn), _TXT)
        message.delete(marker_name(fqdn), _TXT)

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
    target = _ipv4(target, "target")
    server = DnsServer.for_site(settings, transport)
    what = f"switching {fqdn} to {target}"
    current = server.read_authoritative(fqdn, f"{what} (reading it first)")
    if current.rdataset is None:
        raise _error(
            "DnsRecordNotFound",
            f"{what}: {server.where} has {current.describe()} for {fqdn}; update_dns switches "
            "an existing A record: check endpoint.dns.name and the site's dns.zone",
        )
    wanted = frozenset({target})
    prior = _read_prior(server, fqdn, f"{what} (reading {prior_name(fqdn)})")
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
    marker, _ = _read_marker(server, fqdn, f"{what} (reading {marker_name(fqdn)})")
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
    prior = _read_prior(server, fqdn, f"restoring {fqdn} (reading {prior_name(fqdn)})")
    marker, _ = _read_marker(server, fqdn, f"restoring {fqdn} (reading {marker_name(fqdn)})")
    ours = frozenset({_ipv4(target, "target")}) if target else None
    if prior is not None and ours is not None and frozenset({prior.target}) != ours:
        prior = None  # another switch's record (not to the target this cutover started)
    if ours is None and prior is not None:
        ours = frozenset({prior.target})
    old: frozenset[str] | None
    if previous:
        old = frozenset(_ipv4(v, "previous") for v in previous.split(",") if v.strip())
    elif prior is not None:
        old = prior.previous
    elif fallback:
        old = frozenset({_ipv4(fallback, "source")})
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
    what = f"restoring {fqdn} to {_show(old) if old else 'its previous value'}"
    if old is not None and current.rdataset is not None and current.values == old:
        assert current.ttl is not None
        if prior is None and marker is None and ttl in (None, current.ttl):
            return Switch(
                str(fqdn),
                False,
                _show(old),
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
            _show(old),
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
        raise _error(
            "DnsConflict",
            f"{what}: {fqdn} holds {current.describe()}, neither the target "
            f"{_show(ours) if ours else '(unknown)'} nor the previous value: someone changed "
            "it after the switch. Not overwriting their change: decide which value is right "
            "and set it by hand",
        )
    if old is None:
        raise _config(
            f"{what}: {fqdn} points at the target, but its previous value is unknown "
            f"(update_dns reported none and there is no {prior_name(fqdn)} record: the record "
            "pointed at the target before the cutover): set the runbook's endpoint.sourceAddress"
        )
    restored = ttl if ttl is not None else int(current.rdataset.ttl)
    _cas_update(server, settings, fqdn, current, old, restored, what, extra=_forget(fqdn))
    return Switch(str(fqdn), True, _show(old), restored, _show(current.values), current.ttl)


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
        raise _error(
            "DnsRecordNotFound", f"{what}: {server.where} has {current.describe()} for {fqdn}"
        )
    prior = _read_prior(server, fqdn, f"{what} (reading {prior_name(fqdn)})")
    marker, _ = _read_marker(server, fqdn, f"{what} (reading {marker_name(fqdn)})")
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
        raise _error(
            "DnsConflict",
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
        raise _error(
            "DnsRecordNotFound",
            f"{what}: {server.where} has {current.describe()} for {fqdn}",
        )
    existing, _ = _read_marker(server, fqdn, f"{what} (reading the marker)")
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
        message.replace(mark, ttl, _TXT, f'"{text}"')

    _cas_update(server, settings, fqdn, current, current.values, ttl, what, extra=add_marker)
    return TtlLowered(str(fqdn), True, ttl, current.ttl, marker)


# ---------------------------------------------------------------------- activities


def _site_dns(inp: StepInput) -> Dns:
    settings = inp.context.site.dns
    if settings is None:
        raise _config("the site config has no `dns` section (server, zone, tsigKeyFile)")
    return settings


def _seconds(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def _endpoint(inp: StepInput) -> DnsEndpoint:
    endpoint = inp.context.runbook.endpoint.dns
    if endpoint is None:
        raise _config(f"{inp.step} needs the runbook's endpoint.dns.name: the record to change")
    return endpoint


@dataclass
class DnsActivities:
    """The DNS switch, its undo and the TTL preparation (sync: run in the worker's threads)."""

    transport: DnsTransport = field(default_factory=TcpTransport)
    clock: Callable[[], float] = time.time

    @activity.defn(name=Step.UPDATE_DNS)
    def update_dns(self, inp: StepInput) -> StepResult:
        """Point endpoint.dns.name at the target with endpoint.dns.ttl (compare-and-swap),
        recording what it replaced in the zone (``_cutover-prior.<name>``, same update)."""
        settings, endpoint = _site_dns(inp), _endpoint(inp)
        ctx = inp.context
        target = ctx.facts.get("target_address") or ctx.runbook.endpoint.targetAddress
        if not target:
            raise _config(
                "update_dns: the target's address is unknown: power_on_target reports it "
                "(fact target_address), or set the runbook's endpoint.targetAddress"
            )
        done = switch_record(
            settings, endpoint.name, target, endpoint.ttl, self.transport, self.clock
        )
        facts = {"dns_value": done.value}
        if done.previous_value is not None and done.previous_ttl is not None:
            facts["dns_previous_value"] = done.previous_value
            facts["dns_previous_ttl"] = str(done.previous_ttl)
        if done.original_ttl is not None:
            facts["dns_original_ttl"] = str(done.original_ttl)
        details: dict[str, str | int | float | bool] = {
            "name": done.name,
            "value": done.value,
            "ttl": done.ttl,
        }
        if done.previous_value is not None:
            details["previous"] = done.previous_value
            details["previousTtl"] = done.previous_ttl or 0
            source = ctx.runbook.endpoint.sourceAddress
            if source:
                # False: the record pointed elsewhere than the runbook's source (still
                # switched; restore_dns puts back what was there).
                details["previousIsSource"] = done.previous_value == _host(source)
        if done.original_ttl is not None:
            details["originalTtl"] = done.original_ttl
        if done.note:
            details["note"] = done.note
        return StepResult(
            step=inp.step, changed=done.changed, facts=facts, details=details, attempt=_attempt()
        )

    @activity.defn(name=Compensation.RESTORE_DNS)
    def restore_dns(self, inp: StepInput) -> StepResult:
        """Point the record back at what update_dns replaced (its facts; else the zone's
        ``_cutover-prior`` record; else the host of endpoint.sourceAddress), only if it
        still holds the target, with the TTL in place before the cutover. A record already
        back on the source only gets that TTL back."""
        settings, endpoint = _site_dns(inp), _endpoint(inp)
        ctx = inp.context
        facts = ctx.facts
        source = ctx.runbook.endpoint.sourceAddress
        target = (
            facts.get("dns_value")
            or facts.get("target_address")
            or ctx.runbook.endpoint.targetAddress
        )
        done = restore_record(
            settings,
            endpoint.name,
            target,
            facts.get("dns_previous_value"),
            _seconds(facts.get("dns_previous_ttl")),
            self.transport,
            original_ttl=_seconds(facts.get("dns_original_ttl")),
            fallback=_host(source) if source else None,
        )
        details: dict[str, str | int | float | bool] = {
            "name": done.name,
            "value": done.value,
            "ttl": done.ttl,
        }
        if done.note:
            details["note"] = done.note
        return StepResult(step=inp.step, changed=done.changed, details=details, attempt=_attempt())

    @activity.defn(name=RESTORE_DNS_TTL)
    def restore_dns_ttl(self, inp: StepInput) -> StepResult:
        """Finalize (and the end of a rollback that never switched the record): put back
        the TTL in place before the cutover, keeping what the record points at, and remove
        the ``_cutover-prior`` and ``_cutover-ttl`` records. Nothing known: a no-op."""
        if inp.context.runbook.endpoint.dns is None or inp.context.site.dns is None:
            note = "no DNS record in this cutover (runbook endpoint.dns or site dns unset)"
            return StepResult(
                step=inp.step, changed=False, details={"note": note}, attempt=_attempt()
            )
        settings, endpoint = _site_dns(inp), _endpoint(inp)
        done = restore_ttl(
            settings,
            endpoint.name,
            _seconds(inp.context.facts.get("dns_original_ttl")),
            self.transport,
        )
        details: dict[str, str | int | float | bool] = {
            "name": done.name,
            "ttl": done.ttl,
            "previousTtl": done.previous_ttl,
        }
        if done.note:
            details["note"] = done.note
        return StepResult(step=inp.step, changed=done.changed, details=details, attempt=_attempt())

    @activity.defn(name=LOWER_DNS_TTL)
    def lower_dns_ttl(self, inp: StepInput) -> StepResult:
        """Lower the record's TTL to min(endpoint.dns.ttl, dns.ttlThresholdSeconds) ahead of
        the wave, publishing the `_cutover-ttl` marker for the dns_ttl_lowered check."""
        settings, endpoint = _site_dns(inp), _endpoint(inp)
        ttl = min(endpoint.ttl, settings.ttlThresholdSeconds)
        done = lower_ttl(settings, endpoint.name, ttl, self.transport, self.clock)
        facts: dict[str, str] = {}
        details: dict[str, str | int | float | bool] = {
            "name": done.name,
            "ttl": done.ttl,
            "previousTtl": done.previous_ttl,
        }
        if done.marker is not None:
            facts["dns_original_ttl"] = str(done.marker.old)
            facts["dns_ttl_lowered_at"] = str(done.marker.at)
            details["cachesFreshFrom"] = _iso(done.marker.fresh_from)
        if done.note:
            details["note"] = done.note
        return StepResult(
            step=inp.step, changed=done.changed, facts=facts, details=details, attempt=_attempt()
        )

    def probe(self, inp: CheckInput, probe: DnsProbe) -> CheckResult:
        return dns_probe(inp, probe, transport=self.transport, clock=self.clock)

    def activities(self) -> list[Callable[..., Any]]:
        return [self.update_dns, self.restore_dns, self.restore_dns_ttl, self.lower_dns_ttl]


# ---------------------------------------------------------------------------- probe


def _iso(ts: float) -> str:
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
            raise _config(
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
        raise _config(
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
        want.append(f"{probe.rdtype} {_show(expected)}")
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
            _read_marker(server, fqdn, f"{what} (marker)")
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
    measured = [f"{probe.rdtype} {_show(answer.values)}", f"TTL {ttl}s"]
    failures: list[str] = []
    notes: list[str] = []
    if not answer.authoritative:
        notes.append(f"{server.where} answered from a cache, not authoritatively")
    if expected is not None and answer.values != expected:
        failures.append(f"{fqdn} holds {_show(answer.values)}, expected {_show(expected)}")
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
                    f"previous TTL ({marker.old}s) until {_iso(marker.fresh_from)} "
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
