"""The runbook: one application's cutover, in the seed's YAML shape (camelCase keys)."""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cutover.catalog import BUILTIN_CHECKS, Step, ordering_errors

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DNS_NAME = re.compile(
    r"^(?=.{1,253}\.?$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.?$"
)
_CHECK_SYNTAX = re.compile(r"[a-z][a-z0-9_]{0,62}")
_KNOWN_STEPS = ", ".join(s.value for s in Step)

TargetPlatform = Literal["kvm-libvirt", "libvirt", "proxmox", "pextra-cloud", "openstack"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError(
            f"'{value}' is not a DNS-1123 label: expected 1-63 lowercase letters, digits or "
            "'-', starting and ending with a letter or digit (it becomes the workflow ID, "
            "the libvirt domain name and a DNS name)"
        )
    return value


def _step_name(value: str) -> str:
    if value not in Step.__members__.values():
        raise ValueError(f"unknown step '{value}'; known steps: {_KNOWN_STEPS}")
    return value


def _check_name(value: str, info: ValidationInfo) -> str:
    # Loading a file always passes the catalog (maybe empty) in the context. Without one
    # (a runbook decoded inside an activity input) it was checked when it was loaded.
    context = info.context or {}
    if "site_checks" not in context:
        if not _CHECK_SYNTAX.fullmatch(value):
            raise ValueError(f"'{value}' is not a check name")
        return value
    bound: frozenset[str] = frozenset(context["site_checks"])
    if value not in BUILTIN_CHECKS and value not in bound:
        known = ", ".join(sorted(BUILTIN_CHECKS | bound))
        raise ValueError(
            f"unknown check '{value}'; known checks: {known} "
            "(add a probe to the site config's `checks` to define a new one)"
        )
    return value


ApplicationName = Annotated[StrictStr, AfterValidator(_dns_label)]
StepName = Annotated[StrictStr, AfterValidator(_step_name)]
CheckName = Annotated[StrictStr, AfterValidator(_check_name)]
NonEmpty = Annotated[StrictStr, Field(min_length=1)]


def _no_duplicates(values: list[str], what: str) -> list[str]:
    seen: set[str] = set()
    dups = [v for v in values if v in seen or seen.add(v)]  # type: ignore[func-returns-value]
    if dups:
        raise ValueError(f"{what} '{dups[0]}' is listed twice; each may appear once")
    return values


class VmSelector(_Model):
    """Find the application's VMs in vCenter by a tag or a custom attribute."""

    tag: NonEmpty | None = None
    tagCategory: NonEmpty | None = None
    customAttribute: NonEmpty | None = None

    @model_validator(mode="after")
    def _one_way(self) -> VmSelector:
        if (self.tag is None) == (self.customAttribute is None):
            raise ValueError("set exactly one of `tag` or `customAttribute`")
        return self


class Approval(_Model):
    """Who must approve before downtime starts, and what the approval lets them do later."""

    required: StrictBool = False
    approvers: list[NonEmpty] = Field(default_factory=list)
    timeoutMinutes: Annotated[StrictFloat | StrictInt, Field(gt=0)] | None = None
    allowEarlyFinalize: StrictBool = True

    @model_validator(mode="after")
    def _approvers_when_required(self) -> Approval:
        if self.required and not self.approvers:
            raise ValueError("`approvers` must name at least one person when `required` is true")
        return self


class LoadBalancerEndpoint(_Model):
    backend: NonEmpty | None = None
    sourceServer: NonEmpty = "source"
    targetServer: NonEmpty = "target"


class DnsEndpoint(_Model):
    name: NonEmpty
    #: TTL of the record while it points at the target (the rollback window wants it low).
    ttl: Annotated[StrictInt, Field(ge=0, le=86400)] = 60

    @field_validator("name")
    @classmethod
    def _fqdn(cls, v: str) -> str:
        if not _DNS_NAME.fullmatch(v):
            raise ValueError(f"'{v}' is not a valid lowercase DNS name")
        return v


class Endpoint(_Model):
    """Where users reach the application: the LB backend and/or the DNS name that moves."""

    loadBalancer: LoadBalancerEndpoint = Field(default_factory=LoadBalancerEndpoint)
    dns: DnsEndpoint | None = None
    #: `host:port` of the service on the source and (when known before power-on, e.g. a
    #: reserved address) on the target; the target's is otherwise the address
    #: `power_on_target` reports.
    sourceAddress: NonEmpty | None = None
    targetAddress: NonEmpty | None = None


class SmokeTest(_Model):
    """What `smoke_test` sends and accepts: against the target directly, then through the
    load balancer once it takes traffic."""

    path: NonEmpty = "/"
    samples: Annotated[StrictInt, Field(ge=1, le=100_000)] = 200
    concurrency: Annotated[StrictInt, Field(ge=1, le=64)] = 4
    expectStatus: Annotated[StrictInt, Field(ge=100, le=599)] = 200
    maxErrorRate: Annotated[StrictFloat | StrictInt, Field(ge=0, le=1)] = 0
    maxP95Ms: Annotated[StrictFloat | StrictInt, Field(gt=0)] | None = None
    #: The target's p95 may be at most this times the source's baseline p95.
    maxP95Ratio: Annotated[StrictFloat | StrictInt, Field(gt=0)] = 2


class DataSync(_Model):
    """The warm phase: copy while the source serves, so the downtime only moves the delta."""

    warm: StrictBool = True
    incrementalPasses: Annotated[StrictInt, Field(ge=0, le=100)] = 1
    #: Ask VMware Tools to quiesce the guest file systems for the pre-cutover snapshot.
    quiesceSnapshot: StrictBool = True
    #: The warm snapshot's delta grows on the production datastore while the cutover waits
    #: (e.g. for approval): `cutover status` warns past this age.
    maxSnapshotAgeHours: Annotated[StrictFloat | StrictInt, Field(gt=0, le=24 * 30)] = 24


class FinalizePolicy(_Model):
    """What finalize does beyond retiring the source."""

    #: `commit`: merge the target's overlay into its base while it runs, and remove it;
    #: `keep`: leave the target on its two-file chain (e.g. to keep the frozen base).
    targetOverlay: Literal["commit", "keep"] = "commit"


class RollbackPolicy(_Model):
    """What a rollback after the traffic switch does with what the target wrote."""

    #: Write the target's writes (its overlay) back into the source's disks before the
    #: source starts. False: they are discarded, and the result and the audit say how much.
    reverseSync: StrictBool = True


class Quiesce(_Model):
    """How `quiesce_application` stops the source: guest shutdown, then power off."""

    guestShutdownTimeoutSeconds: Annotated[StrictFloat | StrictInt, Field(gt=0, le=3600)] = 300
    powerOffFallback: StrictBool = True


class Runbook(_Model):
    """One application's cutover. The seed's keys load verbatim; the rest has defaults."""

    application: ApplicationName
    wave: Annotated[StrictInt, Field(ge=0)] | Annotated[StrictStr, AfterValidator(_dns_label)]
    sourcePlatform: Literal["vmware-vsphere"]
    sourceCluster: NonEmpty
    targetPlatform: TargetPlatform
    rollbackWindowMinutes: Annotated[StrictFloat | StrictInt, Field(gt=0, le=60 * 24 * 30)]
    preChecks: list[CheckName] = Field(default_factory=list)
    cutoverSteps: Annotated[list[StepName], Field(min_length=1)]
    postChecks: list[CheckName] = Field(default_factory=list)
    rollbackCriteria: list[CheckName] = Field(default_factory=list)
    # What execution needs beyond the seed's shape.
    vms: list[NonEmpty] | None = None
    vmSelector: VmSelector | None = None
    approval: Approval = Field(default_factory=Approval)
    endpoint: Endpoint = Field(default_factory=Endpoint, validate_default=True)
    dataSync: DataSync = Field(default_factory=DataSync)
    rollback: RollbackPolicy = Field(default_factory=RollbackPolicy)
    finalize: FinalizePolicy = Field(default_factory=FinalizePolicy)
    quiesce: Quiesce = Field(default_factory=Quiesce)
    smokeTest: SmokeTest = Field(default_factory=SmokeTest)
    checkIntervalSeconds: Annotated[StrictFloat | StrictInt, Field(gt=0, le=3600)] = 60

    @field_validator("rollbackWindowMinutes", "checkIntervalSeconds")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("expected a finite positive number")
        return v

    @field_validator("cutoverSteps")
    @classmethod
    def _steps_sane(cls, v: list[str]) -> list[str]:
        _no_duplicates(v, "step")
        errors = ordering_errors(v)
        if errors:
            raise ValueError("unsafe step order: " + "; ".join(errors))
        return v

    @field_validator("preChecks", "postChecks", "rollbackCriteria", "vms")
    @classmethod
    def _unique(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _no_duplicates(v, "entry")

    # Cross-field rules are field validators (reading earlier fields from `info.data`) so
    # that each problem is reported at a field and line, not at the whole document.
    @field_validator("vms")
    @classmethod
    def _some_vms(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("`vms` must list at least one VM")
        return v

    @field_validator("vmSelector")
    @classmethod
    def _one_vm_source(cls, v: VmSelector | None, info: ValidationInfo) -> VmSelector | None:
        if v is not None and info.data.get("vms") is not None:
            raise ValueError("set either `vms` (explicit list) or `vmSelector`, not both")
        return v

    @field_validator("endpoint")
    @classmethod
    def _dns_to_switch(cls, v: Endpoint, info: ValidationInfo) -> Endpoint:
        if Step.UPDATE_DNS in info.data.get("cutoverSteps", ()) and v.dns is None:
            raise ValueError("`update_dns` needs `endpoint.dns.name`: the record to switch")
        return v

    @property
    def wave_name(self) -> str:
        return str(self.wave)

    @property
    def selector(self) -> VmSelector:
        """How to find the VMs when none are listed: a tag named after the application."""
        return self.vmSelector or VmSelector(tag=self.application)

    @property
    def lb_backend(self) -> str:
        return self.endpoint.loadBalancer.backend or self.application

    @property
    def checks(self) -> list[str]:
        return [*self.preChecks, *self.postChecks, *self.rollbackCriteria]
