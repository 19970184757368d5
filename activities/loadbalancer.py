"""Load balancer activities: move an application's traffic to the target
(update_load_balancer), back to the source (restore_load_balancer), and retire the source
for good (retire_source_from_load_balancer). Thin: they drive a `cutover.ports.LoadBalancer`
(HAProxy: `adapters.haproxy`, where the switch, its safety rules and its errors are).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import attempt as _attempt
from adapters.haproxy.prior import PriorStore
from adapters.haproxy.runtime import HAProxyRuntime
from cutover import facts as F
from cutover.catalog import Compensation, FinalizeStep, Step
from cutover.errors import ErrorKind, error
from cutover.models import StepInput, StepResult
from cutover.ports import LoadBalancer
from cutover.site import HAProxy
from cutover.traffic import Address, BackendPrior, PriorServer, Switch, Timeouts


def _haproxy(settings: HAProxy) -> LoadBalancer:
    return HAProxyRuntime.from_settings(settings)


@dataclass
class LoadBalancerActivities:
    """The traffic-switch activities; `factory` builds a load balancer from the site's
    settings (injected: tests and other load balancer types pass their own)."""

    factory: Callable[[HAProxy], LoadBalancer] = _haproxy

    def _lb(self, inp: StepInput) -> tuple[LoadBalancer, Timeouts]:
        settings = inp.context.resolved_site.loadBalancer
        if settings is None:
            raise error(ErrorKind.CONFIG_ERROR, "the site config has no `loadBalancer` section")
        return self.factory(settings), Timeouts.from_settings(settings)

    @staticmethod
    def _target_address(inp: StepInput) -> Address:
        ctx = inp.context
        text = (
            ctx.facts.get(F.TARGET_ADDRESS)
            or ctx.facts.get(F.LB_TARGET_ADDRESS)
            or ctx.runbook.endpoint.targetAddress
        )
        if not text:
            raise error(
                ErrorKind.CONFIG_ERROR,
                f"no address to send {ctx.application}'s traffic to: no earlier step reported "
                "`target_address` and the runbook sets no endpoint.targetAddress",
            )
        return Address.parse(text, "target address")

    @staticmethod
    @contextlib.contextmanager
    def _says_where_traffic_is(inp: StepInput, lb: LoadBalancer) -> Iterator[None]:
        """A failure leaves saying where traffic is (message and details `trafficOn`:
        source, target, both, none or unknown; `serving`: the servers taking traffic), as
        far as the load balancer still answers."""
        try:
            yield
        except ApplicationError as err:
            details = err.details[0] if err.details else None
            if isinstance(details, dict) and "trafficOn" in details:
                raise
            servers = inp.context.runbook.endpoint.loadBalancer
            backend = inp.context.runbook.lb_backend
            try:
                now = lb.state(backend)
            except ApplicationError:
                on, serving, where = "unknown", [], "its state cannot be read"
            else:
                serving = sorted(n for n, s in now.items() if s.serving)
                roles = {servers.sourceServer: "source", servers.targetServer: "target"}
                mine = {roles[n] for n in serving if n in roles}
                on = "both" if len(mine) == 2 else mine.pop() if mine else "none"
                where = ", ".join(f"{backend}/{n} at {now[n].address}" for n in serving)
            raise ApplicationError(
                f"{err.message}; traffic is on: {on}" + (f" ({where})" if where else ""),
                {"trafficOn": on, "serving": serving},
                type=err.type,
                non_retryable=err.non_retryable,
            ) from None

    @staticmethod
    def _result(inp: StepInput, moved: Switch) -> StepResult:
        return StepResult(
            step=inp.step,
            changed=moved.changed,
            facts=moved.facts,
            details=moved.details,
            attempt=_attempt(),
        )

    @staticmethod
    def _store(inp: StepInput) -> PriorStore:
        settings = inp.context.resolved_site.loadBalancer
        assert settings is not None
        return PriorStore(Path(settings.stateDir or os.path.dirname(settings.socket) or "."))

    @staticmethod
    def _run_id() -> str | None:
        return activity.info().workflow_run_id if activity.in_activity() else None

    def _record_prior(
        self, inp: StepInput, lb: LoadBalancer, store: PriorStore, source: str, target: str
    ) -> BackendPrior | None:
        """The backend as it is before this switch changes anything; a retry (same
        workflow run) keeps what its first attempt recorded."""
        backend = inp.context.runbook.lb_backend
        kept = store.load(backend)
        if kept is not None and (kept.workflowId, kept.runId) == (
            inp.context.workflowId,
            self._run_id(),
        ):
            return kept
        servers = lb.state(backend)
        if source not in servers or target not in servers:
            return None  # the switch itself names what is missing
        prior = BackendPrior(
            workflowId=inp.context.workflowId,
            runId=self._run_id(),
            backend=backend,
            source=PriorServer.of(servers[source]),
            target=PriorServer.of(servers[target]),
            recordedAt=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        store.save(prior)
        return prior

    def _prior(self, inp: StepInput, store: PriorStore) -> BackendPrior | None:
        """What update_load_balancer recorded for this cutover: its facts, else the file."""
        text = inp.context.facts.get(F.LB_PRIOR)
        if text:
            with contextlib.suppress(ValidationError, ValueError):
                return BackendPrior.model_validate_json(text)
        kept = store.load(inp.context.runbook.lb_backend)
        if kept is not None and kept.workflowId == inp.context.workflowId:
            return kept
        return None

    @activity.defn(name=Step.UPDATE_LOAD_BALANCER)
    def update_load_balancer(self, inp: StepInput) -> StepResult:
        """Move the traffic to the target; first record the backend's state before it."""
        lb, timeouts = self._lb(inp)
        rb = inp.context.runbook
        servers = rb.endpoint.loadBalancer
        target_addr = self._target_address(inp)
        with self._says_where_traffic_is(inp, lb):
            prior = self._record_prior(
                inp, lb, self._store(inp), servers.sourceServer, servers.targetServer
            )
            moved = lb.switch_to_target(
                rb.lb_backend, servers.sourceServer, servers.targetServer, target_addr, timeouts
            )
        if prior is not None:
            moved.facts[F.LB_PRIOR] = prior.model_dump_json()
            moved.facts[F.lb_previous_state("source")] = prior.source.state
            moved.facts[F.lb_previous_state("target")] = prior.target.state
        return self._result(inp, moved)

    @activity.defn(name=Compensation.RESTORE_LOAD_BALANCER)
    def restore_load_balancer(self, inp: StepInput) -> StepResult:
        """The source serves again; the target goes to maintenance, back at the address,
        weight and health check it had before the switch (as recorded)."""
        if inp.context.resolved_site.loadBalancer is None:
            # The switch failed on this same missing section: it never moved anything.
            note = "the site config has no `loadBalancer` section: nothing was switched"
            return self._result(inp, Switch(changed=False, details={"note": note}))
        lb, timeouts = self._lb(inp)
        rb = inp.context.runbook
        servers = rb.endpoint.loadBalancer
        store = self._store(inp)
        prior = self._prior(inp, store)
        with self._says_where_traffic_is(inp, lb):
            moved = lb.switch_to_source(
                rb.lb_backend, servers.sourceServer, servers.targetServer, timeouts, prior
            )
        if prior is not None:
            moved.details["prior_recorded_at"] = prior.recordedAt
            store.forget(rb.lb_backend)
        return self._result(inp, moved)

    @activity.defn(name=FinalizeStep.RETIRE_SOURCE_FROM_LOAD_BALANCER)
    def retire_source_from_load_balancer(self, inp: StepInput) -> StepResult:
        """The target serves and the source stays in maintenance (re-applied if a reload
        reverted the switch), written into the HAProxy config so no reload undoes it."""
        lb, timeouts = self._lb(inp)
        rb = inp.context.runbook
        servers = rb.endpoint.loadBalancer
        target_addr = self._target_address(inp)
        with self._says_where_traffic_is(inp, lb):
            moved = lb.retire(
                rb.lb_backend,
                servers.sourceServer,
                servers.targetServer,
                target_addr,
                timeouts,
                why=f"cutover {inp.context.workflowId}",
            )
        self._store(inp).forget(rb.lb_backend)
        return self._result(inp, moved)

    def activities(self) -> list[Callable[..., StepResult]]:
        return [
            self.update_load_balancer,
            self.restore_load_balancer,
            self.retire_source_from_load_balancer,
        ]
