"""A worker fleet (issue 17): data hosts, the steps they run, placement, and copy limits.

Pure models and rules, shared by the site config, the workflows and the workers.

A site with `fleet.dataHosts` runs each cutover's data path on one data host: the cutover
picks a live host when its data path starts (placement rules first, then the host holding
the fewest cutovers) and sends every later data step and data undo to that host's own task
queue, `<taskQueue>-data-<host>`, where only that host's worker polls (its staging
directory is its own). A site without it runs every step on its task queue, as before.

Concurrent copies are bounded per data host, per ESXi host and per datastore, across every
worker, by one `CutoverFleet` workflow per task queue (`FleetBook` is its ledger).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from cutover.catalog import Compensation, Step, WarmStep

_HOST_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

HostName = Annotated[StrictStr, Field(pattern=_HOST_NAME.pattern)]
Limit = Annotated[StrictInt, Field(ge=1, le=10_000)]

#: Steps that read or write a host's staging directory (or the in-process mirror that
#: converts while it copies): all of one cutover's run on the same data host.
DATA_STEPS: frozenset[str] = frozenset(
    {
        WarmStep.PRE_COPY,
        WarmStep.INCREMENTAL_SYNC,
        Step.FINAL_DATA_SYNC,
        Step.CONVERT_IMAGE,
        Step.ATTACH_TARGET_STORAGE_PROFILE,
        Compensation.DISCARD_STAGING,
        Compensation.REMOVE_CONVERTED_IMAGE,
    }
)
#: The copies: each holds a permit for its data host, its ESXi hosts and its datastores.
COPY_STEPS: frozenset[str] = frozenset(
    {WarmStep.PRE_COPY, WarmStep.INCREMENTAL_SYNC, Step.FINAL_DATA_SYNC}
)
#: Undos that only delete what lies in a host's staging directory: when the host is gone,
#: its own cleanup at its next start removes them (`workers.fleet.clean_staging`), so they
#: never hold a rollback or a finalize.
STAGING_UNDOS: frozenset[str] = frozenset(
    {Compensation.DISCARD_STAGING, Compensation.REMOVE_CONVERTED_IMAGE}
)
#: Copies in the downtime jump the queue for permits (the warm ones can wait).
URGENT_STEPS: frozenset[str] = frozenset({Step.FINAL_DATA_SYNC})


def data_queue(task_queue: str, host: str) -> str:
    """The task queue only `host`'s data worker polls."""
    return f"{task_queue}-data-{host}"


def fleet_workflow_id(task_queue: str) -> str:
    """The one fleet ledger of a task queue."""
    return f"cutover-fleet-{task_queue}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataHost(_Model):
    """A conversion host: its worker runs `cutover worker --role data --data-host NAME`."""

    name: HostName
    #: Placement: prefer this host for VMs whose disks are on these datastores ...
    datastores: list[StrictStr] = Field(default_factory=list)
    #: ... or whose target storage mappings name these pools (near the storage).
    pools: list[StrictStr] = Field(default_factory=list)
    #: Concurrent copies on this host (default: the fleet's `limits.perDataHost`).
    maxCopies: Limit | None = None


class FleetLimits(_Model):
    """Concurrent copies (unset: no limit), across every worker and every wave."""

    perDataHost: Limit | None = None
    perEsxiHost: Limit | None = None
    perDatastore: Limit | None = None


