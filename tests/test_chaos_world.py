"""The chaos benchmark's world model (bench.chaos_world): transitions and invariant detection.

Pure logic over a real SQLite file; no Temporal. Each test drives the world through the
steps a cutover (or a broken rollback) would run and checks what the world recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import chaos_world
from bench.chaos_world import (
    CHANGE_AFTER_END,
    CHANGE_AFTER_ROLLBACK,
    DESTROYED_WHILE_SERVING,
    EXPECTED_DOWN,
    EXPECTED_PATH_TO_FENCED,
    NOT_ONE_HEALTHY_BACKEND,
    OUTCOME_CONTRADICTS_WORLD,
    OVERWROTE_SERVING_DATA,
    REMIGRATION,
    SOURCE,
    SOURCE_NOT_INTACT_AFTER_ROLLBACK,
    STATE_NOT_NAMED,
    STOPPED_WHILE_SERVING,
    TARGET,
    TARGET_WRITES_LOST,
    TRAFFIC_TO_DEAD_BACKEND,
    TWO_WRITERS,
    VERIFY_NOT_MIGRATED,
    ChaosWorld,
    Plan,
    Refused,
    fault_for,
    lost_attempt_waits,
)

RUN = "run-1"
FORWARD = [
    "snapshot_source",
    "pre_copy",
    "quiesce_application",
    "final_data_sync",
    "convert_image",
    "attach_target_storage_profile",
    "validate_guest_tools_and_drivers",
    "power_on_target",
    "smoke_test",
    "update_load_balancer",
]
FINALIZE = [
    "retire_source_from_load_balancer",
    "remove_source_snapshot",
    "disconnect_source_nics",
    "mark_source_migrated",
    "remove_converted_image",
    "discard_staging",
]


@pytest.fixture
def world(tmp_path: Path) -> ChaosWorld:
    return ChaosWorld(tmp_path / "world.db", seed=1)


def add(world: ChaosWorld, app: str = "shop", dns: bool = False, **plan: object) -> str:
    world.add(Plan(app, "test", dns, **plan))  # type: ignore[arg-type]
    return app


def run(world: ChaosWorld, app: str, steps: list[str], run: str = RUN) -> None:
    for step in steps:
        world.apply(app, step, run, f"wf/{run}")


def kinds(world: ChaosWorld) -> list[str]:
    return [v["kind"] for v in world.violations()]


def test_a_clean_cutover_and_finalize_record_no_violation(world: ChaosWorld) -> None:
    app = add(world, dns=True)
    run(world, app, [*FORWARD, "update_dns", *FINALIZE])
    state = world.state(app)
    assert state.served() == {TARGET}
    assert state.src_marked_by == f"wf/{RUN}" and not state.src_nics
    assert world.end_run(app, RUN, "COMPLETED", ["the target serves"]) == []
    assert kinds(world) == []


def test_steps_are_idempotent_a_retry_after_the_change_landed_changes_nothing(
    world: ChaosWorld,
) -> None:
    app = add(world, dns=True)
    for step in [*FORWARD, "update_dns"]:
        first = world.apply(app, step, RUN, "wf")
        again = world.apply(app, step, RUN, "wf")
        if step == "pre_copy":
            continue  # the source served meanwhile: its new writes are copied again
        assert not again.changed, f"{step} changed the world twice (first: {first.changed})"
    assert kinds(world) == []


def test_a_clean_rollback_leaves_the_source_serving_and_intact(
    world: ChaosWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chaos_world, "BOOT_SECONDS", 0.0)
    app = add(world)
    run(world, app, FORWARD)
    undo = [
        "fence_target",
        "reverse_sync",
        "restart_source",
        "restore_load_balancer",
        "remove_target_domain",
        "detach_target_storage",
        "remove_converted_image",
        "discard_staging",
        "remove_source_snapshot",
    ]
    run(world, app, undo)
    assert world.state(app).served() == {SOURCE}
    assert world.end_run(app, RUN, "ROLLED_BACK", ["the source serves the application"]) == []
    assert kinds(world) == []


def test_removing_the_target_while_traffic_reaches_it_is_recorded_at_once(
    world: ChaosWorld,
) -> None:
    # today's compensations go on after restore_load_balancer failed for good
    app = add(world)
    run(world, app, [*FORWARD, "restart_source", "remove_target_domain"])
    assert kinds(world) == [DESTROYED_WHILE_SERVING]
    (v,) = world.violations()
    assert v["step"] == "remove_target_domain" and v["app"] == app
    end = world.end_run(app, RUN, "FAILED", ["rollback incomplete: restore_load_balancer"])
    assert {x.kind for x in end} == {NOT_ONE_HEALTHY_BACKEND, STATE_NOT_NAMED}


def test_deleting_the_serving_targets_volume_is_destroying_it(world: ChaosWorld) -> None:
    app = add(world)
    run(world, app, [*FORWARD, "detach_target_storage"])
    assert kinds(world) == [DESTROYED_WHILE_SERVING]


def test_disconnecting_the_source_nics_while_it_serves_is_recorded(world: ChaosWorld) -> None:
    # finalize going on after retire_source_from_load_balancer failed on a reloaded LB
    app = add(world)
    run(world, app, ["disconnect_source_nics"])
    assert kinds(world) == [STOPPED_WHILE_SERVING]


def test_the_planned_quiesce_is_downtime_not_a_violation(world: ChaosWorld) -> None:
    app = add(world)
    run(world, app, ["quiesce_application"])
    assert kinds(world) == []


def test_restore_dns_with_the_lb_still_on_the_target_is_two_writers(world: ChaosWorld) -> None:
    app = add(world, dns=True)
    run(world, app, [*FORWARD, "update_dns", "restart_source", "restore_dns"])
    assert kinds(world) == [TWO_WRITERS]


def test_restoring_dns_to_a_source_that_never_restarted_sends_traffic_to_a_dead_backend(
    world: ChaosWorld,
) -> None:
    # restart_source failed for good, the rollback went on
    app = add(world, dns=True)
    run(world, app, [*FORWARD, "update_dns", "restore_dns"])
    assert kinds(world) == [TRAFFIC_TO_DEAD_BACKEND]


def test_restore_load_balancer_refuses_a_source_that_is_down_or_booting(
    world: ChaosWorld,
) -> None:
    app = add(world)
    run(world, app, FORWARD)
    with pytest.raises(Refused) as down:
        world.apply(app, "restore_load_balancer", RUN, "wf")
    assert down.value.type == "SourceUnhealthy" and down.value.retryable
    assert down.value.wait == 0
    run(world, app, ["restart_source"])
    with pytest.raises(Refused) as booting:
        world.apply(app, "restore_load_balancer", RUN, "wf")
    assert booting.value.wait > 0  # the real one waits for the health checks
    assert world.state(app).lb == TARGET  # a refusal changes nothing
    assert kinds(world) == []


def test_a_second_cutover_of_a_migrated_application_is_recorded(world: ChaosWorld) -> None:
    app = add(world)
    run(world, app, [*FORWARD, *FINALIZE])
    assert world.apply(app, VERIFY_NOT_MIGRATED, "run-2", "wf2").details["migrated"] is True
    run(world, app, FORWARD, run="run-2")
    assert set(kinds(world)) == {REMIGRATION, OVERWROTE_SERVING_DATA}


def test_changing_the_source_after_the_rollback_gave_it_back_is_recorded(
    world: ChaosWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chaos_world, "BOOT_SECONDS", 0.0)
    app = add(world)
    run(world, app, [*FORWARD, "fence_target", "reverse_sync", "restart_source"])
    run(world, app, ["restore_load_balancer"])
    state = world.state(app)
    assert state.rolling_back == [RUN] and state.restored == [RUN]
    # a stale finalize attempt of the same run landing after the rollback
    run(world, app, ["disconnect_source_nics"])
    assert kinds(world) == [STOPPED_WHILE_SERVING, CHANGE_AFTER_ROLLBACK]
    end = world.end_run(app, RUN, "ROLLED_BACK", ["the source serves"])
    assert {v.kind for v in end} == {SOURCE_NOT_INTACT_AFTER_ROLLBACK, NOT_ONE_HEALTHY_BACKEND}


def test_a_change_by_a_cutover_that_already_ended_is_recorded(world: ChaosWorld) -> None:
    app = add(world)
    world.end_run(app, RUN, "FAILED", ["nothing was changed"])
    run(world, app, ["snapshot_source"])
    assert kinds(world) == [CHANGE_AFTER_END]


def test_an_outcome_that_contradicts_the_world_is_recorded(world: ChaosWorld) -> None:
    app = add(world)
    end = world.end_run(app, RUN, "COMPLETED", ["the target serves"])
    assert [v.kind for v in end] == [OUTCOME_CONTRADICTS_WORLD]


def test_a_failed_cutover_must_say_what_serves_once_it_changed_something(
    world: ChaosWorld,
) -> None:
    quiet = add(world, app="quiet")
    assert world.end_run(quiet, RUN, "FAILED", ["nothing was changed"]) == []
    app = add(world)
    run(world, app, FORWARD)
    end = world.end_run(app, RUN, "FAILED", ["restore_load_balancer failed"])
    assert [v.kind for v in end] == [STATE_NOT_NAMED]
    assert world.end_run(app, "run-x", "FAILED", ["x"]) == []  # run-x changed nothing
    named = world.end_run(app, RUN, "FAILED", ["traffic stays on the target"])
    assert named == []


def test_checks_see_the_world_and_the_planned_criterion_failure(world: ChaosWorld) -> None:
    app = add(world, criterion_from_round=2, precheck_fail="backup_success_last_24h")
    assert world.check(app, "backup_success_last_24h", "pre", RUN)[0] is False
    assert world.check(app, "dns_ttl_lowered", "pre", RUN)[0] is True
    run(world, app, FORWARD)
    assert world.check(app, "app_health_check_failure", "criterion", RUN)[0] is True
    assert world.check(app, "app_health_check_failure", "criterion", RUN)[0] is False
    other = add(world, app="other")
    run(world, other, [*FORWARD, "remove_target_domain"])  # traffic on a dead target
    assert world.check(other, "p95_latency_within_slo", "post", RUN)[0] is False


def test_the_world_is_shared_between_connections(tmp_path: Path) -> None:
    one = ChaosWorld(tmp_path / "w.db")
    two = ChaosWorld(tmp_path / "w.db")
    app = add(one)
    run(two, app, FORWARD)
    assert one.state(app).served() == {TARGET}
    assert two.plan(app).scenario == "test"


def test_faults_are_decided_per_attempt_and_the_same_in_every_process() -> None:
    rolls = [fault_for(7, "wf", str(i), 1, 0.1) for i in range(2000)]
    rate = sum(f is not None for f in rolls) / len(rolls)
    assert 0.07 < rate < 0.13
    faults = [f for f in rolls if f is not None]
    assert {f.type for f in faults} == {"Transient", "InvalidState"}
    assert {f.after for f in faults} == {True, False}
    assert rolls == [fault_for(7, "wf", str(i), 1, 0.1) for i in range(2000)]
    checks = [fault_for(7, "wf", str(i), 1, 0.1, check=True) for i in range(500)]
    assert {f.type for f in checks if f is not None} == {"Transient"}


def test_lost_attempt_waits_measure_dead_workers_and_lost_tasks() -> None:
    def a(
        aid: str, attempt: int, start: float, end: float | None, outcome: str | None
    ) -> dict[str, Any]:
        return {"app": "shop", "run": "r", "activity_id": aid, "step": "s", "attempt": attempt,
                "first_scheduled_at": 100.0, "started_at": start, "ended_at": end,
                "outcome": outcome}  # fmt: skip

    rows = [
        a("1", 1, 101, None, None),  # killed with its worker
        a("1", 2, 131, 132, "ok"),
        a("2", 2, 170, 171, "ok"),  # attempt 1 never reached a worker
        a("3", 1, 101, 102, "fault-before:Transient"),  # an ordinary retry
        a("3", 2, 103, 104, "ok"),
        a("4", 1, 190, None, None),  # still waiting
    ]
    waits = lost_attempt_waits(rows, now=200.0, run_ended={})
    assert [(w["seconds"], w["cause"]) for w in waits] == [
        (70.0, "attempts never seen by a worker"),
        (30.0, "worker killed mid-attempt"),
        (10.0, "no attempt after a dead one"),
    ]


def test_an_application_down_only_because_its_restart_was_refused_is_excused(
    world: ChaosWorld,
) -> None:
    broken = add(world, app="broken", broken_undo="restart_source")
    run(world, broken, FORWARD[:4])  # failed before the switch; the restart never works
    aid = world.attempt_started("wf", RUN, "9", "restart_source", 1, broken, 1, 0.0, 0.0)
    world.attempt_ended(aid, "broken")
    end = world.end_run(broken, RUN, "FAILED", ["the source is down"])
    assert [v.kind for v in end] == [EXPECTED_DOWN]
    plain = add(world, app="plain")  # the workflow never asked for a restart
    run(world, plain, FORWARD[:4])
    end = world.end_run(plain, RUN, "FAILED", ["the source is down"])
    assert [v.kind for v in end] == [NOT_ONE_HEALTHY_BACKEND]


def test_a_step_the_model_does_not_know_changes_nothing_and_says_so(world: ChaosWorld) -> None:
    app = add(world)
    applied = world.apply(app, "some_new_step", RUN, "wf")
    assert not applied.changed and applied.details == {"unmodelled": True}
    assert not world.apply(app, "restore_dns_ttl", RUN, "wf").changed


def test_a_source_started_before_the_target_is_fenced_splits_users_across_two_writers(
    world: ChaosWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chaos_world, "BOOT_SECONDS", 0.0)
    # LB and DNS both on the target; the source starts with the target up: DNS users
    # write to the source while LB users still write to the target
    split = add(world, app="split", dns=True)
    run(world, split, [*FORWARD, "update_dns", "restart_source", "restore_dns"])
    assert kinds(world) == [TWO_WRITERS]
    run(world, split, ["restore_load_balancer"])
    end = world.end_run(split, RUN, "ROLLED_BACK", ["the source serves the application"])
    assert [v.kind for v in end] == [SOURCE_NOT_INTACT_AFTER_ROLLBACK, TARGET_WRITES_LOST]


def test_fencing_the_target_first_keeps_one_writer_and_is_planned_downtime(
    world: ChaosWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chaos_world, "BOOT_SECONDS", 0.0)
    app = add(world, dns=True)
    run(world, app, [*FORWARD, "update_dns", "fence_target"])
    state = world.state(app)
    assert state.tgt_fenced and state.exists(TARGET) and not state.running(TARGET)
    assert not world.apply(app, "fence_target", RUN, "wf").changed  # idempotent
    undo = [
        "reverse_sync",
        "restart_source",
        "restore_dns",
        "restore_load_balancer",
        "remove_target_domain",
        "detach_target_storage",
        "remove_converted_image",
        "discard_staging",
        "remove_source_snapshot",
    ]
    run(world, app, undo)
    assert kinds(world) == []  # neither "stopped while serving" nor two writers
    assert world.end_run(app, RUN, "ROLLED_BACK", ["the source serves the application"]) == []


def test_a_path_left_on_the_fenced_target_is_excused_only_when_its_restore_was_refused(
    world: ChaosWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chaos_world, "BOOT_SECONDS", 0.0)
    app = add(world, dns=True, broken_undo="restore_load_balancer")
    run(world, app, [*FORWARD, "update_dns", "fence_target", "restart_source", "restore_dns"])
    assert kinds(world) == []
    # the workflow never tried to move the LB back: a violation
    blocked = world.judge_blocked(app, RUN, "ROLLBACK_BLOCKED")
    assert [v.kind for v in blocked] == [NOT_ONE_HEALTHY_BACKEND]
    aid = world.attempt_started("wf", RUN, "9", "restore_load_balancer", 1, app, 1, 0.0, 0.0)
    world.attempt_ended(aid, "broken")
    blocked = world.judge_blocked(app, RUN, "ROLLBACK_BLOCKED")
    assert [v.kind for v in blocked] == [EXPECTED_PATH_TO_FENCED]
    # unfenced while the source takes the DNS users' writes: two writers again
    run(world, app, ["unfence_target"])
    assert kinds(world)[-1] == TWO_WRITERS


def test_a_rollback_that_drops_the_targets_writes_is_a_violation(
    world: ChaosWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chaos_world, "BOOT_SECONDS", 0.0)
    undo = ["restart_source", "restore_load_balancer", "remove_target_domain"]
    lost = add(world, app="lost")
    run(world, lost, [*FORWARD, "fence_target", *undo])  # users wrote while it served
    end = world.end_run(lost, RUN, "ROLLED_BACK", ["the source serves the application"])
    assert [v.kind for v in end] == [TARGET_WRITES_LOST]
    kept = add(world, app="kept")
    run(world, kept, [*FORWARD, "fence_target", "restart_source"])
    with pytest.raises(Refused):  # never written under a running source
        run(world, kept, ["reverse_sync"])
    run(world, kept, ["quiesce_application", "reverse_sync", *undo])
    assert world.state(kept).tgt_synced == world.state(kept).tgt_writes > 0
    assert world.end_run(kept, RUN, "ROLLED_BACK", ["the source serves the application"]) == []
