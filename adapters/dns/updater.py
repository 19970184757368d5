"""`Rfc2136Updater`: the RFC 2136 record operations as a `cutover.ports.DnsUpdater`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from adapters.dns.records import (
    Switch,
    TtlLowered,
    TtlRestored,
    lower_ttl,
    restore_record,
    restore_ttl,
    switch_record,
)
from adapters.dns.server import DnsTransport, TcpTransport
from cutover.site import Dns


@dataclass
class Rfc2136Updater:
    """Signed dynamic updates to the site's authoritative server (`adapters.dns.records`)."""

    transport: DnsTransport = field(default_factory=TcpTransport)
    clock: Callable[[], float] = time.time

    def switch(self, settings: Dns, name: str, target: str, ttl: int) -> Switch:
        return switch_record(settings, name, target, ttl, self.transport, self.clock)

    def restore(
        self,
        settings: Dns,
        name: str,
        target: str | None,
        previous: str | None,
        previous_ttl: int | None,
        original_ttl: int | None,
        fallback: str | None,
    ) -> Switch:
        return restore_record(
            settings,
            name,
            target,
            previous,
            previous_ttl,
            self.transport,
            original_ttl=original_ttl,
            fallback=fallback,
        )

    def restore_ttl(self, settings: Dns, name: str, original_ttl: int | None) -> TtlRestored:
        return restore_ttl(settings, name, original_ttl, self.transport)

    def lower_ttl(self, settings: Dns, name: str, ttl: int) -> TtlLowered:
        return lower_ttl(settings, name, ttl, self.transport, self.clock)
