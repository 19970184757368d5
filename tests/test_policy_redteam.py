"""Red-team negative tests of the access policy across tenant boundaries (the seed: "validate
RBAC/ABAC policies with red-team style negative tests across tenant boundaries").

Every refusal is paired with the allowed case it differs from by one attribute, so no test
passes because everything is refused. Pure logic: `authorize` is what the workflow runs.
"""

from __future__ import annotations

import base64
import itertools
from pathlib import Path
from typing import Any

import pytest

from cutover.policy import (
    ACTIONS,
    DEFAULT_ROLES,
    AccessPolicy,
    Action,
    application_attributes,
    authorize,
    authorize_all,
    load_access_policy,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "policy" / "access.yaml"
KEY = "ed25519:" + base64.b64encode(bytes(range(32))).decode()
TENANTS = ("retail", "finance")
ROLES = tuple(DEFAULT_ROLES)  # operator, approver, auditor, wave-runner

#: The tenancy rule of the example: act on your own tenant's applications only.
SAME_TENANT: dict[str, Any] = {
    "effect": "allow",
    "actions": list(ACTIONS),
    "principal": {"tenant": "$app.tenant"},
}


def who(role: str, tenant: str) -> str:
    return f"{role}-{tenant}"


def policy(rules: list[dict[str, Any]] | None = None, **kw: Any) -> AccessPolicy:
    """One principal per (default role, tenant), plus `nobody-home` (no tenant) and the
    auditor without a tenant; rules default to the same-tenant rule."""
    principals: dict[str, Any] = {
        who(r, t): {"publicKey": KEY, "roles": [r], "tenant": t}
        for r, t in itertools.product(ROLES, TENANTS)
    }
    principals["nobody-home"] = {"publicKey": KEY, "roles": ["operator", "approver"]}
    principals["auditor1"] = {"publicKey": KEY, "roles": ["auditor"]}
    return AccessPolicy.model_validate(
        {"principals": principals, "rules": [SAME_TENANT] if rules is None else rules, **kw}
    )


def app(tenant: str | None, name: str | None = None, **labels: str) -> dict[str, str]:
    if tenant is not None:
        labels["tenant"] = tenant
    return application_attributes(name or f"{tenant or 'untenanted'}-api", labels, wave=2)


def grants(role: str, action: Action) -> bool:
    return action in DEFAULT_ROLES[role]


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("mine", "theirs"), [("retail", "finance"), ("finance", "retail")])
def test_no_role_crosses_a_tenant_boundary_for_any_action(
    role: str, action: Action, mine: str, theirs: str
) -> None:
    p = policy()
    refusal = authorize(p, who(role, mine), action, app(theirs))
    assert refusal is not None
    assert who(role, mine) in refusal and action in refusal and f"{theirs}-api" in refusal
    # ... while on its own tenant's application exactly what its role grants is allowed
    own = authorize(p, who(role, mine), action, app(mine))
    assert (own is None) == grants(role, action), own


def test_cross_tenant_refusal_names_the_rule_and_both_tenants() -> None:
    refusal = authorize(policy(), "approver-retail", "approve", app("finance", "payments-api"))
    assert refusal == (
        "approver-retail (tenant retail) may not approve payments-api (tenant finance): "
        "rule 1 (access.rules[0]) allows the same tenant only"
    )


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("tenant", [*TENANTS, None])
def test_an_auditor_is_refused_everything(action: Action, tenant: str | None) -> None:
    p = policy()
    for auditor in ("auditor1", who("auditor", "retail")):
        refusal = authorize(p, auditor, action, app(tenant))
        assert refusal is not None and "no role of theirs grants" in refusal
    # the same request by an operator or approver of that tenant is allowed (not vacuous)
    if tenant is not None:
        doer = who("operator" if grants("operator", action) else "approver", tenant)
        assert authorize(p, doer, action, app(tenant)) is None


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("name", ["mallory", "", "OPERATOR-RETAIL", "operator-retail ", "*"])
def test_an_unknown_principal_is_refused(action: Action, name: str) -> None:
    p = policy()
    refusal = authorize(p, name, action, app("retail"))
    assert refusal is not None and "not a principal of the access policy" in refusal
    assert authorize(p, "wave-runner-retail", action, app("retail")) is None


@pytest.mark.parametrize("action", ACTIONS)
def test_a_missing_tenant_never_matches_the_same_tenant_rule(action: Action) -> None:
    """Absence is not equality: a principal without a tenant on an application without one,
    or either side lacking it, is refused (fail closed)."""
    p = policy()
    doer = "nobody-home"  # operator + approver: its roles grant every action
    assert authorize(p, doer, action, app(None)) is not None
    assert authorize(p, doer, action, app("retail")) is not None
    assert authorize(p, who("wave-runner", "retail"), action, app(None)) is not None
    assert authorize(p, who("wave-runner", "retail"), action, app("retail")) is None


def test_tenants_match_exactly() -> None:
    p = policy()
    for look_alike in ("Retail", "retail ", "retail,finance", "retai"):
        assert authorize(p, "operator-retail", "start", app(look_alike)) is not None
    assert authorize(p, "operator-retail", "start", app("retail")) is None


def test_a_label_named_application_cannot_impersonate_another_application() -> None:
    attrs = application_attributes("payments-api", {"application": "shop", "tenant": "x"})
    assert attrs["application"] == "payments-api"


