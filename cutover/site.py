"""The site config: binds a runbook's names to the real world.

It holds endpoints and *references* to secrets (an environment variable's name or a file's
path), never secret values. Workers load their sites from their own files; a workflow's input
names a site and its digest (`SiteRef`), never carries one (issue 13).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    field_validator,
    model_validator,
)

from cutover.config import ConfigError, Problem, load_file
from cutover.fleet import Fleet
from cutover.policy import AccessPolicy, WorkloadPolicy, load_access_policy, load_workload_policies
from cutover.runbook import Runbook, TargetPlatform
from cutover.templating import TEMPLATED, check_placeholders

_CHECK_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_SECRET_KEYS = ("password", "secret", "token", "apikey", "api_key")

NonEmpty = Annotated[StrictStr, Field(min_length=1)]
Port = Annotated[StrictInt, Field(ge=1, le=65535)]
Seconds = Annotated[StrictFloat | StrictInt, Field(gt=0, le=3600)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                k = str(key).lower()
                if any(s in k for s in _SECRET_KEYS) and not k.endswith(("env", "file", "ref")):
                    ref = f"`{key}Ref`" if f"{key}Ref" in cls.model_fields else "a reference"
                    raise ValueError(
                        f"`{key}`: secrets may not be written in the site config; use {ref} "
                        "naming an environment variable (`env: NAME`) or a file (`file: PATH`) "
                        "that holds it"
                    )
        return data


class SecretRef(_Model):
    """Where a secret is read at run time, by the worker that needs it."""

    env: NonEmpty | None = None
    file: NonEmpty | None = None

    @model_validator(mode="after")
    def _one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("set exactly one of `env` or `file`")
        return self

    def read(self) -> str:
        """Resolve the secret. Call only inside an activity, never in a workflow."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise LookupError(f"environment variable {self.env} is not set")
            return value
        assert self.file is not None
        return Path(self.file).read_text(encoding="utf-8").strip()


class Vddk(_Model):
    """VMware's Virtual Disk Development Kit, for nbdkit's vddk plugin (not shipped)."""

    #: Where the operator unpacked VDDK (`lib64/libvixDiskLib.so.*` under it).
    libdir: NonEmpty
    #: The SHA-1 thumbprint of the vCenter/ESXi certificate, as nbdkit-vddk needs it.
    thumbprint: NonEmpty


class VCenter(_Model):
    host: NonEmpty
    port: Port = 443
    user: NonEmpty
    passwordRef: SecretRef
    datacenter: NonEmpty | None = None
    #: Labs only: skip TLS verification. Production verifies against `caFile` or the system.
    insecure: StrictBool = False
    caFile: NonEmpty | None = None
    #: Reverse sync writes the target's writes into the source's disks. vCenter's HTTP
    #: datastore access only replaces whole files; ranges are written through a datastore
    #: mounted on the worker (e.g. NFS: datastore name -> local directory) ...
    datastoreMounts: dict[NonEmpty, NonEmpty] = Field(default_factory=dict)
    #: ... or through VMware's VDDK (supplied by the operator) behind nbdkit's vddk plugin.
    vddk: Vddk | None = None


#: The libvirt domain type of target domains: `auto` is kvm where the host offers it, else
#: qemu (TCG). `qemu` where KVM cannot run the guests (the lab: kernels hang under nested KVM).
DomainType = Literal["auto", "kvm", "qemu"]


class Libvirt(_Model):
    uri: NonEmpty = "qemu:///system"
    domainType: DomainType = "auto"


# ---------------------------------------------------------------- registries
# The site binds each kind of external system the cutover drives to one implementation,
# named by `type` (a tagged union: one member per adapter). Adding an implementation is a
# model here plus a member of its union, and an adapter behind the port (ARCHITECTURE.md).


def _tag(default: str | None, *kinds: str) -> Any:
    """Tag a binding by its `type` (`default` when it is left out, so sites written before
    the union keep loading); an unknown or missing `type` names the implementations."""

    def tag(value: Any) -> str | None:
        if isinstance(value, dict):
            return value.get("type", default)
        return getattr(value, "type", default)

    choices = ", ".join(kinds)
    return Discriminator(
        tag,
        custom_error_type="unknown_implementation",
        custom_error_message=f"`type` must name an implementation: {choices}",
    )


