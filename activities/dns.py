"""DNS activities: the record switch (update_dns), its undo (restore_dns), the TTL lowered
ahead of the wave (lower_dns_ttl) and put back at the end (restore_dns_ttl). Thin: they
drive a `cutover.ports.DnsUpdater` (RFC 2136: `adapters.dns`, where the updates, their
safety rules and their errors are).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from temporalio import activity

from activities.common import attempt as _attempt
from adapters.dns.probe import dns_probe, iso_time
from adapters.dns.server import DnsTransport, TcpTransport, address_host
from adapters.dns.updater import Rfc2136Updater
from adapters.probes.http import wait_healthy
from cutover import facts as F
from cutover.catalog import Compensation, Step
from cutover.errors import ErrorKind, config_error, error
from cutover.models import CheckInput, CheckResult, StepInput, StepResult
from cutover.ports import DnsUpdater
from cutover.runbook import DnsEndpoint
from cutover.site import Dns, DnsProbe

#: The optional preparation step that lowers the record's TTL ahead of the wave.
LOWER_DNS_TTL = "lower_dns_ttl"
#: The finalize step that puts back the TTL in place before the cutover.
RESTORE_DNS_TTL = "restore_dns_ttl"


def _site_dns(inp: StepInput) -> Dns:
    settings = inp.context.resolved_site.dns
    if settings is None:
        raise config_error("the site config has no `dns` section (server, zone, tsigKeyFile)")
    return settings


def _seconds(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def _endpoint(inp: StepInput) -> DnsEndpoint:
    endpoint = inp.context.runbook.endpoint.dns
    if endpoint is None:
        raise config_error(
            f"{inp.step} needs the runbook's endpoint.dns.name: the record to change"
        )
    return endpoint


@dataclass
class DnsActivities:
    """The DNS switch, its undo and the TTL preparation (sync: run in the worker's threads)."""

    transport: DnsTransport = field(default_factory=TcpTransport)
    #: restore_dns moves users back only once the source answers (its
    #: `endpoint.sourceAddress`, the smoke test's path and status) for this long at most;
    #: None: no wait (tests of the record logic, whose sources are not real services)
    source_health_timeout: float | None = 120.0
    clock: Callable[[], float] = time.time
    #: Builds the updater the site's `dns` binding names (the worker's registry); unset:
    #: RFC 2136 over `transport`, with `clock`.
    factory: Callable[[Dns], DnsUpdater] | None = None

    def _updater(self, settings: Dns) -> DnsUpdater:
        if self.factory is not None:
            return self.factory(settings)
        return Rfc2136Updater(self.transport, self.clock)

    @activity.defn(name=Step.UPDATE_DNS)
    def update_dns(self, inp: StepInput) -> StepResult:
        """Point endpoint.dns.name at the target with endpoint.dns.ttl (compare-and-swap),
        recording what it replaced in the zone (``_cutover-prior.<name>``, same update)."""
        settings, endpoint = _site_dns(inp), _endpoint(inp)
        ctx = inp.context
        target = ctx.facts.get(F.TARGET_ADDRESS) or ctx.runbook.endpoint.targetAddress
        if not target:
            raise config_error(
                "update_dns: the target's address is unknown: power_on_target reports it "
                "(fact target_address), or set the runbook's endpoint.targetAddress"
            )
        done = self._updater(settings).switch(settings, endpoint.name, target, endpoint.ttl)
        facts = {F.DNS_VALUE: done.value}
        if done.previous_value is not None and done.previous_ttl is not None:
            facts[F.DNS_PREVIOUS_VALUE] = done.previous_value
            facts[F.DNS_PREVIOUS_TTL] = str(done.previous_ttl)
        if done.original_ttl is not None:
            facts[F.DNS_ORIGINAL_TTL] = str(done.original_ttl)
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
                details["previousIsSource"] = done.previous_value == address_host(source)
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
            facts.get(F.DNS_VALUE)
            or facts.get(F.TARGET_ADDRESS)
            or ctx.runbook.endpoint.targetAddress
        )
        if source and self.source_health_timeout is not None:
            self._wait_for_source(inp, source, self.source_health_timeout)
        done = self._updater(settings).restore(
            settings,
            endpoint.name,
            target,
            facts.get(F.DNS_PREVIOUS_VALUE),
            _seconds(facts.get(F.DNS_PREVIOUS_TTL)),
            original_ttl=_seconds(facts.get(F.DNS_ORIGINAL_TTL)),
            fallback=address_host(source) if source else None,
        )
        details: dict[str, str | int | float | bool] = {
            "name": done.name,
            "value": done.value,
            "ttl": done.ttl,
        }
        if done.note:
            details["note"] = done.note
        return StepResult(step=inp.step, changed=done.changed, details=details, attempt=_attempt())

    @staticmethod
    def _wait_for_source(inp: StepInput, source: str, timeout: float) -> None:
        """Traffic returns only to a source that serves: its address answers the smoke
        test's request. Else the record stays on the target, and the error says why."""
        smoke = inp.context.runbook.smokeTest
        url = f"http://{source}{smoke.path if smoke.path.startswith('/') else '/' + smoke.path}"
        problem = wait_healthy(url, smoke.expectStatus, timeout)
        if problem is not None:
            raise error(
                ErrorKind.SOURCE_UNHEALTHY,
                f"restore_dns: the source at {source} does not serve ({url}: {problem}, "
                f"expected status {smoke.expectStatus}, waited {timeout:g}s); the record "
                "stays on the target until it does: fix the source, then resume",
                True,
            )

    @activity.defn(name=RESTORE_DNS_TTL)
    def restore_dns_ttl(self, inp: StepInput) -> StepResult:
        """Finalize (and the end of a rollback that never switched the record): put back
        the TTL in place before the cutover, keeping what the record points at, and remove
        the ``_cutover-prior`` and ``_cutover-ttl`` records. Nothing known: a no-op."""
        if inp.context.runbook.endpoint.dns is None or inp.context.resolved_site.dns is None:
            note = "no DNS record in this cutover (runbook endpoint.dns or site dns unset)"
            return StepResult(
                step=inp.step, changed=False, details={"note": note}, attempt=_attempt()
            )
        settings, endpoint = _site_dns(inp), _endpoint(inp)
        done = self._updater(settings).restore_ttl(
            settings, endpoint.name, _seconds(inp.context.facts.get(F.DNS_ORIGINAL_TTL))
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
        done = self._updater(settings).lower_ttl(settings, endpoint.name, ttl)
        facts: dict[str, str] = {}
        details: dict[str, str | int | float | bool] = {
            "name": done.name,
            "ttl": done.ttl,
            "previousTtl": done.previous_ttl,
        }
        if done.marker is not None:
            facts[F.DNS_ORIGINAL_TTL] = str(done.marker.old)
            facts[F.DNS_TTL_LOWERED_AT] = str(done.marker.at)
            details["cachesFreshFrom"] = iso_time(done.marker.fresh_from)
        if done.note:
            details["note"] = done.note
        return StepResult(
            step=inp.step, changed=done.changed, facts=facts, details=details, attempt=_attempt()
        )

    def probe(self, inp: CheckInput, probe: DnsProbe) -> CheckResult:
        return dns_probe(inp, probe, transport=self.transport, clock=self.clock)

    def activities(self) -> list[Callable[..., Any]]:
        return [self.update_dns, self.restore_dns, self.restore_dns_ttl, self.lower_dns_ttl]
