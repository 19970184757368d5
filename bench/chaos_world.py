"""The chaos benchmark's world: what each cutover step does to an application, in SQLite.

One row per application holds its state (source VM, staged copy, converted image, target
volume and domain, where the load balancer and DNS send traffic); every worker process
opens the same file and changes a row in one `BEGIN IMMEDIATE` transaction, so a kill -9
lands either before or after a change, never half-way. Every activity is idempotent, as the
real adapters are (a retry finds the world already as wanted), and every change is judged
the moment it happens: a backend destroyed or stopped while traffic points at it, traffic
sent to a dead backend, two live backends taking traffic at once (two writers), ...

`AppState` and the functions on it are pure (the unit tests drive them directly);
`ChaosWorld` persists them and logs activity attempts for the stall measurements.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cutover.catalog import Compensation, FinalizeStep, Step, WarmStep

SOURCE = "source"
TARGET = "target"
#: DNS that is not switched by the runbook resolves to the load balancer's address.
VIA_LB = "lb"

#: How long a restarted source takes to pass its health checks.
BOOT_SECONDS = 0.5

VERIFY_NOT_MIGRATED = "verify_not_migrated"
RESTORE_DNS_TTL = "restore_dns_ttl"

#: Steps of the cutover proper (warm phase included) that change the world.
CUTOVER_CHANGING: frozenset[str] = frozenset(
    {
        WarmStep.SNAPSHOT_SOURCE,
        WarmStep.PRE_COPY,
        WarmStep.INCREMENTAL_SYNC,
        Step.QUIESCE_APPLICATION,
        Step.FINAL_DATA_SYNC,
        Step.CONVERT_IMAGE,
        Step.ATTACH_TARGET_STORAGE_PROFILE,
        Step.POWER_ON_TARGET,
        Step.UPDATE_LOAD_BALANCER,
        Step.UPDATE_DNS,
    }
)
#: Undo steps that only a rollback runs (remove_converted_image and discard_staging also
#: run at finalize, remove_source_snapshot is a finalize step too).
ROLLBACK_ONLY: frozenset[str] = frozenset(
    {
        Compensation.RESTART_SOURCE,
        Compensation.RESTORE_LOAD_BALANCER,
        Compensation.RESTORE_DNS,
        Compensation.REMOVE_TARGET_DOMAIN,
        Compensation.DETACH_TARGET_STORAGE,
        Compensation.FENCE_TARGET,
        Compensation.UNFENCE_TARGET,
        Compensation.REVERSE_SYNC,
    }
)
#: Steps that change the source or the traffic: none may run once a rollback gave the
#: application back to the source.
SOURCE_OR_TRAFFIC: frozenset[str] = frozenset(
    {
        Step.QUIESCE_APPLICATION,
        Step.UPDATE_LOAD_BALANCER,
        Step.UPDATE_DNS,
        FinalizeStep.DISCONNECT_SOURCE_NICS,
        FinalizeStep.MARK_SOURCE_MIGRATED,
        FinalizeStep.RETIRE_SOURCE_FROM_LOAD_BALANCER,
    }
)
#: Checks that measure the application through whatever serves it.
HEALTH_CHECKS: frozenset[str] = frozenset(
    {"app_health_check_failure", "p95_latency_within_slo", "error_rate_below_threshold"}
)

# Violation kinds, judged at the moment of a change ...
DESTROYED_WHILE_SERVING = "destroyed_while_serving"
STOPPED_WHILE_SERVING = "stopped_while_serving"
TRAFFIC_TO_DEAD_BACKEND = "traffic_to_dead_backend"
TWO_WRITERS = "two_writers"
OVERWROTE_SERVING_DATA = "overwrote_serving_data"
SYNC_OF_LIVE_SOURCE = "sync_of_live_source"
REMIGRATION = "remigration"
CHANGE_AFTER_ROLLBACK = "change_after_rollback"
CHANGE_AFTER_END = "change_after_end"
# ... and at the end of a cutover.
NOT_ONE_HEALTHY_BACKEND = "traffic_not_on_one_healthy_backend"
SOURCE_NOT_INTACT_AFTER_ROLLBACK = "source_not_intact_after_rollback"
OUTCOME_CONTRADICTS_WORLD = "outcome_contradicts_world"
#: ROLLED_BACK, and what users wrote on the target never reached the source
TARGET_WRITES_LOST = "target_writes_lost"
STATE_NOT_NAMED = "failed_state_not_named"
#: Not a violation: the application is down because the world refused restart_source.
EXPECTED_DOWN = "expected:down_restart_source_failed"
#: Not a violation: one traffic path is back on the source and the world refused to move
#: the other; it still reaches the fenced target (errors there, but one writer).
EXPECTED_PATH_TO_FENCED = "expected:path_to_fenced_target_restore_failed"


class Refused(Exception):
    """The world refuses a step the way the real adapter would (an ApplicationError)."""

    def __init__(
        self, type_: str, message: str, retryable: bool = False, wait: float = 0.0
    ) -> None:
        super().__init__(message)
        self.type = type_
        self.message = message
        self.retryable = retryable
        #: retryable refusals the real adapter waits out within one attempt (a booting VM)
        self.wait = wait


@dataclass(frozen=True)
class Violation:
    kind: str
    app: str
    step: str
    run: str
    detail: str


@dataclass(frozen=True)
class Plan:
    """What the bench does to one application (immutable, chosen before the run)."""

    app: str
    scenario: str
    dns: bool = False
    #: a rollback criterion fails from this window round on (1 = the first)
    criterion_from_round: int | None = None
    #: an undo step that fails on every attempt
    broken_undo: str | None = None
    precheck_fail: str | None = None


@dataclass
class AppState:
    app: str
    #: the runbook switches DNS; otherwise DNS names the load balancer's address
    dns_moves: bool = False
    src_power: bool = True
    src_boot_until: float = 0.0
    src_nics: bool = True
    src_marked_by: str | None = None
    #: writes the application made on each backend (one per world event while it serves)
    src_writes: int = 0
    tgt_writes: int = 0
    #: source writes taken while the target also took traffic (split brain)
    src_split_writes: int = 0
    snapshot: bool = False
    staging: bool = False
    staging_of: int | None = None
    converted: bool = False
    converted_of: int | None = None
    tgt_volume: bool = False
    tgt_volume_of: int | None = None
    tgt_defined: bool = False
    tgt_running: bool = False
    #: paused by fence_target: takes no writes, answers nothing, keeps memory and disks
    tgt_fenced: bool = False
    #: target writes reverse sync has put on the source
    tgt_synced: int = 0
    lb: str = SOURCE
    lb_source_retired: bool = False
    dns: str = SOURCE
    #: what update_dns replaced (the real one keeps it in the zone, so a retry finds it)
    dns_prior: str | None = None
    #: runs whose rollback began / gave the application back to the source
    rolling_back: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    #: runs the bench saw end (their outcome is final)
    ended: list[str] = field(default_factory=list)
    #: per run and check name: evaluations so far ("run|name" -> n)
    check_rounds: dict[str, int] = field(default_factory=dict)
    #: runs that changed anything (a FAILED one must then say what serves)
    changed_by: list[str] = field(default_factory=list)
    #: the operator fixed the plan's broken undo step (it succeeds from now on)
    undo_repaired: bool = False
    changes: int = 0

    @classmethod
    def initial(cls, app: str, dns_moves: bool) -> AppState:
        return cls(app=app, dns_moves=dns_moves, dns=SOURCE if dns_moves else VIA_LB)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> AppState:
        return cls(**json.loads(text))

    def copy(self) -> AppState:
        return AppState.from_json(self.to_json())

    # -------------------------------------------------------------- backends

    def exists(self, backend: str) -> bool:
        return True if backend == SOURCE else self.tgt_defined and self.tgt_volume

    def running(self, backend: str) -> bool:
        """Up and reachable on the network (a booting source counts: it is coming up)."""
        if backend == SOURCE:
            return self.src_power and self.src_nics
        return self.tgt_defined and self.tgt_running and self.tgt_volume and not self.tgt_fenced

    def healthy(self, backend: str, now: float) -> bool:
        if backend == SOURCE:
            return self.running(SOURCE) and now >= self.src_boot_until
        return self.running(TARGET)

    def served(self) -> set[str]:
        """The backends traffic reaches: through the load balancer, and through DNS."""
        return {self.lb, self.lb if self.dns == VIA_LB else self.dns}

    def serving_healthy(self, now: float) -> bool:
        served = self.served()
        return len(served) == 1 and self.healthy(next(iter(served)), now)

    def summary(self) -> dict[str, Any]:
        return {
            "served": sorted(self.served()),
            "lb": self.lb,
            "dns": self.dns,
            "source": ("on" if self.src_power else "off")
            + ("" if self.src_nics else ", NICs disconnected")
            + (f", marked migrated by {self.src_marked_by}" if self.src_marked_by else ""),
            "target": (
                (
                    "fenced"
                    if self.tgt_running and self.tgt_fenced
                    else "running"
                    if self.tgt_running
                    else "defined"
                    if self.tgt_defined
                    else "absent"
                )
                + (", volume" if self.tgt_volume else ", no volume")
            ),
            "leftovers": [
                n
                for n, present in (
                    ("snapshot", self.snapshot),
                    ("staging", self.staging),
                    ("converted image", self.converted),
                )
                if present
            ],
        }


@dataclass
class Applied:
    changed: bool
    facts: dict[str, str] = field(default_factory=dict)
    details: dict[str, str | int | float | bool] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)


# ------------------------------------------------------------------ transitions


def _tick(s: AppState, now: float) -> None:
    """The application writes through whatever serves it, once per world event."""
    live = [b for b in sorted(s.served()) if s.healthy(b, now)]
    for b in live:
        if b == SOURCE:
            s.src_writes += 1
        else:
            s.tgt_writes += 1
    if len(live) == 2:
        s.src_split_writes += 1


def _transition(s: AppState, step: str, who: str, now: float) -> Applied:
    """Change `s` as the real step would; raise Refused where the real adapter would."""
    facts: dict[str, str] = {}
    details: dict[str, str | int | float | bool] = {}
    changed = True
    if step == WarmStep.SNAPSHOT_SOURCE:
        changed = not s.snapshot
        s.snapshot = True
    elif step in (WarmStep.PRE_COPY, WarmStep.INCREMENTAL_SYNC):
        # the warm phase copies a live source: the final sync catches up later
        changed = not (s.staging and s.staging_of == s.src_writes)
        s.staging, s.staging_of = True, s.src_writes
    elif step == Step.QUIESCE_APPLICATION:
        details["wasPoweredOn"] = s.src_power
        changed = s.src_power
        s.src_power = False
    elif step == Step.FINAL_DATA_SYNC:
        changed = not (s.staging and s.staging_of == s.src_writes)
        s.staging, s.staging_of = True, s.src_writes
    elif step == Step.CONVERT_IMAGE:
        if not s.staging:
            raise Refused("InvalidState", "nothing staged to convert")
        changed = not (s.converted and s.converted_of == s.staging_of)
        s.converted, s.converted_of = True, s.staging_of
    elif step == Step.ATTACH_TARGET_STORAGE_PROFILE:
        if not s.converted:
            raise Refused("InvalidState", "no converted image to attach")
        # the same copy, not yet written to by the target: an idempotent re-run
        changed = not (s.tgt_volume and s.tgt_volume_of == s.converted_of and s.tgt_writes == 0)
        if changed:
            s.tgt_volume, s.tgt_volume_of = True, s.converted_of
            s.tgt_writes = s.tgt_synced = 0
    elif step == Step.VALIDATE_GUEST_TOOLS_AND_DRIVERS:
        if not (s.tgt_volume or s.converted):
            raise Refused("InvalidState", "no target image to validate")
        changed = False
    elif step == Step.POWER_ON_TARGET:
        if not s.tgt_volume:
            raise Refused("InvalidState", "the target has no volume to boot from")
        changed = not (s.tgt_defined and s.tgt_running)
        s.tgt_defined = s.tgt_running = True
        facts["target_address"] = "10.77.0.10:8080"
    elif step == Step.SMOKE_TEST:
        if not s.healthy(TARGET, now):
            raise Refused("SmokeTestFailed", "the target does not answer")
        changed = False
    elif step == Step.UPDATE_LOAD_BALANCER:
        changed = s.lb != TARGET
        if changed and not s.healthy(TARGET, now):
            raise Refused("TargetUnhealthy", "the target never became healthy; source serves")
        s.lb = TARGET
    elif step == Step.UPDATE_DNS:
        changed = s.dns != TARGET
        if changed:
            s.dns_prior, s.dns = s.dns, TARGET
        details["previous"] = s.dns_prior or ""
    elif step == Compensation.RESTORE_DNS:
        changed = s.dns == TARGET
        if changed:
            if s.dns_prior is None:
                raise Refused("ConfigError", "DNS points at the target; previous value unknown")
            s.dns = s.dns_prior
    elif step == Compensation.RESTART_SOURCE:
        changed = not s.src_power
        if changed:
            s.src_power = True
            s.src_boot_until = now + BOOT_SECONDS
    elif step == Compensation.RESTORE_LOAD_BALANCER:
        changed = s.lb != SOURCE
        if changed and not s.healthy(SOURCE, now):
            booting = s.running(SOURCE)
            raise Refused(
                "SourceUnhealthy",
                "the source " + ("is still booting" if booting else "is down"),
                retryable=True,
                wait=max(0.0, s.src_boot_until - now) if booting else 0.0,
            )
        s.lb = SOURCE
    elif step == Compensation.REMOVE_TARGET_DOMAIN:
        changed = s.tgt_defined
        s.tgt_defined = s.tgt_running = s.tgt_fenced = False
    elif step == Compensation.FENCE_TARGET:
        changed = s.tgt_running and not s.tgt_fenced
        s.tgt_fenced = s.tgt_running
    elif step == Compensation.REVERSE_SYNC:
        if s.src_power:  # the real sink refuses to write under a running guest
            raise Refused("InvalidState", "the source is powered on: no write-back under it")
        changed = s.tgt_synced != s.tgt_writes
        s.tgt_synced = s.tgt_writes
    elif step == Compensation.UNFENCE_TARGET:
        changed = s.tgt_fenced
        s.tgt_fenced = False
    elif step == Compensation.DETACH_TARGET_STORAGE:
        changed = s.tgt_volume
        s.tgt_volume, s.tgt_volume_of = False, None
    elif step == Compensation.REMOVE_CONVERTED_IMAGE:
        changed = s.converted
        s.converted, s.converted_of = False, None
    elif step == Compensation.DISCARD_STAGING:
        changed = s.staging
        s.staging, s.staging_of = False, None
    elif step == FinalizeStep.REMOVE_SOURCE_SNAPSHOT:
        changed = s.snapshot
        s.snapshot = False
    elif step == FinalizeStep.RETIRE_SOURCE_FROM_LOAD_BALANCER:
        # re-applies the switch first, should a reload have put traffic back on the source
        if s.lb != TARGET and not s.healthy(TARGET, now):
            raise Refused("TargetUnhealthy", "cannot retire the source: the target is down")
        changed = s.lb != TARGET or not s.lb_source_retired
        s.lb, s.lb_source_retired = TARGET, True
    elif step == FinalizeStep.DISCONNECT_SOURCE_NICS:
        changed = s.src_nics
        s.src_nics = False
    elif step == FinalizeStep.MARK_SOURCE_MIGRATED:
        changed = s.src_marked_by is None
        s.src_marked_by = s.src_marked_by or who
    elif step == VERIFY_NOT_MIGRATED:
        changed = False
        details["migrated"] = s.src_marked_by is not None
        details["evidence"] = (
            f"source marked cutover.migratedTo by {s.src_marked_by}" if s.src_marked_by else ""
        )
    elif step == FinalizeStep.COMMIT_TARGET_OVERLAY:
        changed = False  # the target's disk chain is not modelled: it serves on as it was
    elif step == RESTORE_DNS_TTL:
        changed = False  # TTLs are not modelled: traffic does not move
    else:
        # a step added to the workflow after this model: the bench lists it
        changed = False
        details["unmodelled"] = True
    return Applied(changed, facts, details)


def _judge(before: AppState, after: AppState, step: str, run: str) -> list[tuple[str, str]]:
    """What a change did that the cutover promises never happens: (kind, detail) pairs."""
    found: list[tuple[str, str]] = []
    for b in sorted(before.served()):
        if before.exists(b) and not after.exists(b):
            found.append((DESTROYED_WHILE_SERVING, f"{b} destroyed while traffic reached it"))
        elif (
            before.running(b)
            and not after.running(b)
            # the planned downtimes: the cutover's, and the rollback's (one writer)
            and not (step == Step.QUIESCE_APPLICATION and b == SOURCE)
            and not (step == Compensation.FENCE_TARGET and b == TARGET)
        ):
            found.append((STOPPED_WHILE_SERVING, f"{b} taken down while traffic reached it"))
    if after.served() != before.served() or step in (
        Step.UPDATE_LOAD_BALANCER,
        Step.UPDATE_DNS,
        Compensation.RESTORE_LOAD_BALANCER,
        Compensation.RESTORE_DNS,
    ):
        dead = [b for b in sorted(after.served() - before.served()) if not after.running(b)]
        if dead:
            found.append((TRAFFIC_TO_DEAD_BACKEND, f"traffic sent to {', '.join(dead)}: down"))
    live = [b for b in sorted(after.served()) if after.running(b)]
    if len(live) == 2:
        found.append(
            (TWO_WRITERS, f"LB -> {after.lb}, DNS -> {after.dns}: both backends take writes")
        )
    if (
        step == Step.ATTACH_TARGET_STORAGE_PROFILE
        and before.tgt_volume
        and TARGET in (before.served())
    ):
        found.append(
            (OVERWROTE_SERVING_DATA, f"the serving target's volume ({before.tgt_writes} writes) "
             "replaced by a copy of the source")
        )  # fmt: skip
    if step == Step.FINAL_DATA_SYNC and SOURCE in before.served() and before.running(SOURCE):
        found.append((SYNC_OF_LIVE_SOURCE, "final sync of a source that still takes writes"))
    if step in CUTOVER_CHANGING and before.src_marked_by is not None:
        found.append((REMIGRATION, f"cutover step on a source marked migrated by "
                      f"{before.src_marked_by}"))  # fmt: skip
    if step in SOURCE_OR_TRAFFIC and run in before.restored:
        found.append((CHANGE_AFTER_ROLLBACK, "source or traffic changed after the rollback "
                      "gave the application back to the source"))  # fmt: skip
    if run in before.ended:
        found.append((CHANGE_AFTER_END, "changed by a cutover that had already ended"))
    return found


def apply_step(s: AppState, step: str, run: str, who: str, now: float) -> Applied:
    """Apply `step` for workflow run `run` to `s` (in place) and judge the change.

    Raises Refused (leaving `s` untouched) where the real adapter would refuse.
    """
    _tick(s, now)
    before = s.copy()
    try:
        applied = _transition(s, step, who, now)
    except Refused:
        for f in dataclasses.fields(AppState):  # nothing changed but the writes meanwhile
            setattr(s, f.name, getattr(before, f.name))
        raise
    if step in ROLLBACK_ONLY and run not in s.rolling_back:
        s.rolling_back.append(run)
    if run in s.rolling_back and run not in s.restored and s.served() == {SOURCE}:
        s.restored.append(run)
    if applied.changed:
        s.changes += 1
        if run not in s.changed_by:
            s.changed_by.append(run)
        applied.violations = [
            Violation(kind, s.app, step, run, detail)
            for kind, detail in _judge(before, s, step, run)
        ]
    return applied


def evaluate_check(
    s: AppState, plan: Plan, name: str, phase: str, run: str, now: float
) -> tuple[bool, str]:
    """A check's verdict from the world (and the plan's injected criterion failure)."""
    _tick(s, now)
    key = f"{run}|{name}"
    s.check_rounds[key] = n = s.check_rounds.get(key, 0) + 1
    if phase == "pre":
        if name == plan.precheck_fail:
            return False, "failing (planned)"
        return True, "ok"
    if (
        name == "app_health_check_failure"
        and plan.criterion_from_round is not None
        and n >= plan.criterion_from_round
    ):
        return False, f"health probe failing from round {plan.criterion_from_round} (planned)"
    if name in HEALTH_CHECKS and not s.serving_healthy(now):
        return False, f"traffic reaches {sorted(s.served())}, not one healthy backend"
    return True, "ok"


def _not_serving(s: AppState, refused: frozenset[str]) -> list[tuple[str, str]]:
    """Traffic must reach exactly one backend, and it must be up (a source still booting
    after its restart counts as up: nothing waits for it to pass health checks).

    Excused (kinds `expected:*`, not violations), where the world refused an undo step
    (`refused`: the run's last attempt of it failed before changing anything, broken for
    good or an injected non-retryable fault) and no workflow can do better until someone
    fixes that:
    - traffic reaches only the source, down because restart_source was refused;
    - one path is back on the running source and the other still reaches the fenced
      target, because moving it back was refused (errors there, but one writer)."""
    served = sorted(s.served())
    if len(served) == 1 and s.running(served[0]):
        return []
    health = ", ".join(f"{b} {'up' if s.running(b) else 'down'}" for b in served)
    if served == [SOURCE] and Compensation.RESTART_SOURCE in refused:
        return [(EXPECTED_DOWN, f"traffic reaches {served}: {health}; restart_source failed")]
    traffic_undos = {Compensation.RESTORE_LOAD_BALANCER, Compensation.RESTORE_DNS}
    if (
        served == [SOURCE, TARGET]
        and s.running(SOURCE)
        and s.tgt_fenced
        and s.exists(TARGET)
        and refused & traffic_undos
    ):
        which = ", ".join(sorted(refused & traffic_undos))
        return [(EXPECTED_PATH_TO_FENCED, f"traffic reaches {served}: {health}; {which} failed")]
    return [(NOT_ONE_HEALTHY_BACKEND, f"traffic reaches {served}: {health}")]


def blocked_violations(
    s: AppState, phase: str, run: str, refused: frozenset[str] = frozenset()
) -> list[Violation]:
    """A cutover waiting for an operator (a blocked rollback or finalize) must leave the
    application served by exactly one healthy backend meanwhile."""
    return [Violation(k, s.app, f"({phase})", run, d) for k, d in _not_serving(s, refused)]


def final_violations(
    s: AppState,
    outcome: str,
    left_where: Iterable[str],
    run: str,
    refused: frozenset[str] = frozenset(),
) -> list[Violation]:
    """The invariants once a cutover ended (or was given up on as stuck)."""
    found = _not_serving(s, refused)
    served = sorted(s.served())
    if outcome == "ROLLED_BACK":
        problems = [
            p
            for p, bad in (
                ("powered off", not s.src_power),
                ("NICs disconnected", not s.src_nics),
                (f"marked migrated by {s.src_marked_by}", s.src_marked_by is not None),
                (f"{s.src_split_writes} writes taken beside the target", s.src_split_writes > 0),
            )
            if bad
        ]
        if problems:
            found.append((SOURCE_NOT_INTACT_AFTER_ROLLBACK, "source " + ", ".join(problems)))
        if served != [SOURCE]:
            found.append((OUTCOME_CONTRADICTS_WORLD, f"ROLLED_BACK but traffic reaches {served}"))
        if s.tgt_writes > s.tgt_synced:
            found.append((TARGET_WRITES_LOST, f"{s.tgt_writes - s.tgt_synced} of the target's "
                          f"{s.tgt_writes} writes never reached the source"))  # fmt: skip
    elif outcome == "COMPLETED" and served != [TARGET]:
        found.append((OUTCOME_CONTRADICTS_WORLD, f"COMPLETED but traffic reaches {served}"))
    elif outcome == "FAILED" and len(served) == 1 and run in s.changed_by:
        # "the state named": the result must say which side serves (words, not structure);
        # a cutover that changed nothing may just say so
        text = " ".join(left_where).lower()
        if served[0] not in text:
            found.append(
                (STATE_NOT_NAMED, f"{served[0]} serves; leftWhere does not say so: "
                 f"{list(left_where)}")
            )  # fmt: skip
    return [Violation(k, s.app, "(end)", run, d) for k, d in found]


# -------------------------------------------------------------- fault injection


@dataclass(frozen=True)
class Fault:
    type: str  # "Transient" (retryable) or "InvalidState" (non-retryable)
    after: bool  # raised after the world change landed

    @property
    def retryable(self) -> bool:
        return self.type == "Transient"


def roll(seed: int, *key: object) -> random.Random:
    """A generator for one decision, the same in whichever worker process makes it."""
    digest = hashlib.sha256(":".join(map(str, (seed, *key))).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def fault_for(
    seed: int, workflow_id: str, activity_id: str, attempt: int, p: float, check: bool = False
) -> Fault | None:
    """The fault injected into one activity attempt, if any (p per attempt).

    Checks only get retryable faults: a check that errors counts as failed, and a
    rollback criterion failing on every injected error would roll back most cutovers.
    """
    rng = roll(seed, "fault", workflow_id, activity_id, attempt)
    if rng.random() >= p:
        return None
    if check:
        return Fault("Transient", after=False)
    retryable = rng.random() < 0.6
    return Fault("Transient" if retryable else "InvalidState", after=rng.random() < 0.5)


# -------------------------------------------------------------------- SQLite


_SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (app TEXT PRIMARY KEY, plan TEXT NOT NULL, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS violations (
    id INTEGER PRIMARY KEY, at REAL, app TEXT, run TEXT, step TEXT, kind TEXT, detail TEXT,
    UNIQUE (app, run, step, kind));
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY, workflow_id TEXT, run TEXT, activity_id TEXT, step TEXT,
    attempt INTEGER, app TEXT, pid INTEGER, first_scheduled_at REAL, scheduled_at REAL,
    started_at REAL, ended_at REAL, outcome TEXT);
CREATE TABLE IF NOT EXISTS unknown_activities (name TEXT, at REAL, workflow_id TEXT);
"""