class LibvirtPlatform(_Model):
    """A target platform whose KVM hosts the worker drives through libvirt."""

    type: Literal["libvirt"] = "libvirt"
    #: Default: the site's `libvirt.uri`. Each binding may name its own endpoint: the
    #: libvirt activities connect to the URI the runbook's platform is bound to.
    uri: NonEmpty | None = None
    #: Default: the site's `libvirt.domainType`.
    domainType: DomainType | None = None


#: How the site reaches a target platform. `type` is required: no adapter is implied.
TargetBinding = Annotated[Annotated[LibvirtPlatform, Tag("libvirt")], _tag(None, "libvirt")]


#: What a site without `targetPlatforms` binds to its `libvirt` section: the platforms every
#: site config has driven through libvirt since the first release (the seed's runbook names
#: pextra-cloud, whose hosts are KVM under libvirt). proxmox and openstack are not among them:
#: they have APIs of their own, and running their runbooks against libvirt is never implied.
DEFAULT_LIBVIRT_PLATFORMS: tuple[TargetPlatform, ...] = ("kvm-libvirt", "libvirt", "pextra-cloud")


class StorageMapping(_Model):
    sourceDatastore: NonEmpty
    targetPool: NonEmpty
    format: Literal["qcow2", "raw"] = "qcow2"
    #: The zone the target pool lies in (workload policies' `compliance.residency`).
    zone: NonEmpty | None = None


class NetworkMapping(_Model):
    sourceNetwork: NonEmpty
    targetNetwork: NonEmpty
    keepMac: StrictBool = True


class HAProxy(_Model):
    """HAProxy driven through its runtime API (an admin-level stats socket)."""

    type: Literal["haproxy"] = "haproxy"
    socket: NonEmpty
    #: How long the target may take to pass a real health check before the switch gives up.
    healthTimeoutSeconds: Seconds = 60
    #: How long the old server may take to finish its sessions once draining.
    drainTimeoutSeconds: Seconds = 120
    #: The HAProxy config file holding the backend (on the worker's host, like `socket`).
    #: Finalize writes the switch into it (the target's server line gets its address, the
    #: source's `disabled`), checked by `haproxy -c` first, so a reload keeps the target.
    #: Unset: finalize fails after the runtime change, saying a reload would revert it.
    configFile: NonEmpty | None = None
    #: Where the worker records each backend's state before it switches it (default: the
    #: directory of `socket`), so a retry or the rollback on any worker restores exactly it.
    stateDir: NonEmpty | None = None


class Dns(_Model):
    """The authoritative server that takes RFC 2136 updates for the applications' zone."""

    type: Literal["rfc2136"] = "rfc2136"
    server: NonEmpty
    port: Port = 53
    zone: NonEmpty
    #: A BIND key file (`tsig-keygen` output): read by the worker, never put in history.
    tsigKeyFile: NonEmpty
    ttlThresholdSeconds: Annotated[StrictInt, Field(ge=0)] = 60
    timeoutSeconds: Seconds = 5


#: The site's load balancer (`type` defaults to haproxy, the one implementation so far).
LoadBalancer = Annotated[Annotated[HAProxy, Tag("haproxy")], _tag("haproxy", "haproxy")]
#: The site's DNS updater (`type` defaults to rfc2136, the one implementation so far).
DnsUpdater = Annotated[Annotated[Dns, Tag("rfc2136")], _tag("rfc2136", "rfc2136")]


class _Probe(_Model):
    """Common to all probes. Where to probe (`url`, `argv`, `host`, `name`, `server`,
    `query`, `expectValue`) may use `{placeholders}` (cutover.templating), filled in per
    application."""

    @model_validator(mode="after")
    def _known_placeholders(self) -> _Probe:
        for name, value in self:
            if name not in TEMPLATED:
                continue
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, str) and "{" in v:
                    try:
                        check_placeholders(v)
                    except ValueError as exc:
                        raise ValueError(f"`{name}`: {exc}") from None
        return self

    #: Consecutive failures before a rollback criterion fires (1 = the first failure).
    failAfter: Annotated[StrictInt, Field(ge=1, le=100)] = 1
    timeoutSeconds: Seconds = 10
    description: StrictStr | None = None