def test_separation_of_duties_refuses_the_starter_as_approver() -> None:
    p = policy()
    runner = who("wave-runner", "retail")  # may both start and approve
    refusal = authorize(p, runner, "approve", app("retail"), started_by=runner)
    assert refusal is not None and "separationOfDuties" in refusal and runner in refusal
    # another approver, or the starter doing something else, is allowed
    assert authorize(p, "approver-retail", "approve", app("retail"), started_by=runner) is None
    assert authorize(p, runner, "approve", app("retail"), started_by="operator-retail") is None
    assert authorize(p, runner, "approve", app("retail")) is None
    for action in ACTIONS:
        if action != "approve":
            assert authorize(p, runner, action, app("retail"), started_by=runner) is None
    # off when the policy says so
    off = policy(separationOfDuties=False)
    assert authorize(off, runner, "approve", app("retail"), started_by=runner) is None


def test_separation_of_duties_does_not_let_a_cross_tenant_approver_in() -> None:
    p = policy()
    started = who("operator", "finance")
    refusal = authorize(p, "approver-retail", "approve", app("finance"), started_by=started)
    assert refusal is not None and "same tenant" in refusal


def test_a_deny_rule_above_the_tenant_rule_carves_an_exception() -> None:
    deny = {
        "effect": "deny",
        "actions": ["finalize"],
        "principal": {"roles": ["operator"]},
        "application": {"criticality": ["critical"]},
    }
    p = policy([deny, SAME_TENANT])
    critical = app("retail", criticality="critical")
    refusal = authorize(p, "operator-retail", "finalize", critical)
    assert refusal is not None and "rule 1 (access.rules[0]) denies finalize" in refusal
    assert authorize(p, "operator-retail", "finalize", app("retail", criticality="low")) is None
    assert authorize(p, "wave-runner-retail", "finalize", critical) is None
    assert authorize(p, "operator-retail", "rollback", critical) is None
    # below the allow rule it never decides: the first match does
    assert authorize(policy([SAME_TENANT, deny]), "operator-retail", "finalize", critical) is None


def test_with_rules_what_no_rule_allows_is_refused() -> None:
    only_start = {**SAME_TENANT, "actions": ["start"]}
    p = policy([only_start])
    assert authorize(p, "operator-retail", "start", app("retail")) is None
    refusal = authorize(p, "operator-retail", "rollback", app("retail"))
    assert refusal is not None and "no rule of access.rules allows rollback" in refusal


def test_without_rules_the_roles_alone_decide() -> None:
    """The documented default: no `rules`, no tenancy. What keeps tenants apart is a rule."""
    p = policy([])
    assert authorize(p, "operator-retail", "start", app("finance")) is None
    assert authorize(p, "auditor-retail", "start", app("retail")) is not None


def test_rules_on_application_attributes_and_lists() -> None:
    rule = {
        "effect": "allow",
        "actions": ["start"],
        "principal": {"team": ["platform", "$app.owner"]},
        "application": {"wave": [1, 2], "environment": "prod"},
    }
    principals = {
        "p": {"publicKey": KEY, "roles": ["operator"], "team": "platform"},
        "q": {"publicKey": KEY, "roles": ["operator"], "team": "shop-team"},
    }
    p = AccessPolicy.model_validate({"principals": principals, "rules": [rule]})

    def a(**labels: str) -> dict[str, str]:
        return application_attributes("shop", {"environment": "prod", **labels}, wave=2)

    assert authorize(p, "p", "start", a()) is None
    assert authorize(p, "q", "start", a(owner="shop-team")) is None
    refused = authorize(p, "q", "start", a(owner="other"))
    assert refused is not None and "team platform or the application's owner" in refused
    assert authorize(p, "p", "start", application_attributes("shop", {"environment": "prod"}, 3))
    assert authorize(p, "p", "start", a(environment="dev")) is not None


def test_the_example_policy_keeps_its_tenants_apart() -> None:
    p = load_access_policy(EXAMPLE)
    shop = application_attributes("shop", {"tenant": "retail", "criticality": "low"}, 1)
    payments = application_attributes("payments-api", {"tenant": "finance"}, 2)
    assert authorize(p, "alice", "start", shop) is None
    assert authorize(p, "ops-lead", "approve", shop, started_by="alice") is None
    assert authorize(p, "bob", "approve", payments, started_by="bob") is not None
    for action in ACTIONS:
        for name in ("alice", "ops-lead", "waves", "auditor1"):
            assert authorize(p, name, action, payments) is not None
        assert authorize(p, "bob", action, shop) is not None


@pytest.mark.parametrize("action", ACTIONS)
def test_a_wave_spanning_two_tenants_is_refused_to_either_tenants_principal(
    action: Action,
) -> None:
    p = policy()
    for tenant, other in (("retail", "finance"), ("finance", "retail")):
        runner = who("wave-runner", tenant)
        refusal = authorize_all(p, runner, action, [app(tenant), app(other)])
        assert refusal is not None and f"{other}-api" in refusal
        assert authorize_all(p, runner, action, [app(tenant), app(tenant, "b")]) is None
    assert authorize_all(p, "auditor1", action, []) is None  # nothing asked, nothing refused
