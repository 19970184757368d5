"""Governance: who may do what to which application (access policy, RBAC + ABAC), and what a
cutover may do to an application at all (the seed's `WorkloadPolicy`).

Pure: models and rules, no I/O except the explicit `load_*(path)` helpers (through the
project's safe YAML loader, cutover/config.py: every problem names the file and the field).
The workflow and the CLI call the same functions, so an early `cutover validate` and the
workflow's own check can never disagree.

Application attributes
----------------------
An application's attributes (tenant, wave, criticality, environment, residency, any other
label) come from the worker's site config (`applications.<name>.labels`), never from a
workflow's input. The functions here take them as a plain mapping; `application_attributes`
builds it: the labels, plus `application` (its name) and `wave`.

Access policy (RBAC + ABAC)
---------------------------
A file (or a site section) `access:` with

- `requireSignatures` (default true): every principal needs a `publicKey` (`ed25519:` and the
  base64 of the 32-byte raw key);
- `separationOfDuties` (default true): whoever started a cutover may not approve it;
- `principals`: key name -> `{publicKey, roles, tenant, team}`;
- `roles`: role -> the actions it grants. Omitted: `DEFAULT_ROLES` (operator, approver,
  auditor, wave-runner). Written: exactly the roles written.
- `rules`: attribute rules, in order.

A request (principal, action, application) is allowed when all of these hold, checked in this
order (the first failure is the answer): the principal is known; one of its roles grants the
action; separation of duties (for `approve`); and the rules allow it. With no rules the roles
alone decide. With rules, the first rule that matches decides (`allow` or `deny`); when none
matches, the request is refused (default deny). A request on a wave is a request on each of
its applications (`authorize_all`).

A rule matches a request when its `actions` list the action and every condition holds:

    - effect: allow | deny
      actions: [start, approve, rollback, extend, finalize, resume]   # at least one
      principal:            # optional; conditions on the principal
        name: [alice, bob]  #   its key name is one of these
        roles: [operator]   #   it has one of these roles
        tenant: retail      #   its tenant is one of these (a value or a list)
        team: "$app.team"   #   `$app.<attr>`: equal to the application's attribute
      application:          # optional; conditions on the application's attributes
        criticality: [critical, high]   # any attribute: its value is one of these
        wave: 2                         # numbers are compared as text

A value is a string or a list of strings (any of them matches). `$app.<attr>` (principal
conditions only, alone or in a list) stands for the application's attribute; an attribute the
application lacks, or the principal lacks, never matches (so a rule never matches by absence).
Conditions of one rule are ANDed, list items ORed. Example: `{effect: allow, actions: [...],
principal: {tenant: "$app.tenant"}}` lets principals act on their own tenant's applications
only; put `deny` rules above the `allow` rules they carve exceptions from.

WorkloadPolicy
--------------
The seed's `apiVersion: policy.virtualmachine.space/v1`, `kind: WorkloadPolicy` documents (one
file, one or many documents), plus `spec.selector` choosing the applications a policy governs:

    spec:
      selector:                      # optional; absent or empty: every application
        matchLabels: {tier: regulated}   # every label equal
        tags: [pci]                      # the application carries every tag listed
        criticality: [critical, high]    # its `criticality` label is one of these
      requiresApproval: true         # the approval gate runs whatever the runbook says
      allowedPlatforms: [pextra, openstack]   # families or runbook targetPlatform names
      gpuScheduling: {allowModes: [passthrough, sriov, vgpu, mig]}
      compliance: {residency: [zone-a, zone-b], immutableAuditLog: true}

An application governed by several policies must satisfy each. `allowedPlatforms` names
platform families (the seed's words) or exact runbook `targetPlatform` values;
`PLATFORM_FAMILIES` is the table. `vmware` (the source), `nutanix` and `hyperv` are accepted
but allow no target: the runbook has no such `targetPlatform`.

GPU and SR-IOV device modes (`device_modes`, from the inventory's VM):

- `passthrough`: a VirtualPCIPassthrough device with a DirectPath (device or dynamic) backing;
- `vgpu`: a VirtualPCIPassthrough with a vmiop (vGPU) backing whose profile is time-sliced;
- `mig`: a vGPU whose profile is MIG-backed: NVIDIA names those `<board>-<slices>-<GB><series>`
  (e.g. `grid_a100-1-5c`, `grid_a100-3-20c`, `nvidia_h100-1-10c`), where time-sliced profiles
  carry one number (`grid_a100-40c`, `grid_t4-16q`); a profile naming `mig` counts too. A
  MIG-backed vGPU counts as `mig` only (its scheduling is MIG, not time-slicing);
- `sriov`: a VirtualSriovEthernetCard NIC.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from cutover.config import (
    MAX_ALIASES,
    MAX_EXPANDED_VALUES,
    ConfigError,
    Problem,
    _expansion,
    _line_of,
    _Loader,
    load_file,
    read_text,
    validate_document,
)
from cutover.inventory import VM
from cutover.runbook import TargetPlatform

#: What a request does: to a cutover, or to a wave (`pause`, `cancel`; a wave's `resume`
#: undoes its pause).
Action = Literal["start", "approve", "rollback", "extend", "finalize", "resume", "pause", "cancel"]
ACTIONS: tuple[Action, ...] = get_args(Action)

#: The roles a policy has when it writes none.
DEFAULT_ROLES: dict[str, list[Action]] = {
    "operator": ["start", "rollback", "extend", "finalize", "resume", "pause", "cancel"],
    "approver": ["approve", "rollback", "extend"],
    "auditor": [],
    "wave-runner": [
        "start",
        "approve",
        "rollback",
        "extend",
        "finalize",
        "resume",
        "pause",
        "cancel",
    ],
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ATTR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,252}$")
_REF = re.compile(r"^\$app\.(?P<attr>.+)$")
_KEY_PREFIX = "ed25519:"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"'{value}' is not a name: 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return value


def _attr_name(value: str) -> str:
    if not _ATTR.fullmatch(value):
        raise ValueError(f"'{value}' is not an attribute name (letters, digits, _ . / -)")
    return value


def _public_key(value: str) -> str:
    raw = value.removeprefix(_KEY_PREFIX)
    try:
        ok = value.startswith(_KEY_PREFIX) and len(base64.b64decode(raw, validate=True)) == 32
    except (binascii.Error, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            "expected `ed25519:` and the base64 of a 32-byte Ed25519 public key (what "
            "`cutover keys create NAME` writes)"
        )
    return value


def _principal_value(value: str) -> str:
    if value.startswith("$"):
        m = _REF.fullmatch(value)
        if m is None or not _ATTR.fullmatch(m["attr"]):
            raise ValueError(
                f"'{value}' is not a reference: write `$app.<attribute>` (e.g. $app.tenant)"
            )
    return value


def _application_value(value: str) -> str:
    if value.startswith("$"):
        raise ValueError(
            f"'{value}': references are written on the principal's side "
            "(e.g. `principal: {tenant: $app.tenant}`)"
        )
    return value


def _as_list(value: Any) -> Any:
    """A value or a list of values; numbers (a wave) are compared as text."""

    def text(v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    if isinstance(value, list):
        return [text(v) for v in value]
    return [text(value)] if isinstance(value, str | int) else value


Name = Annotated[StrictStr, AfterValidator(_name)]
AttrName = Annotated[StrictStr, AfterValidator(_attr_name)]
NonEmpty = Annotated[StrictStr, Field(min_length=1)]
PrincipalValues = Annotated[
    list[Annotated[NonEmpty, AfterValidator(_principal_value)]],
    BeforeValidator(_as_list),
    Field(min_length=1),
]
ApplicationValues = Annotated[
    list[Annotated[NonEmpty, AfterValidator(_application_value)]],
    BeforeValidator(_as_list),
    Field(min_length=1),
]


# ======================================================================= access policy


class Principal(_Model):
    """A key holder: what the signature on a request proves is this principal."""

    publicKey: Annotated[StrictStr, AfterValidator(_public_key)] | None = None
    roles: list[Name]
    tenant: NonEmpty | None = None
    team: NonEmpty | None = None


PrincipalAttr = Literal["name", "roles", "tenant", "team"]


class PrincipalMatch(_Model):
    """Conditions on the principal (all must hold; a list matches any of its items)."""

    name: PrincipalValues | None = None
    roles: PrincipalValues | None = None
    tenant: PrincipalValues | None = None
    team: PrincipalValues | None = None


class Rule(_Model):
    effect: Literal["allow", "deny"]
    actions: Annotated[list[Action], Field(min_length=1)]
    principal: PrincipalMatch = Field(default_factory=PrincipalMatch)
    application: dict[AttrName, ApplicationValues] = Field(default_factory=dict)


def _error(loc: tuple[int | str, ...], message: str, value: Any) -> InitErrorDetails:
    return InitErrorDetails(
        type=PydanticCustomError("policy", "{message}", {"message": message}),
        loc=loc,
        input=value,
    )


class AccessPolicy(_Model):
    """Who may start, approve, roll back, extend, finalize, resume which applications."""

    requireSignatures: StrictBool = True
    separationOfDuties: StrictBool = True
    principals: dict[Name, Principal] = Field(default_factory=dict)
    roles: dict[Name, list[Action]] = Field(
        default_factory=lambda: {r: list(a) for r, a in DEFAULT_ROLES.items()}
    )
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> AccessPolicy:
        # Cross references, each reported at its own field (a ValidationError raised here
        # keeps its locations, prefixed with where this policy sits in the file).
        errors: list[InitErrorDetails] = []
        roles = f"roles: {', '.join(self.roles) or 'none'}"
        for name, p in self.principals.items():
            if self.requireSignatures and p.publicKey is None:
                why = "required while `requireSignatures` is true (it verifies their signatures)"
                errors.append(_error(("principals", name, "publicKey"), why, None))
            errors += [
                _error(("principals", name, "roles", i), f"unknown role '{r}'; {roles}", r)
                for i, r in enumerate(p.roles)
                if r not in self.roles
            ]
        for i, rule in enumerate(self.rules):
            at = ("rules", i, "principal")
            errors += [
                _error((*at, "roles", j), f"unknown role '{r}'; {roles}", r)
                for j, r in enumerate(rule.principal.roles or ())
                if r not in self.roles and not r.startswith("$")
            ]
            known = f"principals: {', '.join(self.principals) or 'none'}"
            errors += [
                _error((*at, "name", j), f"unknown principal '{w}'; {known}", w)
                for j, w in enumerate(rule.principal.name or ())
                if w not in self.principals and not w.startswith("$")
            ]
        if errors:
            raise ValidationError.from_exception_data("AccessPolicy", errors)
        return self


class AccessPolicyFile(_Model):
    """An access policy file: the policy under `access:` (as a site section would hold it)."""

    access: AccessPolicy


def load_access_policy(path: str | Path) -> AccessPolicy:
    """An access policy file (`access:` at the top); ConfigError naming file and field."""
    return load_file(AccessPolicyFile, path).access


def public_keys(policy: AccessPolicy) -> dict[str, str]:
    """Principal name -> its `ed25519:...` public key (principals without one left out)."""
    return {n: p.publicKey for n, p in policy.principals.items() if p.publicKey is not None}


def application_attributes(
    application: str, labels: Mapping[str, str], wave: int | str | None = None
) -> dict[str, str]:
    """What rules and selectors match: the site's labels, plus `application` (its name)
    and `wave` (when known) over any label of those names."""
    out = dict(labels)
    out["application"] = application
    if wave is not None:
        out["wave"] = str(wave)
    return out


def _principal_attr(name: str, who: Principal, attr: PrincipalAttr) -> list[str]:
    if attr == "name":
        return [name]
    if attr == "roles":
        return list(who.roles)
    value = who.tenant if attr == "tenant" else who.team
    return [] if value is None else [value]


def _resolve(values: Sequence[str], app: Mapping[str, str]) -> set[str]:
    out: set[str] = set()
    for v in values:
        m = _REF.fullmatch(v)
        if m is None:
            out.add(v)
        elif m["attr"] in app:
            out.add(app[m["attr"]])
    return out


@dataclass(frozen=True)
class _Failed:
    """The condition of a rule a request did not meet (for the refusal's wording)."""

    side: Literal["principal", "application"]
    attr: str
    values: tuple[str, ...]


def _first_failure(rule: Rule, name: str, who: Principal, app: Mapping[str, str]) -> _Failed | None:
    """None when every condition of `rule` holds for the request, else the first that fails."""
    for attr in get_args(PrincipalAttr):
        values: list[str] | None = getattr(rule.principal, attr)
        if values is not None and not _resolve(values, app) & set(_principal_attr(name, who, attr)):
            return _Failed("principal", attr, tuple(values))
    for attr, values in rule.application.items():
        if app.get(attr) not in values:
            return _Failed("application", attr, tuple(values))
    return None


def _either(items: Iterable[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _describe(cond: _Failed, app: Mapping[str, str]) -> str:
    """A condition as words: "the same tenant", "principals with tenant retail or finance"."""
    if cond.side == "application":
        return f"applications with {cond.attr} {_either(cond.values)}"
    if cond.values == (f"$app.{cond.attr}",):
        return f"the same {cond.attr}"
    words = []
    for v in cond.values:
        m = _REF.fullmatch(v)
        words.append(v if m is None else f"the application's {m['attr']}")
    what = "name" if cond.attr == "name" else cond.attr.removesuffix("s")
    return f"principals with {what} {_either(words)}"


def _attrs_of(conds: Iterable[_Failed]) -> tuple[list[PrincipalAttr], list[str]]:
    """The principal and application attributes some conditions look at."""
    p_attrs: list[PrincipalAttr] = []
    a_attrs: list[str] = []
    for c in conds:
        if c.side == "principal":
            if c.attr != "name" and c.attr not in p_attrs:
                p_attrs.append(c.attr)  # type: ignore[arg-type]  # a PrincipalAttr by side
            a_attrs += [m["attr"] for v in c.values if (m := _REF.fullmatch(v))]
        else:
            a_attrs.append(c.attr)
    return p_attrs, list(dict.fromkeys(a_attrs))


def _who(name: str, who: Principal, attrs: Sequence[PrincipalAttr]) -> str:
    parts = []
    for attr in attrs:
        values = _principal_attr(name, who, attr)
        parts.append(f"{attr} {', '.join(values)}" if values else f"no {attr.removesuffix('s')}")
    return f"{name} ({'; '.join(parts)})" if parts else name


def _what(app: Mapping[str, str], attrs: Sequence[str]) -> str:
    name = app.get("application", "the application")
    parts = [f"{a} {app[a]}" if a in app else f"no {a}" for a in attrs if a != "application"]
    return f"{name} ({'; '.join(parts)})" if parts else name


def _conditions(rule: Rule) -> list[_Failed]:
    out = [
        _Failed("principal", attr, tuple(values))
        for attr in get_args(PrincipalAttr)
        if (values := getattr(rule.principal, attr)) is not None
    ]
    return out + [_Failed("application", a, tuple(v)) for a, v in rule.application.items()]


def authorize(
    policy: AccessPolicy,
    principal: str,
    action: Action,
    app: Mapping[str, str],
    *,
    started_by: str | None = None,
) -> str | None:
    """None when `principal` may do `action` on the application whose attributes are `app`
    (`application_attributes`); else one line saying who was refused what, by which role,
    rule or duty, and what to change. Pure and deterministic (the workflow calls it)."""
    target = app.get("application", "the application")
    who = policy.principals.get(principal)
    if who is None:
        return (
            f"'{principal}' may not {action} {target}: not a principal of the access policy; "
            "add it under access.principals with its publicKey and roles"
        )
    if not any(action in policy.roles.get(r, ()) for r in who.roles):
        grantors = [r for r, acts in policy.roles.items() if action in acts]
        fix = (
            f"give {principal} a role that grants it ({', '.join(grantors)}) in "
            f"access.principals.{principal}.roles"
            if grantors
            else f"no role grants {action}: add it to a role under access.roles"
        )
        return (
            f"{_who(principal, who, ['roles'])} may not {action} {target}: no role of "
            f"theirs grants {action}; {fix}"
        )
    if action == "approve" and policy.separationOfDuties and started_by == principal:
        return (
            f"{principal} may not approve {target}: {principal} started it, and "
            "access.separationOfDuties wants a different approver"
        )
    if not policy.rules:
        return None
    missed: list[tuple[int, _Failed]] = []
    for i, rule in enumerate(policy.rules):
        if action not in rule.actions:
            continue
        failed = _first_failure(rule, principal, who, app)
        if failed is None:
            if rule.effect == "allow":
                return None
            conds = _conditions(rule)
            p_attrs, a_attrs = _attrs_of(conds)
            scope = " and ".join(_describe(c, app) for c in conds) or "every request"
            return (
                f"{_who(principal, who, p_attrs)} may not {action} {_what(app, a_attrs)}: "
                f"rule {i + 1} (access.rules[{i}]) denies {action} to {scope}; another "
                "principal must do it, or change that rule"
            )
        if rule.effect == "allow":
            missed.append((i, failed))
    if not missed:
        return (
            f"{principal} may not {action} {target}: no rule of access.rules allows {action} "
            "(with rules, what no rule allows is refused); add an allow rule for it"
        )
    i, failed = missed[0]
    p_attrs, a_attrs = _attrs_of([failed])
    rest = [str(j + 1) for j, _ in missed[1:]]
    others = f"; rule(s) {', '.join(rest)} did not match either" if rest else ""
    return (
        f"{_who(principal, who, p_attrs)} may not {action} {_what(app, a_attrs)}: rule "
        f"{i + 1} (access.rules[{i}]) allows {_describe(failed, app)} only{others}"
    )


def authorize_all(
    policy: AccessPolicy,
    principal: str,
    action: Action,
    apps: Iterable[Mapping[str, str]],
    *,
    started_by: str | None = None,
) -> str | None:
    """A request on several applications at once (a wave's approve, rollback, ...): None
    when `authorize` allows it on every one, else the first refusal."""
    for app in apps:
        refusal = authorize(policy, principal, action, app, started_by=started_by)
        if refusal is not None:
            return refusal
    return None


# ======================================================================= WorkloadPolicy

API_VERSION = "policy.virtualmachine.space/v1"

#: `allowedPlatforms` names -> the runbook `targetPlatform`s they allow. The seed writes
#: families (its Terraform's `platform_order`); exact targetPlatform names are accepted too.
#: vmware is the source platform, nutanix (AHV) and hyperv have no runbook target: allowed
#: words that allow no target.
PLATFORM_FAMILIES: dict[str, tuple[TargetPlatform, ...]] = {
    "vmware": (),
    "pextra": ("pextra-cloud",),
    "nutanix": (),
    "openstack": ("openstack",),
    "proxmox": ("proxmox",),
    "kvm": ("kvm-libvirt", "libvirt"),
    "hyperv": (),
}
TARGET_PLATFORMS: tuple[TargetPlatform, ...] = get_args(TargetPlatform)

GpuMode = Literal["passthrough", "sriov", "vgpu", "mig"]
GPU_MODES: tuple[GpuMode, ...] = get_args(GpuMode)


def _platform(value: str) -> str:
    if value not in PLATFORM_FAMILIES and value not in TARGET_PLATFORMS:
        raise ValueError(
            f"unknown platform '{value}'; families: {', '.join(PLATFORM_FAMILIES)}; "
            f"target platforms: {', '.join(TARGET_PLATFORMS)}"
        )
    return value


def _policy_name(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?", value):
        raise ValueError(
            f"'{value}' is not a policy name: lowercase letters, digits, '-' and '.', starting "
            "and ending with a letter or digit"
        )
    return value


def allowed_targets(platforms: Iterable[str]) -> list[TargetPlatform]:
    """The runbook targetPlatforms an `allowedPlatforms` list allows, in the table's order."""
    allowed: set[str] = set()
    for p in platforms:
        allowed |= set(PLATFORM_FAMILIES.get(p, ()))
        if p in TARGET_PLATFORMS:
            allowed.add(p)
    return [t for t in TARGET_PLATFORMS if t in allowed]


class Metadata(_Model):
    name: Annotated[StrictStr, AfterValidator(_policy_name)]
    #: Informational (Kubernetes style); selection is `spec.selector`'s.
    labels: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    annotations: dict[StrictStr, StrictStr] = Field(default_factory=dict)


class Selector(_Model):
    """Which applications a policy governs: every condition written must hold."""

    matchLabels: dict[AttrName, StrictStr] = Field(default_factory=dict)
    #: The application carries every tag listed.
    tags: list[NonEmpty] = Field(default_factory=list)
    #: Its `criticality` label is one of these.
    criticality: list[NonEmpty] | None = None

    def matches(self, app: Mapping[str, str], tags: Sequence[str]) -> bool:
        return (
            all(app.get(k) == v for k, v in self.matchLabels.items())
            and set(self.tags) <= set(tags)
            and (self.criticality is None or app.get("criticality") in self.criticality)
        )


class GpuScheduling(_Model):
    #: The device modes a governed application's VMs may have (`[]`: none).
    allowModes: list[GpuMode]


class Compliance(_Model):
    #: The zones the target pools of a governed application may be in.
    residency: Annotated[list[NonEmpty], Field(min_length=1)] | None = None
    #: A governed cutover does not finalize until its audit record is written.
    immutableAuditLog: StrictBool = False


class WorkloadSpec(_Model):
    selector: Selector | None = None
    #: The approval gate runs whatever the runbook says.
    requiresApproval: StrictBool = False
    #: Platform families or targetPlatform names (`PLATFORM_FAMILIES`); absent: any.
    allowedPlatforms: (
        Annotated[list[Annotated[StrictStr, AfterValidator(_platform)]], Field(min_length=1)] | None
    ) = None
    gpuScheduling: GpuScheduling | None = None
    compliance: Compliance = Field(default_factory=Compliance)


class WorkloadPolicy(_Model):
    apiVersion: Literal["policy.virtualmachine.space/v1"]
    kind: Literal["WorkloadPolicy"]
    metadata: Metadata
    spec: WorkloadSpec

    @property
    def name(self) -> str:
        return self.metadata.name

    def governs(self, app: Mapping[str, str], tags: Sequence[str]) -> bool:
        sel = self.spec.selector
        return sel is None or sel.matches(app, tags)


def _documents(text: str, file: str) -> list[tuple[Any, yaml.Node]]:
    """Every document of a YAML stream, with its node (for lines). What
    `cutover.config.parse_yaml` does for one document (the same loader: no duplicate keys;
    the same alias limits, over the whole stream), for many."""
    loader = _Loader(text)
    out: list[tuple[Any, yaml.Node]] = []
    aliases = values = 0
    try:
        while loader.check_node():
            node = loader.get_node()
            assert node is not None  # check_node() said there is one
            a, v = _expansion(node)
            aliases, values = aliases + a, values + v
            if aliases > MAX_ALIASES or values > MAX_EXPANDED_VALUES:
                raise ConfigError([Problem(file, f"documents[{len(out)}]", (
                    f"refused: {aliases} alias uses expanding to {values:,} values (limits: "
                    f"{MAX_ALIASES:,} aliases, {MAX_EXPANDED_VALUES:,} values); write the "
                    "values out instead of nesting aliases"))])  # fmt: skip
            out.append((loader.construct_document(node), node))
    except ConfigError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or str(exc)
        raise ConfigError([Problem(file, "", f"invalid YAML: {problem}", line)]) from None
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError([Problem(file, "", f"invalid YAML: {reason}")]) from None
    except RecursionError:
        raise ConfigError([Problem(file, "", "invalid YAML: nested too deeply")]) from None
    except Exception as exc:  # PyYAML constructors raise plain errors, e.g. `a: 2024-02-30`
        msg = f"invalid YAML: cannot read a value ({type(exc).__name__}: {exc})"
        raise ConfigError([Problem(file, "", msg)]) from None
    finally:
        loader.dispose()
    return out


def load_workload_policies(path: str | Path) -> list[WorkloadPolicy]:
    """Every WorkloadPolicy in one file (one or many YAML documents; empty ones skipped).
    ConfigError with every problem, each at `documents[i].field.path` with its line."""
    file = str(path)
    problems: list[Problem] = []
    policies: list[WorkloadPolicy] = []
    first: dict[str, int] = {}
    for i, (data, node) in enumerate(_documents(read_text(path), file)):
        if data is None:
            continue
        try:
            policy = validate_document(WorkloadPolicy, data, file, node)
        except ConfigError as exc:
            problems += [
                Problem(p.file, f"documents[{i}]" + ("." + p.path if p.path else ""), p.message,
                        p.line)
                for p in exc.problems
            ]  # fmt: skip
            continue
        if policy.name in first:
            problems.append(Problem(file, f"documents[{i}].metadata.name",
                                    f"policy '{policy.name}' is defined twice (first in "
                                    f"documents[{first[policy.name]}]); names are unique",
                                    _line_of(node, ["metadata", "name"])))  # fmt: skip
            continue
        first[policy.name] = i
        policies.append(policy)
    if problems:
        raise ConfigError(problems)
    return policies


def governing(
    policies: Sequence[WorkloadPolicy], app: Mapping[str, str], tags: Sequence[str]
) -> list[WorkloadPolicy]:
    """The policies whose selector chooses this application (in file order)."""
    return [p for p in policies if p.governs(app, tags)]


def requires_approval(
    policies: Sequence[WorkloadPolicy], app: Mapping[str, str], tags: Sequence[str]
) -> bool:
    """Whether a governing policy forces the approval gate."""
    return any(p.spec.requiresApproval for p in governing(policies, app, tags))


def immutable_audit_log(
    policies: Sequence[WorkloadPolicy], app: Mapping[str, str], tags: Sequence[str]
) -> bool:
    """Whether a governing policy wants the audit record written before finalize."""
    return any(p.spec.compliance.immutableAuditLog for p in governing(policies, app, tags))


ViolationField = Literal["approval", "targetPlatform", "pool", "vm"]


@dataclass(frozen=True)
class Violation:
    """One rule of one policy an application's cutover would break."""

    policy: str
    #: The policy's rule, e.g. `spec.allowedPlatforms`.
    rule: str
    #: What breaks it: the runbook's approval or targetPlatform, a target pool, a VM.
    field: ViolationField
    #: The pool's or VM's name, the platform; "" for approval.
    subject: str
    #: The whole sentence: the policy, the rule, the field, the value, what to change.
    message: str

    def __str__(self) -> str:
        return self.message


def find_violations(
    policies: Sequence[WorkloadPolicy],
    *,
    application: str,
    app: Mapping[str, str],
    tags: Sequence[str],
    target_platform: str,
    approval_required: bool,
    target_zones: Mapping[str, str | None],
    vm_devices: Mapping[str, Sequence[str]],
) -> list[Violation]:
    """Every rule of every governing policy the cutover would break (see
    `workload_violations`)."""
    return [
        Violation(p.name, rule, what, subject, f"{application}: policy '{p.name}' {rule}: {text}")
        for p in governing(policies, app, tags)
        for rule, what, subject, text in _broken(
            p.spec, target_platform, approval_required, target_zones, vm_devices
        )
    ]


def _broken(
    spec: WorkloadSpec,
    target_platform: str,
    approval_required: bool,
    target_zones: Mapping[str, str | None],
    vm_devices: Mapping[str, Sequence[str]],
) -> Iterable[tuple[str, ViolationField, str, str]]:
    """The rules of one policy broken: (rule, field, subject, what is wrong and the fix)."""
    if spec.requiresApproval and not approval_required:
        yield ("spec.requiresApproval", "approval", "",
               "the runbook's approval.required is false; require approval (approval.required: "
               "true, with approvers): the workflow runs the approval gate anyway")  # fmt: skip
    if spec.allowedPlatforms is not None:
        allowed = allowed_targets(spec.allowedPlatforms)
        if target_platform not in allowed:
            yield ("spec.allowedPlatforms", "targetPlatform", target_platform,
                   f"runbook targetPlatform '{target_platform}' is not allowed (allowed: "
                   f"{', '.join(allowed) or 'no target platform'}, from "
                   f"{', '.join(spec.allowedPlatforms)}); target an allowed platform")  # fmt: skip
    zones = spec.compliance.residency
    if zones is not None:
        for pool, zone in sorted(target_zones.items()):
            if zone in zones:
                continue
            where = "has no zone (the site gives none)" if zone is None else f"is in zone '{zone}'"
            yield ("spec.compliance.residency", "pool", pool,
                   f"target pool '{pool}' {where}, not in {', '.join(zones)}; map the "
                   "application's disks to a pool in an allowed zone")  # fmt: skip
    if spec.gpuScheduling is not None:
        modes_ok = spec.gpuScheduling.allowModes
        for vm, modes in sorted(vm_devices.items()):
            for mode in dict.fromkeys(modes):
                if mode not in modes_ok:
                    yield ("spec.gpuScheduling.allowModes", "vm", vm,
                           f"VM '{vm}' has a {mode} device (allowed: "
                           f"{', '.join(modes_ok) or 'none'}); remove the device, or govern "
                           "the application by a policy that allows it")  # fmt: skip


def workload_violations(
    policies: Sequence[WorkloadPolicy],
    *,
    application: str,
    app: Mapping[str, str],
    tags: Sequence[str],
    target_platform: str,
    approval_required: bool,
    target_zones: Mapping[str, str | None],
    vm_devices: Mapping[str, Sequence[str]],
) -> list[str]:
    """Each violation as one line naming the application, the policy (`metadata.name`), the
    rule (`spec.allowedPlatforms`, ...) and the field with its value. `target_zones`: target
    pool -> its zone (None: the site gives none, a violation under residency); `vm_devices`:
    VM -> its device modes (`device_modes`)."""
    found = find_violations(
        policies,
        application=application,
        app=app,
        tags=tags,
        target_platform=target_platform,
        approval_required=approval_required,
        target_zones=target_zones,
        vm_devices=vm_devices,
    )
    return [v.message for v in found]


# ---------------------------------------------------------------- devices, from inventory

#: A MIG-backed vGPU profile: `<board>-<slices>-<memory GB><series>` (grid_a100-1-5c), or
#: one naming MIG outright. Time-sliced profiles carry one number (grid_a100-40c).
_MIG_PROFILE = re.compile(r"(-\d+-\d+[a-z]+$)|mig", re.IGNORECASE)


def is_mig_profile(profile: str) -> bool:
    return _MIG_PROFILE.search(profile.strip()) is not None


def device_modes(vm: VM) -> list[GpuMode]:
    """The GPU/SR-IOV modes of a VM's devices (as the inventory describes them), in
    `GPU_MODES` order, each once. The vSphere inventory gives `pciDevices` (kind
    passthrough, dynamic-passthrough or vgpu, the vGPU profile in `detail`) and `nics`
    (`sriov` for a VirtualSriovEthernetCard)."""
    found: set[GpuMode] = set()
    for dev in vm.pciDevices:
        if dev.kind in ("passthrough", "dynamic-passthrough"):
            found.add("passthrough")
        elif dev.kind == "vgpu":
            found.add("mig" if is_mig_profile(dev.detail) else "vgpu")
    if any(nic.sriov for nic in vm.nics):
        found.add("sriov")
    return [m for m in GPU_MODES if m in found]