class CommandProbe(_Probe):
    """Run a program (argv, no shell); passes when it exits with `expectExitCode`."""

    type: Literal["command"]
    argv: Annotated[list[NonEmpty], Field(min_length=1)]
    expectExitCode: StrictInt = 0


class HttpProbe(_Probe):
    """GET a URL; passes on the expected status, body text and latency."""

    type: Literal["http"]
    url: NonEmpty
    expectStatus: Annotated[StrictInt, Field(ge=100, le=599)] = 200
    bodyContains: StrictStr | None = None
    #: The body, parsed as JSON, must hold these keys with these values (nested objects
    #: match recursively; other keys are ignored). Single-request probes only.
    expectJson: dict[StrictStr, Any] | None = None
    maxLatencyMs: Annotated[StrictFloat | StrictInt, Field(gt=0)] | None = None
    #: SLO sampling: send `samples` requests (`concurrency` at a time) and judge the
    #: percentiles and the error rate (a response other than expectStatus, or none).
    samples: Annotated[StrictInt, Field(ge=1, le=100_000)] = 1
    concurrency: Annotated[StrictInt, Field(ge=1, le=64)] = 1
    maxP50Ms: Annotated[StrictFloat | StrictInt, Field(gt=0)] | None = None
    maxP95Ms: Annotated[StrictFloat | StrictInt, Field(gt=0)] | None = None
    maxP99Ms: Annotated[StrictFloat | StrictInt, Field(gt=0)] | None = None
    maxErrorRate: Annotated[StrictFloat | StrictInt, Field(ge=0, le=1)] | None = None

    @model_validator(mode="after")
    def _json_single(self) -> HttpProbe:
        if self.expectJson is not None and self.samples > 1:
            raise ValueError("`expectJson` checks one response: use it with `samples: 1`")
        return self

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return v


class TcpProbe(_Probe):
    """Open a TCP connection; passes when it connects within the timeout."""

    type: Literal["tcp"]
    host: NonEmpty
    port: Port


class DnsProbe(_Probe):
    """Query a name at an authoritative server (default: the site's `dns.server`); passes
    when the answer matches `expectValue` (if set) and its TTL is at most `maxTtl`
    (default: the site's `dns.ttlThresholdSeconds`)."""

    type: Literal["dns"]
    name: NonEmpty
    rdtype: Literal["A", "AAAA", "CNAME", "TXT"] = "A"
    server: NonEmpty | None = None
    port: Port | None = None
    expectValue: NonEmpty | None = None
    maxTtl: Annotated[StrictInt, Field(ge=0)] | None = None


class PrometheusProbe(_Probe):
    """An instant PromQL query whose (single) value is compared with a threshold."""

    type: Literal["prometheus"]
    url: NonEmpty
    query: NonEmpty
    op: Literal["<", "<=", ">", ">=", "=="] = "<="
    threshold: StrictFloat | StrictInt
    #: What an empty result means: pass, or fail (a missing signal is often an alert).
    emptyPasses: StrictBool = False


class VSphereConcernsProbe(_Probe):
    """Pre-migration concerns of the application's VMs, read from the site's vCenter;
    passes when none is at or above `failOn` (ids in `ignore` are accepted risks)."""

    type: Literal["vsphere-concerns"]
    failOn: Literal["critical", "warning"] = "critical"
    ignore: list[NonEmpty] = Field(default_factory=list)
    timeoutSeconds: Seconds = 300


class DataConsistencyProbe(_Probe):
    """The seed's "data consistency is confirmed": every block of the frozen source disks
    (read through vCenter) against the migrated copy, by digest. CBT is not trusted here;
    meant as a post-check and rollback criterion in the window (the source is off then)."""

    type: Literal["data-consistency"]
    timeoutSeconds: Seconds = 3600


class PerformanceBaselineProbe(_Probe):
    """The target against the source's performance before migration (`cutover baseline`):
    the target domains' CPU wait, disk latency and network drops over `sampleSeconds`
    (libvirt domain stats), each against its VM's baseline p95 times `factor`, and never
    failing below the floor (small absolute values are noise)."""

    type: Literal["performance-baseline"]
    #: the file `cutover baseline` wrote (one entry per source VM)
    baselineFile: NonEmpty
    #: the site name the baselines were taken under (the file holds one site's)
    baselineSite: NonEmpty
    sampleSeconds: Annotated[StrictFloat | StrictInt, Field(gt=0, le=300)] = 5
    factor: Annotated[StrictFloat | StrictInt, Field(ge=1, le=100)] = 1.5
    floorCpuReadyPercent: Annotated[StrictFloat | StrictInt, Field(ge=0)] = 5
    floorDiskLatencyMs: Annotated[StrictFloat | StrictInt, Field(ge=0)] = 20
    floorNetDropPercent: Annotated[StrictFloat | StrictInt, Field(ge=0)] = 0.1
    timeoutSeconds: Seconds = 330


