"""The HAProxy traffic switch against a real HAProxy 2.6 and real HTTP backends.

Each test gets its own HAProxy (tests/haproxy_fixtures.py). The activities are called
directly (they are sync functions; outside a worker they skip heartbeats).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.loadbalancer import LoadBalancerActivities
from adapters.haproxy.runtime import HAProxyRuntime
from cutover.catalog import Compensation, FinalizeStep, Step
from cutover.models import StepInput
from cutover.site import SiteConfig
from cutover.traffic import Address, ServerState
from tests.haproxy_fixtures import APP, HAProxyLab, LoadGen, Sample

ACTS = LoadBalancerActivities()


def states(lab: HAProxyLab) -> dict[str, str]:
    return {name: s.describe() for name, s in lab.servers().items()}


def serving(lab: HAProxyLab) -> list[str]:
    """Servers taking new traffic."""
    return [name for name, s in lab.servers().items() if s.serving]


def switch(lab: HAProxyLab, **kw: Any) -> Any:
    kw.setdefault("target_address", lab.target.address)
    return ACTS.update_load_balancer(lab.step_input(Step.UPDATE_LOAD_BALANCER, **kw))


def rollback(lab: HAProxyLab, **kw: Any) -> Any:
    return ACTS.restore_load_balancer(lab.step_input(Compensation.RESTORE_LOAD_BALANCER, **kw))


def retire(lab: HAProxyLab, **kw: Any) -> Any:
    kw.setdefault("target_address", lab.target.address)
    step = FinalizeStep.RETIRE_SOURCE_FROM_LOAD_BALANCER
    return ACTS.retire_source_from_load_balancer(lab.step_input(step, **kw))


def failures(samples: list[Sample]) -> list[str]:
    return [s.error or "?" for s in samples if s.served_by is None]


def served_by(samples: list[Sample], after: float, before: float = float("inf")) -> set[str]:
    return {s.served_by or "FAILED" for s in samples if after < s.sent and s.done < before}


# -------------------------------------------------------------------- under load


def test_switch_and_rollback_under_load_lose_no_request(haproxy_lab: HAProxyLab) -> None:
    lab = haproxy_lab
    assert serving(lab) == ["source"]
    # the bound is a backstop: the waits below end the load well before it
    with LoadGen(lab.frontend_port, threads=4, max_requests=20_000, max_seconds=30) as load:
        load.wait_for(400)
        t0 = time.monotonic()
        switched = switch(lab)
        t1 = time.monotonic()
        load.wait_for(800)
        t2 = time.monotonic()
        restored = rollback(lab)
        t3 = time.monotonic()
        load.wait_for(800)
    samples = load.samples

    assert len(samples) >= 2000
    assert failures(samples) == []
    # the load really ran through both switches
    assert sum(1 for s in samples if t0 <= s.sent <= t1) >= 50
    assert sum(1 for s in samples if t2 <= s.sent <= t3) >= 50
    assert served_by(samples, 0, t0) == {"source"}
    assert served_by(samples, t1, t2) == {"target"}
    assert served_by(samples, t3) == {"source"}

    assert switched.changed and restored.changed
    assert switched.facts["lb_backend"] == APP
    assert switched.facts["lb_target_address"] == lab.target.address
    assert switched.facts["lb_previous_target_state"].startswith("maint/MAINT")
    assert switched.facts["lb_previous_source_state"].startswith("ready/UP")
    assert switched.details["drain_timed_out"] is False
    assert restored.facts["lb_previous_target_state"].startswith("ready/UP")
    assert serving(lab) == ["source"]
    assert lab.servers()["target"].admin == "maint"


@pytest.mark.parametrize("why", ["failing health checks", "nothing listening"])
def test_a_target_that_never_gets_healthy_gives_up_and_the_source_keeps_serving(
    haproxy_lab: HAProxyLab, why: str
) -> None:
    lab = haproxy_lab
    if why == "failing health checks":
        lab.target.failing = True
        address = lab.target.address
    else:  # leaving maintenance, HAProxy first marks even this one UP: it must get nothing
        address = lab.placeholder
    with LoadGen(lab.frontend_port, threads=2, max_requests=20_000, max_seconds=20) as load:
        load.wait_for(100)
        started = time.monotonic()
        with pytest.raises(ApplicationError) as raised:
            switch(lab, target_address=address, health_s=1)
        elapsed = time.monotonic() - started
        load.wait_for(100)

    err = raised.value
    assert err.type == "TargetUnhealthy"
    assert err.non_retryable
    assert err.message.startswith(
        f"target {address} never became healthy in 1s; traffic stays on the source"
    )
    assert 1 <= elapsed < 5  # gave up after its 1 s health wait (slack for a loaded CI)
    assert failures(load.samples) == []
    assert served_by(load.samples, 0) == {"source"}
    after = lab.servers()
    assert serving(lab) == ["source"]
    assert after["target"].admin == "maint" and after["target"].weight == 1
    # the compensation the workflow runs next finds nothing to undo
    assert not rollback(lab).changed


# ------------------------------------------------------------------ idempotency


def test_switching_twice_changes_nothing_the_second_time(haproxy_lab: HAProxyLab) -> None:
    lab = haproxy_lab
    first = switch(lab)
    after_first = states(lab)
    second = switch(lab)
    assert first.changed and not second.changed
    assert states(lab) == after_first
    # a no-op re-run reports what the first run recorded as "previous", not the switched
    # state it finds
    assert second.facts["lb_previous_source_state"] == first.facts["lb_previous_source_state"]
    assert second.facts["lb_previous_target_state"].startswith("maint/MAINT")
    assert second.facts["lb_target_address"] == lab.target.address
    assert {lab.get() for _ in range(10)} == {"target"}


def test_compensating_a_switch_that_never_happened_is_a_no_op(haproxy_lab: HAProxyLab) -> None:
    lab = haproxy_lab
    before = states(lab)
    result = rollback(lab)
    assert not result.changed
    assert states(lab) == before
    assert result.facts == {"lb_backend": APP, "lb_serving": "source"}


def test_retire_twice(haproxy_lab: HAProxyLab) -> None:
    lab = haproxy_lab
    assert switch(lab).changed
    first, second = retire(lab), retire(lab)
    assert first.changed and not second.changed  # the first wrote the config
    assert first.facts["lb_source_retired"] == "maint"
    assert first.facts["lb_persisted"] == "config"
    assert "already says so" in str(second.details["note"])
    assert lab.servers()["source"].admin == "maint"
    assert {lab.get() for _ in range(10)} == {"target"}


def test_after_finalize_a_reload_keeps_the_target(haproxy_lab: HAProxyLab) -> None:
    """retire_source_from_load_balancer writes the switch into the config: a reload (any
    config push) afterwards still sends everything to the target, nothing to the source."""
    lab = haproxy_lab
    original = lab.config_path.read_text()
    assert switch(lab).changed
    retired = retire(lab)
    assert retired.changed and retired.facts["lb_persisted"] == "config"
    config = lab.config_path.read_text()
    assert f"server target {lab.target.address} check\n" in config
    assert f"server source {lab.source.address} check disabled\n" in config
    assert f"# source retired by cutover cutover-{APP} at " in config
    assert lab.config_path.with_name(f"haproxy.cfg.before-retire-{APP}").read_text() == original

    before = lab.source.served
    lab.reload(up="target")  # the new worker starts from the config
    after = lab.servers()
    assert after["source"].admin == "maint" and str(after["target"].address) == lab.target.address
    assert {lab.get() for _ in range(20)} == {"target"}
    assert lab.source.served == before
    # finalize again after the reload: nothing left to change
    assert not retire(lab).changed
    assert lab.config_path.read_text() == config


def test_finalize_without_a_config_file_says_a_reload_would_revert_it(
    haproxy_lab: HAProxyLab,
) -> None:
    lab = haproxy_lab
    assert switch(lab).changed
    step = FinalizeStep.RETIRE_SOURCE_FROM_LOAD_BALANCER
    inp = lab.step_input(step, target_address=lab.target.address, config_file=False)
    with pytest.raises(ApplicationError) as raised:
        ACTS.retire_source_from_load_balancer(inp)
    err = raised.value
    assert err.type == "ConfigError" and err.non_retryable
    assert "loadBalancer.configFile" in err.message and "next reload" in err.message
    assert err.details[0] == {"trafficOn": "target", "serving": ["target"]}
    assert serving(lab) == ["target"]


def test_finalize_leaves_a_config_haproxy_rejects_as_it_was(haproxy_lab: HAProxyLab) -> None:
    lab = haproxy_lab
    assert switch(lab).changed
    broken = lab.config_path.read_text() + "backend broken\n    no-such-keyword here\n"
    lab.config_path.write_text(broken)
    with pytest.raises(ApplicationError) as raised:
        retire(lab)
    assert raised.value.type == "ConfigError"
    assert "haproxy -c" in raised.value.message and "left as it was" in raised.value.message
    assert lab.config_path.read_text() == broken
    assert [p.name for p in lab.directory.glob(".haproxy.cfg.*.tmp")] == []
    assert serving(lab) == ["target"]


def test_re_runs_finish_a_switch_or_rollback_interrupted_half_way(
    haproxy_lab: HAProxyLab,
) -> None:
    """A worker that died mid-switch leaves HAProxy half-way: the retry completes it."""
    lab = haproxy_lab
    rt = lab.runtime()
    # died after bringing the target up, before draining the source: both serve
    for cmd in (
        f"set server {APP}/target addr 127.0.0.1 port {lab.target.port}",
        f"set server {APP}/target state ready",
    ):
        rt.command(cmd)
    _wait(lambda: lab.servers()["target"].status == "UP")
    assert sorted(serving(lab)) == ["source", "target"]
    assert switch(lab).changed
    assert serving(lab) == ["target"]
    # a rollback that died after making the source serve again, while draining the target
    rt.command(f"set server {APP}/source state ready")
    rt.command(f"set server {APP}/target state drain")
    _wait(lambda: lab.servers()["source"].status == "UP")
    assert rollback(lab).changed
    assert serving(lab) == ["source"]
    assert lab.servers()["target"].admin == "maint"


class _DiesBeforeDraining(HAProxyRuntime):
    """A worker killed after the target came up, before the source was drained."""

    def _take_out(self, backend: str, server: ServerState, timeouts: Any) -> Any:
        raise SystemExit("worker killed")


def test_a_rollback_after_a_retried_switch_restores_exactly_the_state_before_it(
    haproxy_lab: HAProxyLab,
) -> None:
    lab = haproxy_lab
    rt = lab.runtime()
    rt.command(f"set weight {APP}/source 7")  # an operator's runtime weight
    before = lab.servers()
    dying = LoadBalancerActivities(factory=lambda s: _DiesBeforeDraining(s.socket))
    with pytest.raises(SystemExit):
        dying.update_load_balancer(
            lab.step_input(Step.UPDATE_LOAD_BALANCER, target_address=lab.target.address)
        )
    assert sorted(serving(lab)) == ["source", "target"]  # half-way

    # the retry, on another worker: it finds the half-way state but reports the one before
    retry = LoadBalancerActivities().update_load_balancer(
        lab.step_input(Step.UPDATE_LOAD_BALANCER, target_address=lab.target.address)
    )
    assert retry.facts["lb_previous_target_state"] == before["target"].describe()
    assert retry.facts["lb_previous_source_state"] == before["source"].describe()
    assert serving(lab) == ["target"]

    # the rollback, on a third worker, with none of the facts (all results lost)
    back = LoadBalancerActivities().restore_load_balancer(
        lab.step_input(Compensation.RESTORE_LOAD_BALANCER)
    )
    assert back.changed and "put_back" in back.details
    after = lab.servers()
    for name in ("source", "target"):
        was, now = before[name], after[name]
        assert (now.admin, now.address, now.weight, now.check_enabled) == (
            was.admin,
            was.address,
            was.weight,
            was.check_enabled,
        ), name
    assert serving(lab) == ["source"] and {lab.get() for _ in range(10)} == {"source"}
    assert list(lab.directory.glob("*.cutover-prior.json")) == []  # forgotten once restored


def test_a_rollback_to_an_unhealthy_source_gives_up_cleanly_saying_traffic_stays_on_the_target(
    haproxy_lab: HAProxyLab,
) -> None:
    lab = haproxy_lab
    assert switch(lab).changed
    lab.source.failing = True  # restart_source brought back a source that fails its checks
    before = lab.servers()
    with LoadGen(lab.frontend_port, threads=2, max_requests=20_000, max_seconds=20) as load:
        load.wait_for(50)
        with pytest.raises(ApplicationError) as raised:
            rollback(lab, health_s=1)
        load.wait_for(50)
    err = raised.value
    assert err.type == "SourceUnhealthy" and not err.non_retryable  # it may still be booting
    assert err.message.startswith(
        f"source {lab.source.address} never became healthy in 1s; traffic stays on the "
        f"target (serving: {APP}/target at {lab.target.address}); {APP}/source is back in "
        "maintenance"
    )
    assert err.details[0] == {"trafficOn": "target", "serving": ["target"]}
    assert failures(load.samples) == [] and served_by(load.samples, 0) == {"target"}
    # nothing half-changed: the servers are as the switch left them
    assert states(lab) == {n: s.describe() for n, s in before.items()}
    assert lab.servers()["source"].check_enabled == before["source"].check_enabled
    # any other failure of the undo says where traffic is too
    with pytest.raises(ApplicationError) as raised:
        rollback(lab, endpoint={"loadBalancer": {"sourceServer": "green"}})
    assert raised.value.type == "ConfigError" and raised.value.non_retryable
    assert raised.value.details[0] == {"trafficOn": "target", "serving": ["target"]}
    assert f"traffic is on: target ({APP}/target at {lab.target.address})" in str(raised.value)
    # once the source is healthy, the retry Temporal makes rolls back
    lab.source.failing = False
    assert rollback(lab).changed and serving(lab) == ["source"]


def _wait(cond: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# ------------------------------------------------------------------------ reload


def test_after_a_reload_re_running_re_applies_the_switch(haproxy_lab: HAProxyLab) -> None:
    lab = haproxy_lab
    assert switch(lab).changed
    assert lab.get() == "target"

    lab.reload()  # SIGUSR2 to the master: the new worker starts from the config
    reverted = lab.servers()
    assert reverted["target"].admin == "maint"
    assert str(reverted["target"].address) == lab.placeholder
    assert serving(lab) == ["source"] and lab.get() == "source"

    again = switch(lab)
    assert again.changed
    assert {lab.get() for _ in range(10)} == {"target"}
    assert serving(lab) == ["target"]

    # the finalize step re-applies it too (before the source VM is taken away)
    lab.reload()
    assert lab.get() == "source"
    retired = retire(lab)
    assert retired.changed
    assert {lab.get() for _ in range(10)} == {"target"}


def test_a_reload_in_the_middle_of_a_switch_is_retryable(haproxy_lab: HAProxyLab) -> None:
    lab = haproxy_lab
    lab.target.failing = True  # keeps the switch waiting for health checks
    outcome: list[BaseException | Any] = []

    def run() -> None:
        try:
            outcome.append(switch(lab, health_s=8))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    _wait(lambda: lab.servers()["target"].admin == "ready")
    lab.reload()
    worker.join(10)
    assert not worker.is_alive()
    err = outcome[0]
    assert isinstance(err, ApplicationError), err
    assert err.type == "LoadBalancerChanged" and not err.non_retryable
    assert serving(lab) == ["source"]

    lab.target.failing = False
    assert switch(lab).changed  # what Temporal's retry does
    assert serving(lab) == ["target"]


# ------------------------------------------------------------------------ config


def test_config_errors_change_nothing(haproxy_lab: HAProxyLab) -> None:
    lab = haproxy_lab
    before = states(lab)

    def config_error(inp: StepInput) -> str:
        with pytest.raises(ApplicationError) as raised:
            ACTS.update_load_balancer(inp)
        assert raised.value.type == "ConfigError" and raised.value.non_retryable
        assert states(lab) == before
        return str(raised.value)

    step = Step.UPDATE_LOAD_BALANCER
    msg = config_error(lab.step_input(step))
    assert "no earlier step reported `target_address`" in msg
    assert "endpoint.targetAddress" in msg
    msg = config_error(lab.step_input(step, target_address="target.example:8080"))
    assert "is not IP:port" in msg
    msg = config_error(
        lab.step_input(
            step,
            target_address=lab.target.address,
            endpoint={"loadBalancer": {"targetServer": "green"}},
        )
    )
    assert "no server named green" in msg and "source, target" in msg
    msg = config_error(
        lab.step_input(
            step,
            target_address=lab.target.address,
            endpoint={"loadBalancer": {"backend": "nope"}},
        )
    )
    assert "no backend named 'nope'" in msg
    msg = config_error(
        lab.step_input(
            step,
            target_address=lab.target.address,
            endpoint={"loadBalancer": {"backend": "app;shutdown"}},
        )
    )
    assert "not a valid HAProxy name" in msg
    no_lb = lab.step_input(step, target_address=lab.target.address)
    no_lb.context.site = SiteConfig(name="lab")
    assert "no `loadBalancer` section" in config_error(no_lb)
    # ... and its compensation, registered before it ran, has nothing to undo
    no_lb.step = Compensation.RESTORE_LOAD_BALANCER
    assert not ACTS.restore_load_balancer(no_lb).changed
    assert lab.get() == "source"


def test_the_reported_target_address_wins_over_the_runbook(haproxy_lab: HAProxyLab) -> None:
    lab = haproxy_lab
    result = switch(
        lab,
        target_address=lab.placeholder,  # the runbook's guess, before power-on
        facts={"target_address": lab.target.address},  # what power_on_target reported
    )
    assert result.facts["lb_target_address"] == lab.target.address
    assert lab.get() == "target"


def test_unreachable_socket_is_retryable(tmp_path: Any) -> None:
    rt = HAProxyRuntime(str(tmp_path / "nothing.sock"), reconnect_for=0.2)
    with pytest.raises(ApplicationError) as raised:
        rt.state(APP)
    assert raised.value.type == "LoadBalancerUnavailable"
    assert not raised.value.non_retryable


def test_addresses() -> None:
    assert str(Address.parse("10.0.0.5:8080")) == "10.0.0.5:8080"
    assert str(Address.parse("[::1]:80")) == "[::1]:80"
    assert Address.parse("[0:0::1]:80") == Address("::1", 80)
    for bad in ("10.0.0.5", "10.0.0.5:0", "10.0.0.5:http", "host:80", ":80", "::1:80x"):
        with pytest.raises(ApplicationError, match="is not IP:port"):
            Address.parse(bad)


def test_state_reports_every_server(haproxy_lab: HAProxyLab) -> None:
    servers = haproxy_lab.servers()
    assert set(servers) == {"source", "target"}
    src, tgt = servers["source"], servers["target"]
    assert isinstance(src, ServerState)
    assert (src.admin, src.op, src.status, src.weight, src.checked) == (
        "ready",
        "UP",
        "UP",
        1,
        True,
    )
    assert str(src.address) == haproxy_lab.source.address
    assert (tgt.admin, tgt.status, str(tgt.address)) == ("maint", "MAINT", haproxy_lab.placeholder)


def test_inside_an_activity_it_heartbeats_while_waiting(haproxy_lab: HAProxyLab) -> None:
    lab = haproxy_lab
    env = ActivityEnvironment()
    beats: list[Any] = []
    env.on_heartbeat = lambda *details: beats.append(details[0])
    inp = lab.step_input(Step.UPDATE_LOAD_BALANCER, target_address=lab.target.address)
    result = env.run(ACTS.update_load_balancer, inp)
    assert result.changed and result.attempt == 1
    assert beats and beats[0]["waiting"] == "health check"
    assert beats[0]["server"] == f"{APP}/target"
