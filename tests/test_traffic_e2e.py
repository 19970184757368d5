"""A cutover through Temporal with the real traffic adapters: HAProxy, BIND, http checks.

The VM and disk steps are test activities (tests/world.py); the load balancer switch, the
DNS switch, their compensations and the checks are the shipped ones, against real haproxy
and named started by the fixtures.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.client import Client

from activities.checks import CheckActivities
from activities.dns import DnsActivities
from activities.loadbalancer import LoadBalancerActivities
from cutover.models import CutoverInput, Outcome, Phase, Tuning
from cutover.policy import AccessPolicy
from cutover.runbook import Runbook
from cutover.site import Dns, SiteConfig
from tests.bind_fixtures import BindServer
from tests.factories import SEED
from tests.haproxy_fixtures import HAProxyLab
from tests.test_workflow import start, wait_phase
from tests.world import World
from workers.worker import build_worker


def _name(fn: Any) -> str:
    return str(activity._Definition.must_from_callable(fn).name)


async def test_failing_post_check_rolls_back_lb_and_dns(
    client: Client, haproxy_lab: HAProxyLab, bind: BindServer
) -> None:
    real: list[Callable[..., Any]] = [
        *LoadBalancerActivities().activities(),
        *DnsActivities(source_health_timeout=None).activities(),  # its sources are not services
        CheckActivities().run_check,
    ]
    world = World(target_address=haproxy_lab.target.address)
    taken = {_name(fn) for fn in real}
    acts = [fn for fn in world.activities() if _name(fn) not in taken] + real
    queue = f"traffic-{uuid.uuid4().hex[:8]}"
    lab_site = haproxy_lab.site(health_s=10, drain_s=5)
    site = SiteConfig(
        name="traffic",
        taskQueue=queue,
        access=AccessPolicy(requireSignatures=False),
        loadBalancer=lab_site.loadBalancer,
        dns=Dns(
            server="127.0.0.1", port=bind.port, zone="apps.test", tsigKeyFile=str(bind.key_file)
        ),
        checks={
            # errors seen by users through the load balancer, 10 requests per evaluation
            "error_rate_below_threshold": {
                "type": "http",
                "url": f"http://127.0.0.1:{haproxy_lab.frontend_port}/health",
                "samples": 10,
                "maxErrorRate": 0,
                "timeoutSeconds": 2,
            }
        },
    )
    runbook = Runbook.model_validate({
        **SEED,
        "application": haproxy_lab.backend,
        "rollbackWindowMinutes": 0.25,
        "checkIntervalSeconds": 1,
        "preChecks": [],
        "postChecks": ["error_rate_below_threshold"],
        "rollbackCriteria": [],
        "cutoverSteps": [*SEED["cutoverSteps"], "update_dns"],
        "dataSync": {"warm": False},
        "endpoint": {"dns": {"name": "app", "ttl": 30}, "sourceAddress": "10.0.0.1:80"},
    })  # fmt: skip
    inp = CutoverInput(
        runbook=runbook, site=site, requestedBy="pytest",
        tuning=Tuning(maxAttempts=3, initialRetrySeconds=0.2, compensationAttempts=3),
    )  # fmt: skip
    async with build_worker(client, queue, activities=acts):
        handle = await start(client, inp)
        await wait_phase(handle, Phase.ROLLBACK_WINDOW, timeout=60)
        # switched for real: users reach the target, the name points at it
        assert await asyncio.to_thread(haproxy_lab.get) == "target"
        switched = bind.query("app", "A")
        assert switched is not None and [r.to_text() for r in switched] == ["127.0.0.1"]
        assert switched.ttl == 30
        haproxy_lab.target.failing = True  # the target goes bad during the window
        async with asyncio.timeout(90):
            result = await handle.result()

    assert result.outcome == Outcome.ROLLED_BACK, result.reason
    assert result.reason.startswith("rollback window closed with post-checks failing")
    assert "error_rate_below_threshold failed" in result.reason
    assert "errors 10/10" in result.reason  # the measurement, in the result
    check = next(c for c in result.checks if c.name == "error_rate_below_threshold")
    assert not check.passed and check.threshold is not None and "error rate" in check.threshold
    undo = [s.name for s in result.steps if s.kind == "compensation"]
    # the target is fenced, then the source is brought back (both registered above each
    # switch, run once per pass), then both traffic paths move back with nothing between
    assert undo[:5] == [
        "fence_target",
        "reverse_sync",
        "restart_source",
        "restore_dns",
        "restore_load_balancer",
    ]
    assert undo.count("restart_source") == 1 and undo.count("fence_target") == 1
    assert all(s.outcome == "ok" for s in result.steps if s.kind == "compensation")
    # rolled back for real: users reach the source again, the name points back at it
    assert await asyncio.to_thread(haproxy_lab.get) == "source"
    restored = bind.query("app", "A")
    assert restored is not None and [r.to_text() for r in restored] == ["10.0.0.1"]
    assert restored.ttl == 3600