# ------------------------------------------------------------------ day-two probes
# Settings that name a per-application thing (a path, a domain, a table) are written with
# `{placeholders}` only where cutover.templating fills them in (TEMPLATED); elsewhere a
# brace would reach the probe literally, so it is refused when the site loads.


def _untemplated(probe: BaseModel, *fields: str) -> None:
    for name in fields:
        value = getattr(probe, name)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and "{" in v and name not in TEMPLATED:
                raise ValueError(
                    f"`{name}`: placeholders are not filled in for this setting (only in: "
                    f"{', '.join(sorted(TEMPLATED))}); write the value itself"
                )


class ResticBackupProbe(_Probe):
    """A restic repository, by `mode`:

    - `last-snapshot-age`: the newest snapshot matching `host`, `tags` and `path` (each a
      filter when set) is younger than `maxAgeHours` (e.g. `backup_success_last_24h`).
    - `backup-and-restore`: back up the file `path` (a disk image or a libvirt volume's
      file) into the repository, restore that snapshot into a temporary directory and
      compare SHA-256 digests (e.g. `backup_job_succeeds`; as a rollback criterion,
      `target_backup_failure` is the same probe failing). The digest is taken of exactly
      the bytes streamed to restic, so a disk a running guest writes to is verified as it
      was backed up.

    The password is read by the worker from `passwordRef` and handed to restic in its
    environment (`RESTIC_PASSWORD`), never on a command line.
    """

    type: Literal["restic-backup"]
    mode: Literal["last-snapshot-age", "backup-and-restore"]
    #: A restic repository: a local directory, or any location restic takes (`sftp:`,
    #: `rest:`, `s3:`...; credentials for those come from the worker's environment).
    repository: NonEmpty
    passwordRef: SecretRef
    #: last-snapshot-age: only snapshots of this host; backup-and-restore: the host recorded.
    host: NonEmpty | None = None
    #: last-snapshot-age: only snapshots carrying all these tags; backup-and-restore: the
    #: snapshot's tags (a `cutover-probe` tag is always added, so it is told apart).
    tags: list[NonEmpty] = Field(default_factory=list)
    #: last-snapshot-age: only snapshots of this path (optional); backup-and-restore: the
    #: file to back up (required).
    path: NonEmpty | None = None
    maxAgeHours: Annotated[StrictFloat | StrictInt, Field(gt=0, le=24 * 366)] = 24
    #: Where the restore is written (default: the system's temporary directory); it needs
    #: room for one copy of `path`, and is removed after the comparison.
    restoreDir: NonEmpty | None = None
    #: The restic program (Debian's `restic` by default).
    resticBinary: NonEmpty = "restic"
    timeoutSeconds: Seconds = 600

    @model_validator(mode="after")
    def _mode_fields(self) -> ResticBackupProbe:
        _untemplated(self, "repository", "path", "tags", "restoreDir")
        if self.mode == "backup-and-restore" and self.path is None:
            raise ValueError("`path`: mode backup-and-restore needs the file to back up")
        if self.path is not None and not self.path.startswith("/"):
            raise ValueError(f"`path`: {self.path!r} must be an absolute path")
        return self


