"""The plan's boundaries: the policy that tunes it, the inputs it reads besides the inventory,
and `plan.json`'s shape (camelCase, as the issue and the other files of the project)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Criticality = Literal["low", "medium", "high"]
WaveClass = Literal["factory", "stateful", "holdout"]
RunbookTemplate = Literal["stateless-warm", "stateful-warm", "cold"]

#: The wave each class opens, in the order they run.
CLASS_WAVE: dict[WaveClass, str] = {"factory": "1", "stateful": "2", "holdout": "3"}


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _windows() -> dict[Criticality, float]:
    return {"low": 60.0, "medium": 120.0, "high": 240.0}


class PlanPolicy(_M):
    """What shapes the plan (`--policy FILE`, YAML; the flags override)."""

    appAttribute: str = "app"
    appPattern: str | None = None
    criticalityAttribute: str = "criticality"
    #: Tried in order: the first a VM has wins.
    environmentAttributes: list[str] = Field(default_factory=lambda: ["env", "environment"])
    ownerAttribute: str = "owner"
    #: Environments that count as production (everything else may go in the factory wave).
    productionEnvironments: list[str] = Field(default_factory=lambda: ["prod", "production"])
    maxWaveApps: Annotated[int, Field(ge=1)] = 50
    maxWaveTiB: Annotated[float, Field(gt=0)] = 20.0
    transferMbps: Annotated[float, Field(gt=0)] = 1000.0
    #: Wave 1 takes applications up to this size only.
    factoryMaxGiB: Annotated[float, Field(gt=0)] = 500.0
    #: Applications this small are cut over cold (the copy fits the window).
    coldMaxGiB: Annotated[float, Field(ge=0)] = 50.0
    #: Fixed time per VM on top of the copy: conversion, boot, checks (hours).
    perVmHours: Annotated[float, Field(ge=0)] = 0.25
    waveConcurrency: Annotated[int, Field(ge=1, le=1000)] = 4
    #: Who approves waves 2 and later (default: the owners of the wave's applications).
    approvers: list[str] = Field(default_factory=list)
    targetPlatform: Literal["kvm-libvirt", "libvirt", "proxmox", "pextra-cloud", "openstack"] = (
        "kvm-libvirt"
    )
    #: Rollback window by criticality (minutes).
    rollbackWindowMinutes: dict[Criticality, float] = Field(default_factory=_windows)


class Mapping(_M):
    """One row of the mapping CSV (`vm,application[,owner,criticality,environment]`)."""

    vm: str
    application: str
    owner: str | None = None
    criticality: str | None = None
    environment: str | None = None


class Dependency(_M):
    """One observed or declared connection, VM to VM (already resolved)."""

    source: str  # VM moref
    destination: str  # VM moref
    port: int | None = None
    #: the destination's process (Azure Migrate) or the plain CSV's kind
    kind: str = ""


class UnknownServer(_M):
    name: str
    rows: int
    file: str


class DependencyRead(_M):
    """What the dependency files gave: resolved edges, and the servers not in the inventory
    (counted and listed, never fatal)."""

    files: list[str] = Field(default_factory=list)
    rows: int = 0
    edges: list[Dependency] = Field(default_factory=list)
    unknown: list[UnknownServer] = Field(default_factory=list)
    unknownRows: int = 0


# ------------------------------------------------------------------ plan.json


class PlannedApp(_M):
    name: str
    wave: str
    vms: list[str]
    criticality: Criticality
    stateful: bool
    complexity: int
    estimatedHours: float
    dependsOn: list[str]
    reasons: list[str]


class UnplannedVM(_M):
    vm: str
    reasons: list[str]


class WavePlan(_M):
    name: str
    applications: list[str]
    dataTiB: float
    estimatedHours: float


class ExcludedVM(_M):
    vm: str
    reason: str


class Plan(_M):
    applications: list[PlannedApp]
    unplanned: list[UnplannedVM]
    waves: list[WavePlan]
    excluded: list[ExcludedVM]


# --------------------------------------------------- what the report needs too


class AppFacts(_M):
    """Everything the planner learnt about one application (report and runbooks)."""

    name: str
    vms: list[str]
    vmMorefs: list[str]
    environment: str | None
    criticality: Criticality
    owner: str | None
    stateful: bool
    databases: list[str]
    dataGiB: float
    special: list[str]
    critical: list[str]
    licensing: list[str]
    sourceCluster: str
    wave: str | None = None
    waveClass: WaveClass | None = None
    template: RunbookTemplate = "stateless-warm"
    complexity: int = 0
    estimatedHours: float = 0.0
    dependsOn: list[str] = Field(default_factory=list)
    #: application this one connects to -> observed connections, and their ports
    calls: dict[str, int] = Field(default_factory=dict)
    callPorts: dict[str, list[int]] = Field(default_factory=dict)
    #: the database engines recognised on those connections (by port or process)
    callDatabases: dict[str, list[str]] = Field(default_factory=dict)
    reasons: list[str] = Field(default_factory=list)


class Summary(_M):
    source: str
    datacenters: int
    clusters: int
    hosts: int
    datastores: int
    networks: int
    vms: int
    templates: int
    poweredOn: int
    dataTiB: float
    missingSheets: list[str] = Field(default_factory=list)


class PlanResult(_M):
    """`plan.json` and what the report, wave files and runbooks are drawn from."""

    plan: Plan
    apps: list[AppFacts]
    summary: Summary
    dependencies: DependencyRead
    policy: PlanPolicy