class Fleet(_Model):
    dataHosts: list[DataHost] = Field(min_length=1)
    limits: FleetLimits = FleetLimits()
    #: How long a data step waits for its host's worker to take it (schedule-to-start);
    #: past it the host counts as gone: a warm cutover moves to another host (from the
    #: pre-copy), one in its downtime rolls back.
    hostWaitSeconds: Annotated[StrictInt, Field(ge=5, le=3600)] = 120
    #: How long a copy waits for its permits before the cutover gives up (rolls back).
    permitWaitMinutes: Annotated[StrictInt, Field(ge=1, le=10_080)] = 240

    @model_validator(mode="after")
    def _unique(self) -> Fleet:
        names = [h.name for h in self.dataHosts]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"dataHosts: each name once ({', '.join(twice)} more than once)")
        return self

    def host(self, name: str) -> DataHost | None:
        return next((h for h in self.dataHosts if h.name == name), None)

    def candidates(self, datastores: Iterable[str], pools: Iterable[str]) -> list[str]:
        """The hosts placement prefers for a cutover (near its datastores or its target
        pools), else every host; in the site's order."""
        ds, ps = set(datastores), set(pools)
        near = [h.name for h in self.dataHosts if ds & set(h.datastores) or ps & set(h.pools)]
        return near or [h.name for h in self.dataHosts]

    def copy_resources(
        self, host: str, esxi_hosts: Iterable[str], datastores: Iterable[str]
    ) -> dict[str, int]:
        """What one copy holds, each with its limit (unlimited resources are left out)."""
        out: dict[str, int] = {}
        dh = self.host(host)
        per_host = (dh.maxCopies if dh else None) or self.limits.perDataHost
        if per_host:
            out[f"host:{host}"] = per_host
        if self.limits.perEsxiHost:
            out.update({f"esxi:{e}": self.limits.perEsxiHost for e in sorted(set(esxi_hosts))})
        if self.limits.perDatastore:
            out.update(
                {f"datastore:{d}": self.limits.perDatastore for d in sorted(set(datastores))}
            )
        return out


# ------------------------------------------------------------------ the fleet's ledger


class FleetRequest(_Model):
    """A cutover asks the fleet for a data host (`pick`) or for copy permits."""

    token: StrictStr
    holder: StrictStr  # the asking workflow's ID: the grant is signalled to it
    kind: Literal["host", "permits"]
    #: kind=host: the live hosts it may run on (placement order); the least-loaded wins
    pick: list[StrictStr] = Field(default_factory=list)
    #: kind=permits: each resource it holds while it copies, with its limit
    resources: dict[StrictStr, StrictInt] = Field(default_factory=dict)
    urgent: bool = False
    #: for `wave status`: what it is for
    label: StrictStr = ""


class FleetGrant(_Model):
    token: StrictStr
    host: StrictStr | None = None


class FleetRelease(_Model):
    holder: StrictStr
    #: one grant, or (None) everything the holder holds (its cutover ended)
    token: StrictStr | None = None


class FleetLost(_Model):
    """A cutover found `host` gone (it did not take a step within hostWaitSeconds)."""

    host: StrictStr
    reportedBy: StrictStr


#: A host reported lost is not offered to other cutovers for this long (unless no other
#: host is left): long enough for its last poll to age out of the liveness check.
SUSPECT_FOR = timedelta(seconds=180)


class Held(_Model):
    request: FleetRequest
    host: StrictStr | None = None