class AlertRoutingProbe(_Probe):
    """Monitoring and alert routing, as far as the settings given reach:

    - with `prometheusUrl`: every rule in `alertRules` is loaded (`/api/v1/rules`) and not
      failing to evaluate, and, with `job`, that job's targets (only `instance`'s, when
      set) are scraped and up (`/api/v1/targets`); with `alertmanagerUrl` too, Prometheus
      sends its alerts to that Alertmanager (`/api/v1/alertmanagers`);
    - with `alertmanagerUrl` and `receiver`: a test alert with a unique `cutover_probe`
      label is posted to Alertmanager (`/api/v2/alerts`), must be routed to `receiver`
      (`/api/v2/alerts/groups`), and, with `receiptUrl`, must show up there: a URL whose
      answer lists what the receiver got (e.g. `python -m adapters.probes.webhook_sink`
      behind a webhook receiver). Routing proves Alertmanager's tree sends the alert to
      the receiver; only `receiptUrl` proves the notification was delivered. The test
      alert is resolved afterwards.
    """

    type: Literal["alert-routing"]
    prometheusUrl: NonEmpty | None = None
    alertRules: list[NonEmpty] = Field(default_factory=list)
    #: The scrape job whose targets must be up (its `job` label).
    job: NonEmpty | None = None
    #: Only this target of the job (its `instance` label, usually `host:port`).
    instance: NonEmpty | None = None
    alertmanagerUrl: NonEmpty | None = None
    receiver: NonEmpty | None = None
    #: The test alert's labels besides `alertname` and `cutover_probe` (route matchers).
    labels: dict[NonEmpty, NonEmpty] = Field(default_factory=dict)
    alertname: NonEmpty = "CutoverTestAlert"
    receiptUrl: NonEmpty | None = None
    #: How long the test alert may take to be routed (and delivered): at least the route's
    #: `group_wait`.
    timeoutSeconds: Seconds = 60

    @model_validator(mode="after")
    def _reach(self) -> AlertRoutingProbe:
        _untemplated(self, "prometheusUrl", "alertmanagerUrl", "receiptUrl", "job", "instance")
        for name in ("prometheusUrl", "alertmanagerUrl", "receiptUrl"):
            v = getattr(self, name)
            if v is not None and not v.startswith(("http://", "https://")):
                raise ValueError(f"`{name}`: expected an http:// or https:// URL")
        if self.prometheusUrl is None and (self.alertRules or self.job):
            raise ValueError("`alertRules` and `job` are read from Prometheus: set `prometheusUrl`")
        if self.instance is not None and self.job is None:
            raise ValueError("`instance` selects a target of `job`: set `job`")
        if self.prometheusUrl is not None and not (self.alertRules or self.job):
            raise ValueError("`prometheusUrl`: name what to verify there (`alertRules`, `job`)")
        if (self.alertmanagerUrl is None) != (self.receiver is None):
            raise ValueError(
                "a test alert needs both `alertmanagerUrl` and `receiver` (the receiver it "
                "must be routed to)"
            )
        if self.receiptUrl is not None and self.alertmanagerUrl is None:
            raise ValueError("`receiptUrl` verifies a test alert: set `alertmanagerUrl`")
        if self.prometheusUrl is None and self.alertmanagerUrl is None:
            raise ValueError("set `prometheusUrl` and/or `alertmanagerUrl`: nothing to verify")
        for key in self.labels:
            if key in ("alertname", "cutover_probe"):
                raise ValueError(f"`labels`: {key!r} is set by the probe")
        return self


class NftFlow(_Model):
    """One flow the application needs: `proto` to `port` from `source`."""

    proto: Literal["tcp", "udp"]
    port: Port
    #: A CIDR (`10.0.0.0/8`, `::/0`), or `any` (every IPv4 and IPv6 address).
    source: NonEmpty = "any"

    @field_validator("source")
    @classmethod
    def _cidr(cls, v: str) -> str:
        if v == "any":
            return v
        try:
            ipaddress.ip_network(v, strict=True)
        except ValueError as exc:
            raise ValueError(f"not a CIDR (or `any`): {exc}") from None
        return v


class NftablesPolicyProbe(_Probe):
    """The live nftables ruleset (`nft -j list table FAMILY TABLE`, in network namespace
    `netns` when set): `chain` is a base chain whose policy is drop, every flow of `allow`
    is accepted (and not dropped by a rule before its accept), and no accept rule opens
    more than those flows. `ct state established,related accept` and `iif lo accept` are
    not openings; an accept rule the probe cannot read (a jump, a match it does not know)
    counts as an extra opening, named by its handle."""

    type: Literal["nftables-policy"]
    family: Literal["inet", "ip", "ip6"] = "inet"
    table: NonEmpty
    chain: NonEmpty = "input"
    allow: list[NftFlow] = Field(default_factory=list)
    #: Run nft in this network namespace (`ip netns exec NETNS nft ...`).
    netns: NonEmpty | None = None
    nftBinary: NonEmpty = "nft"

    @model_validator(mode="after")
    def _names(self) -> NftablesPolicyProbe:
        _untemplated(self, "table", "chain", "netns")
        return self


