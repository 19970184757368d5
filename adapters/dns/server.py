"""Record names, the transport, and one authoritative server: reads and signed updates, with
its answers translated into typed errors.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

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

from adapters.dns.tsig import TsigKey
from cutover.errors import ErrorKind, config_error, error
from cutover.site import Dns

#: First label of the companion TXT record that says when the low TTL was published.
TTL_MARKER_LABEL = "_cutover-ttl"
#: First label of the companion TXT record that holds what update_dns replaced.
PRIOR_LABEL = "_cutover-prior"

A = dns.rdatatype.A
TXT = dns.rdatatype.TXT
CNAME = dns.rdatatype.CNAME
IN = dns.rdataclass.IN

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
            raise config_error(
                f"{absolute} is outside the site's DNS zone {zone}: the zone's server "
                "cannot change it (fix endpoint.dns.name or the site's dns.zone)"
            )
    except dns.exception.DNSException as exc:
        raise config_error(f"{name!r} is not a valid DNS name: {exc}") from None
    return absolute


def marker_name(name: dns.name.Name) -> dns.name.Name:
    """``_cutover-ttl.<name>``: where lower_dns_ttl records the TTL it replaced, and when."""
    return dns.name.Name((TTL_MARKER_LABEL.encode(), *name.labels))


def prior_name(name: dns.name.Name) -> dns.name.Name:
    """``_cutover-prior.<name>``: where update_dns records what it replaced."""
    return dns.name.Name((PRIOR_LABEL.encode(), *name.labels))


def address_host(address: str) -> str:
    """The host part of ``host:port``, ``[v6]:port``, or a bare host."""
    address = address.strip()
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    if address.count(":") == 1:
        return address.split(":", 1)[0]
    return address


def ipv4(address: str, what: str) -> str:
    host = address_host(address)
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        raise config_error(
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
        return frozenset(rdata_text(rd) for rd in self.rdataset or ())

    @property
    def ttl(self) -> int | None:
        return None if self.rdataset is None else int(self.rdataset.ttl)

    def describe(self) -> str:
        if self.rdataset is not None:
            return f"{show(self.values)} (TTL {self.ttl}s)"
        if self.alias is not None:
            return f"an alias (CNAME) of {self.alias}"
        if self.rcode == "NXDOMAIN":
            return "no such name (NXDOMAIN)"
        return f"no {dns.rdatatype.to_text(self.rdtype)} record"


def rdata_text(rd: dns.rdata.Rdata) -> str:
    """A comparable text form: addresses normalised, names without the final dot, TXT
    strings joined and unquoted."""
    if isinstance(rd, dns.rdtypes.ANY.TXT.TXT):
        return b"".join(rd.strings).decode("utf-8", errors="replace")
    if rd.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return str(ipaddress.ip_address(rd.to_text()))
    return rd.to_text().rstrip(".").lower()


def show(values: Iterable[str]) -> str:
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
            raise error(
                ErrorKind.DNS_UNAVAILABLE,
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
            raise error(
                ErrorKind.DNS_UNAVAILABLE,
                f"{what}: {self.where} answered SERVFAIL for {name} (is the zone loaded?)",
                retryable=True,
            )
        if rcode == dns.rcode.REFUSED:
            raise error(
                ErrorKind.DNS_UPDATE_REFUSED,
                f"{what}: {self.where} refused to answer for {name}: is it authoritative for "
                "the zone, and does its allow-query admit this worker?",
            )
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise error(
                ErrorKind.DNS_UPDATE_REFUSED,
                f"{what}: {self.where} answered {dns.rcode.to_text(rcode)}",
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
            if rrset.rdtype == CNAME and rdtype != CNAME:
                alias = rdata_text(next(iter(rrset)))
                return Answer(name, rdtype, answer.rcode, None, answer.authoritative, alias)
        return answer

    def read_authoritative(self, name: dns.name.Name, what: str) -> Answer:
        """The A record, from a server that is authoritative for it (else a ConfigError)."""
        answer = self.read(name, A, what)
        if not answer.authoritative:
            raise config_error(
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
            raise error(
                ErrorKind.DNS_UPDATE_REFUSED,
                f"{what}: {self.where} REFUSED the update signed with {signer}: the zone's "
                "update-policy does not grant this key that name and type (grant it there, "
                "or fix the site's dns.tsigKeyFile)",
            )
        if rcode == dns.rcode.NOTAUTH:
            raise error(
                ErrorKind.DNS_UPDATE_REFUSED,
                f"{what}: {self.where} is not authoritative for the zone (NOTAUTH): send "
                "updates to the zone's primary server (site dns.server/dns.port)",
            )
        if rcode == dns.rcode.NOTZONE:
            raise config_error(
                f"{what}: a record lies outside the zone (NOTZONE): fix the site's zone"
            )
        if rcode == dns.rcode.SERVFAIL:
            raise error(
                ErrorKind.DNS_UNAVAILABLE, f"{what}: {self.where} answered SERVFAIL", retryable=True
            )
        if rcode in (dns.rcode.NXRRSET, dns.rcode.YXRRSET, dns.rcode.NXDOMAIN, dns.rcode.YXDOMAIN):
            raise PrerequisiteFailed(text)
        raise error(ErrorKind.DNS_UPDATE_REFUSED, f"{what}: {self.where} answered {text}")


class PrerequisiteFailed(Exception):
    """An update's prerequisite did not hold (NXRRSET, YXRRSET, NXDOMAIN, YXDOMAIN): the
    compare-and-swap lost. Callers turn it into DnsConflict, naming the values."""


def _translate(exc: BaseException, what: str, where: str, key: TsigKey | None) -> ApplicationError:
    signer = key.label if key is not None else "the TSIG key"
    if isinstance(exc, dns.tsig.PeerBadSignature):
        return error(
            ErrorKind.DNS_AUTH_FAILED,
            f"{what}: {where} rejected the signature of {signer} (BADSIG): the secret in the "
            "key file differs from the server's copy of that key",
        )
    if isinstance(exc, dns.tsig.PeerBadKey):
        return error(
            ErrorKind.DNS_AUTH_FAILED,
            f"{what}: {where} does not know {signer} (BADKEY): the key's name or algorithm "
            "differs from the server's configuration",
        )
    if isinstance(exc, dns.tsig.PeerBadTime):
        return error(
            ErrorKind.DNS_AUTH_FAILED,
            f"{what}: {where} rejected the signature's time (BADTIME): the worker's clock and "
            "the server's differ by more than the TSIG fudge (300 s): fix NTP on both",
        )
    if isinstance(exc, dns.tsig.PeerError):
        return error(
            ErrorKind.DNS_AUTH_FAILED, f"{what}: {where} rejected the TSIG signature: {exc}"
        )
    if isinstance(exc, dns.tsig.BadSignature | dns.tsig.BadKey | dns.tsig.BadTime):
        return error(
            ErrorKind.DNS_AUTH_FAILED,
            f"{what}: the reply from {where} failed TSIG verification with {signer} "
            f"({type(exc).__name__}): something between us answers in the server's name",
        )
    if isinstance(exc, dns.message.UnknownTSIGKey):
        return error(
            ErrorKind.DNS_AUTH_FAILED, f"{what}: {where} signed its reply with another key"
        )
    if isinstance(exc, dns.exception.Timeout):
        return error(
            ErrorKind.DNS_UNAVAILABLE, f"{what}: {where} did not answer in time (will retry)", True
        )
    if isinstance(exc, OSError | EOFError):
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        return error(
            ErrorKind.DNS_UNAVAILABLE, f"{what}: {where} unreachable: {reason} (will retry)", True
        )
    if isinstance(exc, dns.exception.FormError | dns.query.BadResponse):
        return error(
            ErrorKind.DNS_UNAVAILABLE,
            f"{what}: malformed reply from {where}: {exc} (will retry)",
            True,
        )
    return error(ErrorKind.DNS_ERROR, f"{what}: {type(exc).__name__}: {exc}")