class FleetBook(_Model):
    """Who holds what and who waits: the fleet workflow's whole state (carried across its
    continue-as-new). Grants are first come, first served, urgent requests first; a request
    that does not fit never lets a later one of the same urgency pass it on the resources
    it waits for (no starvation of large requests)."""

    model_config = ConfigDict(extra="forbid", frozen=False)

    held: dict[str, Held] = Field(default_factory=dict)
    waiting: list[FleetRequest] = Field(default_factory=list)
    #: hosts a cutover reported lost, and when
    suspects: dict[str, datetime] = Field(default_factory=dict)

    def lost(self, host: str, at: datetime) -> None:
        self.suspects[host] = at

    def in_use(self) -> dict[str, int]:
        use: dict[str, int] = {}
        for h in self.held.values():
            for r in h.request.resources:
                use[r] = use.get(r, 0) + 1
        return use

    def load(self) -> dict[str, int]:
        """Cutovers per data host."""
        out: dict[str, int] = {}
        for h in self.held.values():
            if h.host is not None:
                out[h.host] = out.get(h.host, 0) + 1
        return out

    def add(self, req: FleetRequest) -> None:
        if req.token in self.held or any(w.token == req.token for w in self.waiting):
            return  # a retried request: already known
        self.waiting.append(req)

    def release(self, rel: FleetRelease) -> list[str]:
        gone = [
            t
            for t, h in self.held.items()
            if h.request.holder == rel.holder and (rel.token is None or t == rel.token)
        ]
        for t in gone:
            del self.held[t]
        self.waiting = [
            w
            for w in self.waiting
            if not (w.holder == rel.holder and (rel.token is None or w.token == rel.token))
        ]
        return gone

    def grant(self, now: datetime | None = None) -> list[tuple[FleetRequest, str | None]]:
        """Grant every waiting request that fits now, in order; return them. A host reported
        lost within SUSPECT_FOR is picked only when no other is offered."""
        if now is not None:
            self.suspects = {h: t for h, t in self.suspects.items() if now - t < SUSPECT_FOR}
        granted: list[tuple[FleetRequest, str | None]] = []
        use = self.in_use()
        blocked: set[str] = set()  # resources an earlier waiter needs
        order = sorted(range(len(self.waiting)), key=lambda i: (not self.waiting[i].urgent, i))
        keep: list[FleetRequest] = []
        for i in order:
            req = self.waiting[i]
            if req.kind == "host":
                load = self.load()
                pick = [h for h in req.pick if h not in self.suspects] or req.pick
                host = min(pick, key=lambda h: (load.get(h, 0), req.pick.index(h)))
                self.held[req.token] = Held(request=req, host=host)
                granted.append((req, host))
                continue
            over = [r for r, lim in req.resources.items() if use.get(r, 0) >= lim]
            if over or blocked & set(req.resources):
                blocked |= set(req.resources)
                keep.append(req)
                continue
            for r in req.resources:
                use[r] = use.get(r, 0) + 1
            self.held[req.token] = Held(request=req)
            granted.append((req, None))
        self.waiting = [w for w in self.waiting if w in keep]
        return granted

    def holders(self) -> list[str]:
        return sorted(
            {h.request.holder for h in self.held.values()} | {w.holder for w in self.waiting}
        )


class ResourceUse(_Model):
    resource: str
    inUse: int
    limit: int | None
    waiting: int


class FleetState(_Model):
    """What `wave status` shows of the fleet."""

    hosts: dict[str, int]  # cutovers per data host
    resources: list[ResourceUse]
    waiting: int
    #: hosts reported lost recently (not offered while another host is)
    lost: list[str] = Field(default_factory=list)


def fleet_state(book: FleetBook) -> FleetState:
    use = book.in_use()
    limits: dict[str, int] = {}
    waits: dict[str, int] = {}
    for h in book.held.values():
        limits.update(h.request.resources)
    for w in book.waiting:
        limits.update(w.resources)
        for r in w.resources:
            waits[r] = waits.get(r, 0) + 1
    return FleetState(
        hosts=book.load(),
        resources=[
            ResourceUse(
                resource=r, inUse=use.get(r, 0), limit=limits.get(r), waiting=waits.get(r, 0)
            )
            for r in sorted(set(use) | set(waits))
        ],
        waiting=len(book.waiting),
        lost=sorted(book.suspects),
    )


# ------------------------------------------------------------------ activities' names and I/O

#: Signal-with-start the fleet workflow with a request (a workflow cannot start one).
FLEET_REQUEST = "fleet_request"
#: Which of some data hosts have a worker polling their queue now.
FLEET_LIVE_HOSTS = "fleet_live_hosts"
#: Which of some holders' workflows are no longer running (their grants are freed).
FLEET_CLOSED_HOLDERS = "fleet_closed_holders"
#: What the fleet workflow is called and the signals and query it answers.
FLEET_WORKFLOW = "CutoverFleet"
SIGNAL_REQUEST = "request"
SIGNAL_RELEASE = "release"
SIGNAL_LOST = "lost"
QUERY_STATE = "state"
#: The signal a cutover gets its grants by.
SIGNAL_GRANT = "fleet_grant"
#: A poller seen within this long counts as live (a live idle worker polls again within
#: about a minute: the server holds each long poll up to ~60 s).
LIVE_POLLER_SECONDS = 90


class FleetInput(_Model):
    book: FleetBook = Field(default_factory=FleetBook)


class FleetCall(_Model):
    taskQueue: StrictStr
    request: FleetRequest


class LiveHostsQuery(_Model):
    taskQueue: StrictStr
    hosts: list[StrictStr]


class HoldersQuery(_Model):
    holders: list[StrictStr]