class LiveResizeProbe(_Probe):
    """A live resize through libvirt (day-two "scaling or resize"): change the running
    `domain`'s memory (balloon, `memoryDeltaMiB`, within its maximum memory) and/or vCPUs
    (`vcpusDelta`, within its maximum vCPUs), wait until the guest took the change, hold it
    `holdSeconds`, check the guest still answers (`url`: an HTTP GET answering
    `expectStatus`; `host` + `port`: a TCP connect; always: the domain running and QEMU
    reporting it running), then restore the original values and check they are back.
    Fails naming the change the guest did not take or survive, or what was not restored."""

    type: Literal["live-resize"]
    #: The libvirt endpoint of the target's host.
    uri: NonEmpty = "qemu:///system"
    domain: NonEmpty
    #: Balloon change in MiB (negative shrinks); the guest needs a balloon driver.
    memoryDeltaMiB: StrictInt | None = None
    #: vCPU change (positive plugs vCPUs up to the domain's maximum, negative unplugs).
    vcpusDelta: StrictInt | None = None
    #: How long the guest may take to take (and give back) each change.
    settleSeconds: Annotated[StrictFloat | StrictInt, Field(gt=0, le=600)] = 30
    #: How long the changed size is held before the guest is asked to answer.
    holdSeconds: Annotated[StrictFloat | StrictInt, Field(ge=0, le=600)] = 2
    url: NonEmpty | None = None
    expectStatus: Annotated[StrictInt, Field(ge=100, le=599)] = 200
    host: NonEmpty | None = None
    port: Port | None = None
    timeoutSeconds: Seconds = 180

    @model_validator(mode="after")
    def _change(self) -> LiveResizeProbe:
        _untemplated(self, "uri", "domain")
        if not self.memoryDeltaMiB and not self.vcpusDelta:
            raise ValueError(
                "set a non-zero `memoryDeltaMiB` and/or `vcpusDelta`: nothing to resize"
            )
        if (self.host is None) != (self.port is None):
            raise ValueError("a TCP answer needs both `host` and `port`")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError("`url`: expected an http:// or https:// URL")
        return self


Probe = Annotated[
    CommandProbe
    | HttpProbe
    | TcpProbe
    | DnsProbe
    | PrometheusProbe
    | VSphereConcernsProbe
    | DataConsistencyProbe
    | PerformanceBaselineProbe
    | ResticBackupProbe
    | AlertRoutingProbe
    | NftablesPolicyProbe
    | LiveResizeProbe,
    Field(discriminator="type"),
]


class ApplicationEndpoints(_Model):
    """Where an application answers at this site, for runbooks that do not say (the
    seed's do not): the platform's addresses, known to the site, not to the runbook."""

    sourceAddress: NonEmpty | None = None
    targetAddress: NonEmpty | None = None
    #: The application's attributes (tenant, criticality, environment, residency, ...) that
    #: access rules and workload policies match: known to the worker's site, never taken
    #: from a workflow's input.
    labels: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    tags: list[StrictStr] = Field(default_factory=list)


