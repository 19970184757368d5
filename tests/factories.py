"""Building runbooks and site configs for tests."""

from __future__ import annotations

import uuid
from typing import Any

from cutover.catalog import BUILTIN_CHECKS
from cutover.models import CutoverInput, Tuning
from cutover.runbook import Runbook
from cutover.site import SiteConfig

SEED: dict[str, Any] = {
    "application": "customer-analytics-api",
    "wave": 2,
    "sourcePlatform": "vmware-vsphere",
    "sourceCluster": "prod-cluster-03",
    "targetPlatform": "pextra-cloud",
    "rollbackWindowMinutes": 90,
    "preChecks": [
        "backup_success_last_24h",
        "target_monitoring_ready",
        "target_network_policy_validated",
        "dns_ttl_lowered",
    ],
    "cutoverSteps": [
        "quiesce_application",
        "final_data_sync",
        "convert_image",
        "attach_target_storage_profile",
        "validate_guest_tools_and_drivers",
        "power_on_target",
        "smoke_test",
        "update_load_balancer",
    ],
    "postChecks": [
        "p95_latency_within_slo",
        "error_rate_below_threshold",
        "backup_job_succeeds",
        "alerting_signals_present",
    ],
    "rollbackCriteria": [
        "app_health_check_failure",
        "sustained_latency_regression",
        "target_backup_failure",
    ],
}


#: An access policy that takes unsigned requests (the name a request gives is its sender).
UNSIGNED: dict[str, Any] = {"requireSignatures": False}


def unique_app(prefix: str = "app") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def site(**overrides: Any) -> SiteConfig:
    checks: dict[str, dict[str, Any]] = {
        n: {"type": "command", "argv": ["true"]} for n in BUILTIN_CHECKS
    }
    checks["sustained_latency_regression"]["failAfter"] = 3
    # Unsigned requests, by this site's own choice: the tests of signing and of the access
    # policy use sites with principals (tests/test_trust.py).
    data: dict[str, Any] = {"name": "test", "checks": checks, "access": UNSIGNED}
    data.update(overrides)
    return SiteConfig.model_validate(data)


def cutover_input(task_queue: str = "cutover", **runbook: Any) -> CutoverInput:
    data = {
        **SEED,
        "application": unique_app(),
        "rollbackWindowMinutes": 0.02,
        "checkIntervalSeconds": 0.3,
        **runbook,
    }
    return CutoverInput(
        runbook=Runbook.model_validate(data),
        site=site(taskQueue=task_queue),
        requestedBy="pytest",
        tuning=Tuning(maxAttempts=2, initialRetrySeconds=0.1, compensationAttempts=2),
    )
