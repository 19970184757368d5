"""The vocabulary runbooks are written in: known steps, checks and their ordering rules.

Pure data and pure functions, shared by the runbook model, the workflow and the activities.
"""

from __future__ import annotations

from enum import StrEnum


class Step(StrEnum):
    """Cutover steps a runbook may list in `cutoverSteps` (each is an activity of that name)."""

    QUIESCE_APPLICATION = "quiesce_application"
    FINAL_DATA_SYNC = "final_data_sync"
    CONVERT_IMAGE = "convert_image"
    ATTACH_TARGET_STORAGE_PROFILE = "attach_target_storage_profile"
    VALIDATE_GUEST_TOOLS_AND_DRIVERS = "validate_guest_tools_and_drivers"
    POWER_ON_TARGET = "power_on_target"
    SMOKE_TEST = "smoke_test"
    UPDATE_LOAD_BALANCER = "update_load_balancer"
    UPDATE_DNS = "update_dns"


class WarmStep(StrEnum):
    """Steps of the warm phase, run while the source still serves (when the runbook syncs)."""

    SNAPSHOT_SOURCE = "snapshot_source"
    PRE_COPY = "pre_copy"
    INCREMENTAL_SYNC = "incremental_sync"


class Compensation(StrEnum):
    """Undo activities. Each must be a no-op when the step it undoes never took effect."""

    RESTART_SOURCE = "restart_source"
    REMOVE_SOURCE_SNAPSHOT = "remove_source_snapshot"
    DISCARD_STAGING = "discard_staging"
    REMOVE_CONVERTED_IMAGE = "remove_converted_image"
    DETACH_TARGET_STORAGE = "detach_target_storage"
    REMOVE_TARGET_DOMAIN = "remove_target_domain"
    RESTORE_LOAD_BALANCER = "restore_load_balancer"
    RESTORE_DNS = "restore_dns"
    #: Pause the target's domains before the source restarts, so that while traffic moves
    #: back path by path only one side takes writes (registered above each traffic switch).
    FENCE_TARGET = "fence_target"
    #: Resume the fenced target when the source did not start (never registered: the
    #: rollback runs it so that the side holding the data serves while it is blocked).
    UNFENCE_TARGET = "unfence_target"
    #: With the target fenced, write what it wrote (its overlay) into the source's disks,
    #: so the source starts with the users' writes of the window (rollback.reverseSync).
    REVERSE_SYNC = "reverse_sync"


class FinalizeStep(StrEnum):
    """Run once the rollback window closes healthy: the source is retired for good."""

    REMOVE_SOURCE_SNAPSHOT = "remove_source_snapshot"
    DISCONNECT_SOURCE_NICS = "disconnect_source_nics"
    MARK_SOURCE_MIGRATED = "mark_source_migrated"
    RETIRE_SOURCE_FROM_LOAD_BALANCER = "retire_source_from_load_balancer"
    #: Put back the DNS TTL from before the cutover (lowered for the window).
    RESTORE_DNS_TTL = "restore_dns_ttl"
    #: Merge what the target wrote (its overlay) into its base while it runs (block commit
    #: and pivot), then remove the overlay: one file per disk, no chain left behind.
    COMMIT_TARGET_OVERLAY = "commit_target_overlay"


#: The activity that evaluates any check (pre-check, post-check or rollback criterion).
RUN_CHECK = "run_check"

#: Appends the finished workflow's record to the worker's hash-chained audit log.
APPEND_AUDIT_RECORD = "append_audit_record"

#: Read-only, before anything: the worker's own site for a workflow's `siteRef` (issue 13).
RESOLVE_SITE = "resolve_site"

#: Read-only, first of all: is the source already marked migrated (a finished cutover)?
#: Its result's details carry `migrated` (bool) and `evidence` (which VM, marks, when).
VERIFY_NOT_MIGRATED = "verify_not_migrated"

#: What undoes each step that changes the world. Steps absent here only read (smoke test,
#: driver validation) or write nothing outside the staging area the warm phase owns.
COMPENSATIONS: dict[str, Compensation] = {
    Step.QUIESCE_APPLICATION: Compensation.RESTART_SOURCE,
    Step.CONVERT_IMAGE: Compensation.REMOVE_CONVERTED_IMAGE,
    Step.ATTACH_TARGET_STORAGE_PROFILE: Compensation.DETACH_TARGET_STORAGE,
    Step.POWER_ON_TARGET: Compensation.REMOVE_TARGET_DOMAIN,
    Step.UPDATE_LOAD_BALANCER: Compensation.RESTORE_LOAD_BALANCER,
    Step.UPDATE_DNS: Compensation.RESTORE_DNS,
    WarmStep.SNAPSHOT_SOURCE: Compensation.REMOVE_SOURCE_SNAPSHOT,
    WarmStep.PRE_COPY: Compensation.DISCARD_STAGING,
}


class Holds(StrEnum):
    """What the world must look like before an undo may run (checked during unwinding)."""

    SOURCE_RUNNING = "the source runs"
    TRAFFIC_ON_SOURCE = "traffic is back on the source"
    TARGET_STOPPED = "the target no longer runs"
    TARGET_FENCED = "the target takes no writes"
    TARGET_WRITES_KEPT = "the target's writes are on the source"