class SiteConfig(_Model):
    """Everything a cutover needs to know about one site, secrets by reference only."""

    name: NonEmpty = "site"
    taskQueue: NonEmpty = "cutover"
    stagingDir: NonEmpty | None = None
    vcenter: VCenter | None = None
    libvirt: Libvirt | None = None
    #: The target platforms this site runs cutovers to, by the runbooks' `targetPlatform`.
    #: Unset: the `libvirt` section serves DEFAULT_LIBVIRT_PLATFORMS. A runbook whose
    #: platform the site does not bind is refused, never run elsewhere.
    targetPlatforms: dict[TargetPlatform, TargetBinding] | None = None
    storageMappings: list[StorageMapping] = Field(default_factory=list)
    networkMappings: list[NetworkMapping] = Field(default_factory=list)
    loadBalancer: LoadBalancer | None = None
    dns: DnsUpdater | None = None
    checks: dict[StrictStr, Probe] = Field(default_factory=dict)
    #: Per application: the endpoint addresses a runbook leaves unset (filled in when the
    #: runbook is loaded against the site, so the workflow's input names them).
    applications: dict[StrictStr, ApplicationEndpoints] = Field(default_factory=dict)
    #: Who may do what (operators' public keys, roles, rules): every operator action is
    #: signed and checked against it. A site without it refuses every action (issue 13).
    access: AccessPolicy | None = None
    #: The seed's WorkloadPolicy documents governing this site's applications.
    workloadPolicies: list[WorkloadPolicy] = Field(default_factory=list)
    #: Files that hold them (relative to the site file; `load_site` reads them in, so the
    #: site's digest covers them): `accessFile` has an `access:` section,
    #: `workloadPolicyFiles` WorkloadPolicy documents.
    accessFile: NonEmpty | None = None
    workloadPolicyFiles: list[NonEmpty] = Field(default_factory=list)
    #: Conversion hosts and copy limits (issue 17): unset, every step runs on `taskQueue`.
    fleet: Fleet | None = None

    def with_endpoints(self, runbook: Runbook) -> Runbook:
        """The runbook with the addresses this site knows for it where it sets none."""
        known = self.applications.get(runbook.application)
        if known is None:
            return runbook
        ep = runbook.endpoint
        filled = {
            k: getattr(known, k)
            for k in ("sourceAddress", "targetAddress")
            if getattr(ep, k) is None and getattr(known, k) is not None
        }
        if not filled:
            return runbook
        return runbook.model_copy(update={"endpoint": ep.model_copy(update=filled)})

    @model_validator(mode="before")
    @classmethod
    def _libvirt_from_bindings(cls, data: Any) -> Any:
        # A site that writes only `targetPlatforms`, all on one URI, gets the `libvirt`
        # section it names: what a run started before bindings existed connects to.
        if isinstance(data, dict) and data.get("libvirt") is None:
            bindings = data.get("targetPlatforms")
            if isinstance(bindings, dict):
                uris = {b.get("uri") for b in bindings.values() if isinstance(b, dict)} - {None}
                if len(uris) == 1:
                    data = {**data, "libvirt": {"uri": uris.pop()}}
        return data

    def bound_platforms(self) -> list[str]:
        """The runbook `targetPlatform`s this site runs cutovers to."""
        if self.targetPlatforms is None:
            return list(DEFAULT_LIBVIRT_PLATFORMS)
        return list(self.targetPlatforms)

    def target_binding(self, platform: str) -> LibvirtPlatform | None:
        """How this site reaches `platform` (the URI filled in from `libvirt`), or None
        when it does not bind it."""
        if platform not in self.bound_platforms():
            return None
        bound = self.targetPlatforms or {}
        binding = next((b for p, b in bound.items() if p == platform), LibvirtPlatform())
        if binding.uri is None and self.libvirt is not None:
            return binding.model_copy(update={"uri": self.libvirt.uri})
        return binding

    def platform_problem(self, platform: str) -> str | None:
        """Why a runbook for `platform` cannot run at this site, naming what it binds."""
        if platform in self.bound_platforms():
            return None
        bound = ", ".join(self.bound_platforms()) or "none"
        return (
            f"target platform '{platform}' is not bound by site '{self.name}' (it binds: "
            f"{bound}); bind it under the site's `targetPlatforms` (e.g. `{platform}: "
            "{type: libvirt, uri: ...}`) or run this runbook at a site that does"
        )

    @model_validator(mode="after")
    def _concerns_need_vcenter(self) -> SiteConfig:
        for name, probe in self.checks.items():
            if isinstance(probe, VSphereConcernsProbe) and self.vcenter is None:
                raise ValueError(f"check '{name}' reads vCenter, but `vcenter` is not set")
            if isinstance(probe, DataConsistencyProbe) and (
                self.vcenter is None or self.stagingDir is None
            ):
                raise ValueError(
                    f"check '{name}' compares the source disks (through `vcenter`) with the "
                    "staged copies (in `stagingDir`): both must be set"
                )
        return self

    @field_validator("checks")
    @classmethod
    def _check_names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not _CHECK_NAME.fullmatch(name):
                raise ValueError(
                    f"check name '{name}' must be lowercase letters, digits and '_', "
                    "starting with a letter"
                )
        return v


