"""The cutover worker: workflows plus activities on one task queue.

Pydantic data converter (set on the client), the OpenTelemetry tracing interceptor, structlog
JSON logs. Activities are objects holding their clients, so tests can inject real ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.common import VersioningBehavior
from temporalio.worker import (
    Interceptor,
    Worker,
    WorkerDeploymentConfig,
    WorkerDeploymentVersion,
)
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.checks import CheckActivities
from activities.convert import ConvertActivities
from activities.disks import DiskActivities
from activities.dns import DnsActivities
from activities.fleet import FleetActivities
from activities.loadbalancer import LoadBalancerActivities
from activities.reverse_sync import ReverseSync
from activities.smoke import SmokeActivities
from activities.vsphere import VSphereActivities
from activities.wave import WaveActivities
from adapters.qemu.mirror import TargetMirror
from adapters.vsphere.client import ClientPool
from adapters.vsphere.source import VSphereSource
from cutover.audit.log_activity import AuditLogActivities
from cutover.catalog import APPEND_AUDIT_RECORD, RESOLVE_SITE
from cutover.fleet import FLEET_REQUEST
from cutover.keyfiles import Key
from cutover.logs import LoggingInterceptor
from cutover.telemetry import tracing_interceptor
from cutover.wave import AWAIT_CUTOVER, REQUEST_ROLLBACK
from workers.audit import audit_activities, worker_key
from workers.heartbeat import HeartbeatKeepAlive
from workers.registry import dns_updater, load_balancer, target_steps
from workers.sites import SiteActivities, SiteInterceptor, SiteStore, shared
from workflows.cutover import AppCutoverWorkflow
from workflows.fleet import FleetWorkflow
from workflows.wave import WaveWorkflow

WORKFLOWS: list[type] = [AppCutoverWorkflow, WaveWorkflow, FleetWorkflow]
#: Our models are pure and deterministic: load them once, outside the sandbox.
PASSTHROUGH = (
    "cutover",
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "yaml",
    # Loggers and tracers run inside workflow code paths; they are not workflow state.
    "structlog",
    "opentelemetry",
    # Ed25519 verification in update validators (cutover.signing): a Rust extension that
    # aborts the process if the sandbox imports it a second time.
    "cryptography",
    "_cffi_backend",
)


def default_activities(
    client: Client | None = None, key: Key | None = None
) -> list[Callable[..., Any]]:
    """Every step, compensation and check, on the real adapters (one client pool each);
    with a client, also the wave's (which talk to Temporal itself). Target platforms, load
    balancers and DNS updaters come from `workers.registry`, by the site bindings' `type`."""
    pool = ClientPool()
    vsphere = VSphereActivities(pool, source=VSphereSource(pool))  # the one source platform
    mirror = TargetMirror()  # qcow2 targets: converted in the warm phase, not the downtime
    disks = DiskActivities.for_vsphere(pool, mirror)
    real: list[Callable[..., Any]] = [
        CheckActivities(vsphere, disks).run_check,
        SmokeActivities().smoke_test,
        *vsphere.activities(),
        *disks.activities(),
        *ReverseSync.for_vsphere(pool).activities(),
        *ConvertActivities(prepared=mirror).activities(),
        *target_steps().activities(),
        *DnsActivities(factory=dns_updater).activities(),
        *LoadBalancerActivities(factory=load_balancer).activities(),
    ]
    if client is not None:
        # the rollbacks a wave relays are signed by the worker's key
        real += WaveActivities(client, signer=key or worker_key()).activities()
    return real


def deployment_config(deployment: str, build_id: str) -> WorkerDeploymentConfig:
    """Worker Deployment versioning (issue 17): this worker is `build_id` of `deployment`.
    Every workflow is pinned to the build it started on: a cutover in its window finishes
    on the code that began it, whatever is released meanwhile (old builds keep running
    until their pinned runs end). Changes that must reach running waves go through
    `workflow.patched` and the replay tests."""
    return WorkerDeploymentConfig(
        version=WorkerDeploymentVersion(deployment_name=deployment, build_id=build_id),
        use_worker_versioning=True,
        default_versioning_behavior=VersioningBehavior.PINNED,
    )


def build_worker(
    client: Client,
    task_queue: str,
    activities: Sequence[Callable[..., Any]] | None = None,
    workflows: Sequence[type] = WORKFLOWS,
    interceptors: Sequence[Interceptor] | None = None,
    sites: SiteStore | None = None,
    audit: AuditLogActivities | None = None,
    key: Key | None = None,
    **kwargs: Any,
) -> Worker:
    """`interceptors` replaces the default tracing one (tests pass their own tracer);
    activity logs are always bound to their workflow, run, application, wave, step, attempt.
    `audit`: the audit log's writer; `key`: the worker's key, which signs its audit records
    and the rollbacks a wave relays (default: `workers.audit.worker_key()`).
    `sites`: the site configs this worker serves (default: the process's `workers.sites`
    store); workflows resolve their `siteRef` against it, and every step gets its site
    from it.
    """
    store = sites if sites is not None else shared()
    key = key or worker_key()
    acts = list(activities if activities is not None else default_activities(client, key))
    given = {getattr(a, "__temporal_activity_definition").name for a in acts}
    if RESOLVE_SITE not in given:
        acts.append(SiteActivities(store).resolve_site)
    if AWAIT_CUTOVER not in given and REQUEST_ROLLBACK not in given:
        # what a wave asks of Temporal itself (a worker running waves needs them)
        acts += WaveActivities(client, signer=key).activities()
    if FLEET_REQUEST not in given:
        # the fleet's ledger (issue 17): start-or-signal it, which hosts poll, who ended
        acts += FleetActivities(client).activities()
    if APPEND_AUDIT_RECORD not in given:
        # every workflow ends by appending its record to the worker's audit log
        acts += (audit or audit_activities(client, key)).activities()
    return Worker(
        client,
        task_queue=task_queue,
        workflows=list(workflows),
        activities=acts,
        activity_executor=ThreadPoolExecutor(max_workers=16),
        # On shutdown, running activities get this long to finish before they are cancelled
        # (and retried elsewhere, resuming from their heartbeats).
        graceful_shutdown_timeout=timedelta(seconds=10),
        # A workflow task sent to a dead worker's sticky queue goes to the shared queue
        # after this long (SDK default 10 s), so a kill -9 costs seconds, not tens of them.
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=3),
        interceptors=[
            SiteInterceptor(store),
            *(interceptors if interceptors is not None else [tracing_interceptor()]),
            LoggingInterceptor(),
            HeartbeatKeepAlive(),
        ],
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)
        ),
        **kwargs,
    )