#: Before each undo, what must hold. An undo that would destroy or stop something that may
#: be serving (the target, its data, the staged copies, the source's recovery point)
#: requires traffic back on a running source; traffic moves back only to a running source.
UNDO_REQUIRES: dict[str, frozenset[Holds]] = {
    # One writer: the source starts only once the target is fenced (when a fence is
    # registered: TARGET_FENCED is in doubt only when a fence failed or was held back).
    # Nor before what the target wrote is back on the source (when reverse sync is
    # registered): a source started without it would serve, and lose, older data.
    Compensation.RESTART_SOURCE: frozenset({Holds.TARGET_FENCED, Holds.TARGET_WRITES_KEPT}),
    Compensation.REVERSE_SYNC: frozenset({Holds.TARGET_FENCED}),
    Compensation.RESTORE_LOAD_BALANCER: frozenset({Holds.SOURCE_RUNNING}),
    Compensation.RESTORE_DNS: frozenset({Holds.SOURCE_RUNNING}),
    Compensation.REMOVE_TARGET_DOMAIN: frozenset({Holds.SOURCE_RUNNING, Holds.TRAFFIC_ON_SOURCE}),
    Compensation.DETACH_TARGET_STORAGE: frozenset(
        {Holds.SOURCE_RUNNING, Holds.TRAFFIC_ON_SOURCE, Holds.TARGET_STOPPED}
    ),
    Compensation.REMOVE_CONVERTED_IMAGE: frozenset(
        {Holds.SOURCE_RUNNING, Holds.TRAFFIC_ON_SOURCE, Holds.TARGET_STOPPED}
    ),
    Compensation.DISCARD_STAGING: frozenset(
        {Holds.SOURCE_RUNNING, Holds.TRAFFIC_ON_SOURCE, Holds.TARGET_STOPPED}
    ),
    Compensation.REMOVE_SOURCE_SNAPSHOT: frozenset({Holds.SOURCE_RUNNING, Holds.TRAFFIC_ON_SOURCE}),
}

#: What each undo makes hold once it succeeds; when it fails (or is skipped) that stays
#: in doubt for the rest of the unwinding.
UNDO_ESTABLISHES: dict[str, Holds] = {
    Compensation.RESTART_SOURCE: Holds.SOURCE_RUNNING,
    Compensation.RESTORE_LOAD_BALANCER: Holds.TRAFFIC_ON_SOURCE,
    Compensation.RESTORE_DNS: Holds.TRAFFIC_ON_SOURCE,
    Compensation.REMOVE_TARGET_DOMAIN: Holds.TARGET_STOPPED,
    Compensation.FENCE_TARGET: Holds.TARGET_FENCED,
    Compensation.REVERSE_SYNC: Holds.TARGET_WRITES_KEPT,
}


def undo_blocked_by(comp: str, in_doubt: set[Holds]) -> list[Holds]:
    """What keeps `comp` from running now (empty: it may run), in a stable order."""
    return sorted(UNDO_REQUIRES.get(comp, frozenset()) & in_doubt, key=list(Holds).index)


#: Steps that act on the target platform: none may run before `convert_image`.
TARGET_STEPS: frozenset[Step] = frozenset(
    {
        Step.ATTACH_TARGET_STORAGE_PROFILE,
        Step.VALIDATE_GUEST_TOOLS_AND_DRIVERS,
        Step.POWER_ON_TARGET,
        Step.SMOKE_TEST,
        Step.UPDATE_LOAD_BALANCER,
        Step.UPDATE_DNS,
    }
)

#: Traffic switches: the moment users reach the target.
TRAFFIC_STEPS: frozenset[Step] = frozenset({Step.UPDATE_LOAD_BALANCER, Step.UPDATE_DNS})

#: Built-in check names (the seed's, plus data consistency from the data path). A site's
#: check catalog may add more; a runbook may name only checks that are built in or bound.
PRE_CHECKS: frozenset[str] = frozenset(
    {
        "backup_success_last_24h",
        "target_monitoring_ready",
        "target_network_policy_validated",
        "dns_ttl_lowered",
        "migration_concerns",
    }
)
POST_CHECKS: frozenset[str] = frozenset(
    {
        "p95_latency_within_slo",
        "error_rate_below_threshold",
        "backup_job_succeeds",
        "alerting_signals_present",
        "data_consistency_confirmed",
    }
)
ROLLBACK_CRITERIA: frozenset[str] = frozenset(
    {
        "app_health_check_failure",
        "sustained_latency_regression",
        "target_backup_failure",
        "data_consistency_mismatch",
    }
)
BUILTIN_CHECKS: frozenset[str] = PRE_CHECKS | POST_CHECKS | ROLLBACK_CRITERIA


def ordering_errors(steps: list[str]) -> list[str]:
    """Return why an ordered list of known steps is unsafe to run (empty when it is sane)."""
    pos = {name: i for i, name in enumerate(steps)}
    errors: list[str] = []

    def must_follow(later: str, earlier: str, why: str) -> None:
        if later not in pos:
            return
        if earlier not in pos:
            errors.append(f"'{later}' needs '{earlier}' before it ({why})")
        elif pos[earlier] > pos[later]:
            errors.append(f"'{later}' must come after '{earlier}' ({why})")

    for step in sorted(TARGET_STEPS, key=lambda s: pos.get(s, -1)):
        must_follow(step, Step.CONVERT_IMAGE, "nothing runs on the target before conversion")
    must_follow(
        Step.POWER_ON_TARGET,
        Step.ATTACH_TARGET_STORAGE_PROFILE,
        "the target needs its storage before it boots",
    )
    must_follow(Step.SMOKE_TEST, Step.POWER_ON_TARGET, "a target must run before it is tested")
    for step in (Step.UPDATE_LOAD_BALANCER, Step.UPDATE_DNS):
        must_follow(step, Step.SMOKE_TEST, "traffic moves only to a target that passed")
    must_follow(
        Step.FINAL_DATA_SYNC,
        Step.QUIESCE_APPLICATION,
        "the last sync must see a source that no longer writes",
    )
    return errors