_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class SiteRef(BaseModel):
    """What a workflow's input says about its site: which one, and which version (the
    history records it). The worker resolves it from its own configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: NonEmpty
    digest: Annotated[StrictStr, Field(pattern=_DIGEST.pattern)]

    def __str__(self) -> str:
        return f"{self.name}@{self.digest[:19]}"


#: Fields added after sites were first named by digest (issue 13): left out of the digest
#: while unset, so a site written before them keeps its digest and a cutover in flight
#: across the worker's upgrade still finds its version (the archive is re-digested on read).
_LATER_FIELDS = ("fleet",)


def site_digest(site: SiteConfig) -> str:
    """The site's identity: sha256 of its canonical JSON (what every reader of the same
    file computes, whatever its key order or comments)."""
    data = site.model_dump(mode="json")
    for name in _LATER_FIELDS:
        if data.get(name) is None:
            data.pop(name, None)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def site_ref(site: SiteConfig) -> SiteRef:
    return SiteRef(name=site.name, digest=site_digest(site))


def load_site(path: str | Path) -> SiteConfig:
    """A site config; a relative `stagingDir` is made absolute here (against the current
    directory, like the other paths), since the site travels to workers in the input."""
    site = load_file(SiteConfig, path)
    if site.stagingDir and not Path(site.stagingDir).is_absolute():
        site = site.model_copy(update={"stagingDir": str(Path(site.stagingDir).resolve())})
    return _with_policy_files(site, Path(path))


def _with_policy_files(site: SiteConfig, path: Path) -> SiteConfig:
    """The site with the access policy and workload policies its files hold read in (the
    workflow and every worker see the policies themselves, not a path)."""
    update: dict[str, Any] = {}
    if site.accessFile is not None:
        if site.access is not None:
            raise ConfigError(
                [Problem(str(path), "accessFile", "give `access` or `accessFile`, not both")]
            )
        update["access"] = load_access_policy(path.parent / site.accessFile)
        update["accessFile"] = None
    if site.workloadPolicyFiles:
        policies = list(site.workloadPolicies)
        for name in site.workloadPolicyFiles:
            policies += load_workload_policies(path.parent / name)
        seen: set[str] = set()
        for p in policies:
            if p.name in seen:
                why = f"WorkloadPolicy '{p.name}' is defined twice; expected unique names"
                raise ConfigError([Problem(str(path), "workloadPolicyFiles", why)])
            seen.add(p.name)
        update["workloadPolicies"] = policies
        update["workloadPolicyFiles"] = []
    return site.model_copy(update=update) if update else site


def runbook_problems(runbook: Runbook, site: SiteConfig) -> list[tuple[str, str]]:
    """What keeps `runbook` from running at `site`, as (field, message): its target platform
    unbound, a check without a probe, a step without the site section it needs. Caught
    here, not halfway through a cutover (where the undo would fail the same way)."""
    problems: list[tuple[str, str]] = []
    unbound = site.platform_problem(runbook.targetPlatform)
    if unbound is not None:
        problems.append(("targetPlatform", unbound))
    problems += [
        (f"{field}[{i}]", f"check '{name}' has no probe in the site config (add it under `checks`)")
        for field in ("preChecks", "postChecks", "rollbackCriteria")
        for i, name in enumerate(getattr(runbook, field))
        if name not in site.checks
    ]
    needs = {"update_load_balancer": ("loadBalancer", site.loadBalancer),
             "update_dns": ("dns", site.dns),
             "quiesce_application": ("vcenter", site.vcenter)}  # fmt: skip
    problems += [
        (f"cutoverSteps[{i}]",
         f"step '{step}' needs a `{needs[step][0]}` section in the site config")
        for i, step in enumerate(runbook.cutoverSteps)
        if step in needs and needs[step][1] is None
    ]  # fmt: skip
    return problems


def load_runbook(path: str | Path, site: SiteConfig | None = None, site_file: str = "") -> Runbook:
    """Load a runbook; with a site, it must be able to run there (`runbook_problems`)."""
    context = {"site_checks": frozenset(site.checks) if site else frozenset()}
    runbook = load_file(Runbook, path, context=context)
    if site is not None:
        runbook = site.with_endpoints(runbook)
        problems = runbook_problems(runbook, site)
        if problems:
            # the site file named where the message says "the site config"
            where = f"the site config {site_file}" if site_file else "the site config"
            raise ConfigError(
                [Problem(str(path), f, m.replace("the site config", where, 1)) for f, m in problems]
            )
    return runbook
