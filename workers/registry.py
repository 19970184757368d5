"""Registries: which adapter serves each `type` a site's bindings name.

Adding a target platform is an implementation of `cutover.ports.TargetPlatform` registered
in `TARGET_PLATFORMS` under its binding's `type`; a load balancer, an implementation of
`cutover.ports.LoadBalancer` in `LOAD_BALANCERS`; a DNS updater, one in `DNS_UPDATERS`
(ARCHITECTURE.md). The site's tagged unions (`cutover.site`) say which types a site may
name; these say which adapter the worker runs for each.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from temporalio import activity

from activities.libvirt_target import LibvirtTarget
from adapters.dns.updater import Rfc2136Updater
from adapters.haproxy.runtime import HAProxyRuntime
from cutover.catalog import Compensation, FinalizeStep, Step
from cutover.errors import ErrorKind, error
from cutover.models import StepInput, StepResult
from cutover.ports import DnsUpdater, LoadBalancer, TargetPlatform
from cutover.site import Dns, HAProxy

#: Target platforms, by the `type` of the site's `targetPlatforms` bindings.
TARGET_PLATFORMS: dict[str, Callable[[], TargetPlatform]] = {"libvirt": LibvirtTarget}
#: Load balancers, by the `type` of the site's `loadBalancer`.
LOAD_BALANCERS: dict[str, Callable[[HAProxy], LoadBalancer]] = {
    "haproxy": HAProxyRuntime.from_settings
}
#: DNS updaters, by the `type` of the site's `dns`.
DNS_UPDATERS: dict[str, Callable[[Dns], DnsUpdater]] = {"rfc2136": lambda _: Rfc2136Updater()}

#: Where a run goes when the site no longer binds its platform (a run started before the
#: binding went): activities never refuse, validation does.
FALLBACK_TARGET = "libvirt"


def load_balancer(settings: HAProxy) -> LoadBalancer:
    """The load balancer adapter the site's `loadBalancer.type` names."""
    make = LOAD_BALANCERS.get(settings.type)
    if make is None:
        raise error(
            ErrorKind.CONFIG_ERROR,
            f"this worker has no load balancer of type {settings.type!r} "
            f"(it has: {', '.join(sorted(LOAD_BALANCERS))})",
        )
    return make(settings)


@dataclass
class TargetSteps:
    """The eight target activities, each run by the platform the site binds the runbook's
    `targetPlatform` to (by the binding's `type`). Activity names are the catalog's."""

    platforms: Mapping[str, TargetPlatform]

    def platform(self, inp: StepInput) -> TargetPlatform:
        ctx = inp.context
        binding = ctx.resolved_site.target_binding(ctx.runbook.targetPlatform)
        kind = binding.type if binding is not None else FALLBACK_TARGET
        chosen = self.platforms.get(kind)
        if chosen is None:
            raise error(
                ErrorKind.CONFIG_ERROR,
                f"this worker runs no target platform of type {kind!r} "
                f"(it runs: {', '.join(sorted(self.platforms))})",
            )
        return chosen

    @activity.defn(name=Step.ATTACH_TARGET_STORAGE_PROFILE)
    def attach_target_storage_profile(self, inp: StepInput) -> StepResult:
        return self.platform(inp).attach_target_storage_profile(inp)

    @activity.defn(name=Compensation.DETACH_TARGET_STORAGE)
    def detach_target_storage(self, inp: StepInput) -> StepResult:
        return self.platform(inp).detach_target_storage(inp)

    @activity.defn(name=Step.VALIDATE_GUEST_TOOLS_AND_DRIVERS)
    def validate_guest_tools_and_drivers(self, inp: StepInput) -> StepResult:
        return self.platform(inp).validate_guest_tools_and_drivers(inp)

    @activity.defn(name=Step.POWER_ON_TARGET)
    def power_on_target(self, inp: StepInput) -> StepResult:
        return self.platform(inp).power_on_target(inp)

    @activity.defn(name=Compensation.REMOVE_TARGET_DOMAIN)
    def remove_target_domain(self, inp: StepInput) -> StepResult:
        return self.platform(inp).remove_target_domain(inp)

    @activity.defn(name=Compensation.FENCE_TARGET)
    def fence_target(self, inp: StepInput) -> StepResult:
        return self.platform(inp).fence_target(inp)

    @activity.defn(name=Compensation.UNFENCE_TARGET)
    def unfence_target(self, inp: StepInput) -> StepResult:
        return self.platform(inp).unfence_target(inp)

    @activity.defn(name=FinalizeStep.COMMIT_TARGET_OVERLAY)
    def commit_target_overlay(self, inp: StepInput) -> StepResult:
        return self.platform(inp).commit_target_overlay(inp)

    def activities(self) -> list[Callable[..., Any]]:
        return [
            self.attach_target_storage_profile,
            self.detach_target_storage,
            self.validate_guest_tools_and_drivers,
            self.power_on_target,
            self.remove_target_domain,
            self.fence_target,
            self.unfence_target,
            self.commit_target_overlay,
        ]


def target_steps() -> TargetSteps:
    """One instance of every registered target platform behind the eight activities."""
    return TargetSteps({kind: make() for kind, make in TARGET_PLATFORMS.items()})


def dns_updater(settings: Dns) -> DnsUpdater:
    """The DNS updater the site's `dns.type` names."""
    make = DNS_UPDATERS.get(settings.type)
    if make is None:
        raise error(
            ErrorKind.CONFIG_ERROR,
            f"this worker has no DNS updater of type {settings.type!r} "
            f"(it has: {', '.join(sorted(DNS_UPDATERS))})",
        )
    return make(settings)