class ChaosWorld:
    """The shared world file. One connection per process; each change is one transaction."""

    def __init__(self, path: Path, seed: int = 0) -> None:
        self.path = path
        self.seed = seed
        self.db = sqlite3.connect(path, timeout=60, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self._plans: dict[str, Plan] = {}

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def add(self, plan: Plan) -> None:
        state = AppState.initial(plan.app, plan.dns)
        with self._tx() as db:
            db.execute(
                "INSERT INTO apps VALUES (?, ?, ?)",
                (plan.app, json.dumps(dataclasses.asdict(plan)), state.to_json()),
            )

    def plan(self, app: str) -> Plan:
        if app not in self._plans:
            row = self.db.execute("SELECT plan FROM apps WHERE app = ?", (app,)).fetchone()
            if row is None:
                raise KeyError(f"the chaos world has no application {app}")
            self._plans[app] = Plan(**json.loads(row[0]))
        return self._plans[app]

    def state(self, app: str) -> AppState:
        row = self.db.execute("SELECT state FROM apps WHERE app = ?", (app,)).fetchone()
        if row is None:
            raise KeyError(f"the chaos world has no application {app}")
        return AppState.from_json(row[0])

    def _load(self, db: sqlite3.Connection, app: str) -> AppState:
        row = db.execute("SELECT state FROM apps WHERE app = ?", (app,)).fetchone()
        if row is None:
            raise Refused("NotFound", f"the chaos world has no application {app}")
        return AppState.from_json(row[0])

    def _save(self, db: sqlite3.Connection, s: AppState, found: list[Violation]) -> None:
        db.execute("UPDATE apps SET state = ? WHERE app = ?", (s.to_json(), s.app))
        db.executemany(
            "INSERT OR IGNORE INTO violations (at, app, run, step, kind, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(time.time(), v.app, v.run, v.step, v.kind, v.detail) for v in found],
        )

    def apply(self, app: str, step: str, run: str, who: str) -> Applied:
        with self._tx() as db:
            s = self._load(db, app)
            try:
                applied = apply_step(s, step, run, who, time.time())
            except Refused:
                self._save(db, s, [])  # the writes that happened meanwhile
                raise
            self._save(db, s, applied.violations)
        return applied

    def check(self, app: str, name: str, phase: str, run: str) -> tuple[bool, str]:
        plan = self.plan(app)
        with self._tx() as db:
            s = self._load(db, app)
            verdict = evaluate_check(s, plan, name, phase, run, time.time())
            self._save(db, s, [])
        return verdict

    def end_run(self, app: str, run: str, outcome: str, left_where: list[str]) -> list[Violation]:
        """The bench saw `run` end with `outcome`: judge the end state, remember the end."""
        with self._tx() as db:
            s = self._load(db, app)
            found = final_violations(s, outcome, left_where, run, self._refused(db, app, run))
            if run not in s.ended:
                s.ended.append(run)
            self._save(db, s, found)
        return found

    @staticmethod
    def _refused(db: sqlite3.Connection, app: str, run: str) -> frozenset[str]:
        """The undo steps whose last attempt in this run failed before the change."""
        found = set()
        for step in (
            Compensation.RESTART_SOURCE,
            Compensation.RESTORE_LOAD_BALANCER,
            Compensation.RESTORE_DNS,
        ):
            row = db.execute(
                "SELECT outcome FROM attempts WHERE app = ? AND run = ? AND step = ? "
                "AND ended_at IS NOT NULL ORDER BY id DESC LIMIT 1",
                (app, run, step.value),
            ).fetchone()
            outcome = str(row[0]) if row else ""
            if outcome == "broken" or outcome.startswith(("fault-before:", "refused:")):
                found.add(step.value)
        return frozenset(found)

    def judge_blocked(self, app: str, run: str, phase: str) -> list[Violation]:
        with self._tx() as db:
            s = self._load(db, app)
            found = blocked_violations(s, phase, run, self._refused(db, app, run))
            self._save(db, s, found)
        return found

    def repair(self, app: str) -> None:
        """The operator fixes what broke the undo step (before resuming)."""
        with self._tx() as db:
            s = self._load(db, app)
            s.undo_repaired = True
            self._save(db, s, [])

    def violations(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT at, app, run, step, kind, detail FROM violations ORDER BY id")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    # ------------------------------------------------------------ attempts log

    def attempt_started(
        self,
        workflow_id: str,
        run: str,
        activity_id: str,
        step: str,
        attempt: int,
        app: str,
        pid: int,
        first_scheduled_at: float,
        scheduled_at: float,
    ) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO attempts (workflow_id, run, activity_id, step, attempt, app, pid, "
                "first_scheduled_at, scheduled_at, started_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (workflow_id, run, activity_id, step, attempt, app, pid, first_scheduled_at,
                 scheduled_at, time.time()),
            )  # fmt: skip
            return int(cur.lastrowid or 0)

    def attempt_ended(self, attempt_id: int, outcome: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE attempts SET ended_at = ?, outcome = ? WHERE id = ?",
                (time.time(), outcome, attempt_id),
            )

    def attempts(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT * FROM attempts ORDER BY id")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def unknown_activity(self, name: str, workflow_id: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO unknown_activities VALUES (?, ?, ?)", (name, time.time(), workflow_id)
            )

    def unknown_activities(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT name FROM unknown_activities")]


def lost_attempt_waits(
    attempts: list[dict[str, Any]], now: float, run_ended: dict[str, float]
) -> list[dict[str, Any]]:
    """How long activities waited on attempts that died with their worker (or whose
    completion was lost): from a lost attempt's start to the next attempt's start, or, when
    none came, to the end of its workflow run (`run_ended`, else `now`). An attempt the log
    never saw (a task handed to a dead poller) counts from the activity's first scheduling."""
    by_activity: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for a in attempts:
        by_activity.setdefault((a["run"], a["activity_id"]), []).append(a)
    waits: list[dict[str, Any]] = []
    for rows in by_activity.values():
        rows.sort(key=lambda a: (a["attempt"], a["started_at"]))
        prev: dict[str, Any] | None = None
        for a in rows:
            lost_from: float | None = None
            cause = ""
            if prev is None and a["attempt"] > 1:
                lost_from, cause = a["first_scheduled_at"], "attempts never seen by a worker"
            elif prev is not None and prev["ended_at"] is None:
                lost_from, cause = prev["started_at"], "worker killed mid-attempt"
            elif prev is not None and prev["outcome"] == "ok":
                lost_from, cause = prev["ended_at"], "completion lost"
            elif prev is not None and a["attempt"] > prev["attempt"] + 1:
                lost_from, cause = prev["ended_at"], "attempt never seen by a worker"
            if lost_from is not None:
                waits.append(_wait(a, lost_from, a["started_at"], cause))
            prev = a
        if prev is not None and prev["ended_at"] is None:
            end = run_ended.get(prev["run"], now)
            if end > prev["started_at"]:
                waits.append(_wait(prev, prev["started_at"], end, "no attempt after a dead one"))
    waits.sort(key=lambda w: -w["seconds"])
    return waits


def _wait(a: dict[str, Any], start: float, end: float, cause: str) -> dict[str, Any]:
    return {
        "app": a["app"],
        "step": a["step"],
        "attempt": a["attempt"],
        "seconds": round(end - start, 2),
        "cause": cause,
        "run": a["run"],
    }
