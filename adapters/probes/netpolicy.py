"""The `nftables-policy` probe: the live ruleset of one nftables chain against the flows an
application needs (`nft -j list table`, read only).

A rule is read into what it accepts (or drops): protocols, destination ports, source
networks. Matches the probe knows: `tcp|udp dport` (a port, a set, a range), `ip|ip6
saddr` (an address, a prefix, a set), `meta l4proto`, `ip protocol`, `meta nfproto`, and
the two that open nothing to the outside, `ct state established,related` and `iif lo`.
An accept rule with any other match (or a negation, a jump) cannot be shown to open only
what it should: it counts as an extra opening, named by its handle. Statements that do not
decide (counter, log, limit, comment) are ignored.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import dataclass, field
from typing import Any

from adapters.probes.result import check_result
from cutover.models import CheckInput, CheckResult
from cutover.site import NftablesPolicyProbe, NftFlow

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
ANY4 = ipaddress.ip_network("0.0.0.0/0")
ANY6 = ipaddress.ip_network("::/0")
L4 = ("tcp", "udp")
_BENIGN_CT = {"established", "related"}
_NEUTRAL = {"counter", "log", "limit", "comment", "meter", "quota"}
_VERDICTS = {"accept", "drop", "reject", "jump", "goto", "return", "continue", "queue"}


@dataclass
class Rule:
    """One rule as the probe reads it. `None` means "not restricted"."""

    handle: int
    text: str
    verdict: str | None = None
    protos: set[str] | None = None
    ports: list[tuple[int, int]] | None = None
    sources: list[Network] | None = None
    #: `ipv4`/`ipv6` when the rule matches one family only (nfproto, ip/ip6 saddr).
    nfproto: str | None = None
    established_only: bool = False
    loopback_only: bool = False
    #: Why the probe cannot read the rule (a match it does not know), if it cannot.
    unknown: list[str] = field(default_factory=list)
    target: str | None = None

    def families(self, table_family: str) -> list[Network]:
        if self.sources is not None:
            return self.sources
        if self.nfproto == "ipv4" or table_family == "ip":
            return [ANY4]
        if self.nfproto == "ipv6" or table_family == "ip6":
            return [ANY6]
        return [ANY4, ANY6]


def _ports(right: Any) -> list[tuple[int, int]] | None:
    if isinstance(right, int):
        return [(right, right)]
    if isinstance(right, dict) and "range" in right:
        lo, hi = right["range"]
        return [(int(lo), int(hi))]
    if isinstance(right, dict) and "set" in right:
        out: list[tuple[int, int]] = []
        for item in right["set"]:
            got = _ports(item)
            if got is None:
                return None
            out += got
        return out
    return None


def _networks(right: Any) -> list[Network] | None:
    try:
        if isinstance(right, str):
            return [ipaddress.ip_network(right)]
        if isinstance(right, dict) and "prefix" in right:
            p = right["prefix"]
            return [ipaddress.ip_network(f"{p['addr']}/{p['len']}", strict=False)]
        if isinstance(right, dict) and "range" in right:
            lo, hi = (ipaddress.ip_address(a) for a in right["range"])
            return list(ipaddress.summarize_address_range(lo, hi))
        if isinstance(right, dict) and "set" in right:
            out: list[Network] = []
            for item in right["set"]:
                got = _networks(item)
                if got is None:
                    return None
                out += got
            return out
    except (ValueError, TypeError, KeyError):
        return None
    return None


def _strings(right: Any) -> set[str] | None:
    if isinstance(right, str):
        return {right}
    if isinstance(right, list) and all(isinstance(x, str) for x in right):
        return set(right)
    if isinstance(right, dict) and "set" in right:
        return _strings(right["set"])
    return None


def _intersect(a: set[str] | None, b: set[str]) -> set[str]:
    return b if a is None else a & b


def parse_rule(raw: dict[str, Any]) -> Rule:
    rule = Rule(handle=int(raw.get("handle", 0)), text=_describe(raw.get("expr", [])))
    for expr in raw.get("expr", []):
        (kind, body), *_ = expr.items()
        if kind in _NEUTRAL:
            continue
        if kind in _VERDICTS:
            rule.verdict = kind
            if kind in ("jump", "goto") and isinstance(body, dict):
                rule.target = body.get("target")
            continue
        if kind != "match" or body.get("op") not in ("==", "in"):
            rule.unknown.append(_describe([expr]))
            continue
        left, right = body.get("left"), body.get("right")
        payload = left.get("payload") if isinstance(left, dict) else None
        meta = left.get("meta") if isinstance(left, dict) else None
        ct = left.get("ct") if isinstance(left, dict) else None
        if payload and payload.get("protocol") in L4 and payload.get("field") == "dport":
            ports = _ports(right)
            if ports is None:
                rule.unknown.append(_describe([expr]))
                continue
            rule.protos = _intersect(rule.protos, {payload["protocol"]})
            rule.ports = ports if rule.ports is None else _port_and(rule.ports, ports)
        elif (
            payload and payload.get("protocol") in ("ip", "ip6") and payload.get("field") == "saddr"
        ):
            nets = _networks(right)
            if nets is None:
                rule.unknown.append(_describe([expr]))
                continue
            rule.nfproto = "ipv4" if payload["protocol"] == "ip" else "ipv6"
            rule.sources = nets if rule.sources is None else _net_and(rule.sources, nets)
        elif (meta and meta.get("key") == "l4proto") or (
            payload
            and payload.get("protocol") in ("ip", "ip6")
            and payload.get("field") in ("protocol", "nexthdr")
        ):
            protos = _strings(right)
            if protos is None:
                rule.unknown.append(_describe([expr]))
                continue
            rule.protos = _intersect(rule.protos, protos)
        elif meta and meta.get("key") == "nfproto" and right in ("ipv4", "ipv6"):
            rule.nfproto = right
        elif ct and ct.get("key") == "state" and (_strings(right) or {"?"}) <= _BENIGN_CT:
            rule.established_only = True
        elif meta and meta.get("key") in ("iif", "iifname") and right == "lo":
            rule.loopback_only = True
        else:
            rule.unknown.append(_describe([expr]))
    return rule


def _port_and(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = [(max(x[0], y[0]), min(x[1], y[1])) for x in a for y in b]
    return [r for r in out if r[0] <= r[1]]


def _net_and(a: list[Network], b: list[Network]) -> list[Network]:
    out: list[Network] = []
    for x in a:
        for y in b:
            if x.version != y.version:
                continue
            if x.subnet_of(y):  # type: ignore[arg-type]
                out.append(x)
            elif y.subnet_of(x):  # type: ignore[arg-type]
                out.append(y)
    return out


def _describe(exprs: list[dict[str, Any]]) -> str:
    """A short text of a rule's expressions (nft's JSON, compacted), for messages."""
    parts = []
    for expr in exprs:
        (kind, body), *_ = expr.items()
        if kind == "match" and isinstance(body, dict):
            left = body.get("left")
            name = " ".join(
                str(v) for inner in (left or {}).values() if isinstance(inner, dict)
                for v in inner.values()
            ) if isinstance(left, dict) else str(left)  # fmt: skip
            op = "" if body.get("op") in ("==", "in") else f"{body.get('op')} "
            parts.append(f"{name} {op}{_value(body.get('right'))}")
        elif kind in _VERDICTS:
            target = body.get("target") if isinstance(body, dict) else None
            parts.append(f"{kind} {target}" if target else kind)
        else:
            parts.append(kind)
    return " ".join(parts)


def _value(right: Any) -> str:
    if isinstance(right, dict) and "set" in right:
        return "{ " + ", ".join(_value(x) for x in right["set"]) + " }"
    if isinstance(right, dict) and "range" in right:
        return "-".join(str(x) for x in right["range"])
    if isinstance(right, dict) and "prefix" in right:
        return f"{right['prefix']['addr']}/{right['prefix']['len']}"
    if isinstance(right, list):
        return ",".join(str(x) for x in right)
    return str(right)


# ------------------------------------------------------------------- the judgement


def flow_networks(flow: NftFlow, table_family: str) -> list[Network]:
    if flow.source != "any":
        return [ipaddress.ip_network(flow.source)]
    return {"ip": [ANY4], "ip6": [ANY6]}.get(table_family, [ANY4, ANY6])


def describe_flow(flow: NftFlow) -> str:
    return f"{flow.proto}/{flow.port} from {flow.source}"


def _protocol_and_port(rule: Rule, flow: NftFlow) -> bool:
    """The rule is a plain match that takes the flow's protocol and port."""
    if rule.unknown or rule.established_only or rule.loopback_only:
        return False
    if rule.protos is not None and flow.proto not in rule.protos:
        return False
    return rule.ports is None or any(lo <= flow.port <= hi for lo, hi in rule.ports)


def _matches_flow(rule: Rule, flow: NftFlow, net: Network, table_family: str) -> bool:
    """The rule's matches take every packet of the flow from `net` (accepts: serves it)."""
    return _protocol_and_port(rule, flow) and any(
        net.version == s.version and net.subnet_of(s)  # type: ignore[arg-type]
        for s in rule.families(table_family)
    )


def _overlaps_flow(rule: Rule, flow: NftFlow, net: Network, table_family: str) -> bool:
    """The rule's matches take some packets of the flow from `net` (drops: shadow it)."""
    return _protocol_and_port(rule, flow) and any(
        net.overlaps(s) for s in rule.families(table_family)
    )


def _ranges(ports: set[int]) -> str:
    out: list[str] = []
    run: list[int] = []
    for p in sorted(ports):
        if run and p == run[-1] + 1:
            run.append(p)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [p]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def extra_openings(rule: Rule, flows: list[NftFlow], table_family: str) -> list[str]:
    """What an accept rule opens beyond the required flows (empty: nothing)."""
    if rule.established_only and not rule.unknown and rule.ports is None:
        return []
    if rule.loopback_only and not rule.unknown and rule.ports is None:
        return []
    if rule.verdict in ("jump", "goto"):
        return [f"{rule.verdict} to chain {rule.target}: not followed by the probe"]
    if rule.unknown:
        return [f"matches the probe cannot verify ({'; '.join(rule.unknown)})"]
    protos = rule.protos
    if protos is None:
        return ["every protocol" + ("" if rule.ports is None else " on those ports")]
    extra: list[str] = []
    for proto in sorted(protos):
        if proto not in L4:
            extra.append(f"protocol {proto}")
            continue
        for src in rule.families(table_family):
            wanted = {
                f.port
                for f in flows
                if f.proto == proto
                and any(
                    src.version == n.version and src.subnet_of(n)  # type: ignore[arg-type]
                    for n in flow_networks(f, table_family)
                )
            }
            if rule.ports is None:
                extra.append(f"{proto}/every port from {src}")
                continue
            opened = {p for lo, hi in rule.ports for p in range(lo, hi + 1)}
            beyond = opened - wanted
            if beyond:
                extra.append(f"{proto}/{_ranges(beyond)} from {src}")
    return extra


@dataclass
class Verdict:
    policy: str | None
    #: the chain itself: missing, not a base chain, a policy other than drop
    chain: list[str]
    missing: list[str]
    extra: list[str]
    accepted: int


def judge(doc: dict[str, Any], probe: NftablesPolicyProbe) -> Verdict:
    """The ruleset (`nft -j list table` output) against the probe's flows."""
    items = doc.get("nftables", [])
    chain = next(
        (i["chain"] for i in items if "chain" in i and i["chain"].get("name") == probe.chain),
        None,
    )
    where = f"table {probe.family} {probe.table}"
    if chain is None:
        return Verdict(None, [f"{where} has no chain {probe.chain!r}"], [], [], 0)
    policy = chain.get("policy")
    chain_problems: list[str] = []
    missing: list[str] = []
    if chain.get("hook") is None:
        chain_problems.append(
            f"chain {probe.chain!r} is not a base chain (no hook): nothing enters it"
        )
    elif policy != "drop":
        chain_problems.append(
            f"chain {probe.chain!r} policy is {policy}, not drop: everything else is open"
        )
    rules = [
        parse_rule(i["rule"])
        for i in items
        if "rule" in i and i["rule"].get("chain") == probe.chain
    ]
    accepted = 0
    for flow in probe.allow:
        problems: list[str] = []
        for net in flow_networks(flow, probe.family):
            blocker = None
            served = None
            for r in rules:
                if r.verdict in ("drop", "reject") and _overlaps_flow(r, flow, net, probe.family):
                    blocker = blocker or r
                if r.verdict == "accept" and _matches_flow(r, flow, net, probe.family):
                    served = r
                    break
            if served is None:
                problems.append(f"no rule accepts {flow.proto}/{flow.port} from {net}")
            elif blocker is not None:
                problems.append(
                    f"{flow.proto}/{flow.port} from {net} is dropped by rule handle "
                    f"{blocker.handle} ({blocker.text}) before its accept (handle {served.handle})"
                )
        if problems:
            missing.append(f"{describe_flow(flow)}: " + "; ".join(problems))
        else:
            accepted += 1
    extra = []
    for r in rules:
        if r.verdict not in ("accept", "jump", "goto"):
            continue
        opened = extra_openings(r, probe.allow, probe.family)
        if opened:
            extra.append(f"rule handle {r.handle} ({r.text}) opens {', '.join(opened)}")
    return Verdict(policy, chain_problems, missing, extra, accepted)


def nft_argv(probe: NftablesPolicyProbe) -> list[str]:
    argv = [probe.nftBinary, "-j", "list", "table", probe.family, probe.table]
    return ["ip", "netns", "exec", probe.netns, *argv] if probe.netns else argv


def nftables_probe(inp: CheckInput, probe: NftablesPolicyProbe) -> CheckResult:
    flows = ", ".join(describe_flow(f) for f in probe.allow) or "no flow"
    where = f"{probe.family} {probe.table}/{probe.chain}" + (
        f" in netns {probe.netns}" if probe.netns else ""
    )
    threshold = f"{where}: policy drop; accepted: {flows}; nothing else open"
    argv = nft_argv(probe)
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=probe.timeoutSeconds, check=False)
    except OSError as exc:
        return check_result(inp, False, "not read", threshold, f"{argv[0]}: {exc.strerror}")
    except subprocess.TimeoutExpired:
        return check_result(inp, False, "not read", threshold, f"{' '.join(argv)}: timed out")
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-300:]
        return check_result(
            inp, False, "not read", threshold, f"{' '.join(argv)}: exit {proc.returncode}: {err}"
        )
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        return check_result(inp, False, "not read", threshold, "nft -j printed no JSON")
    v = judge(doc, probe)
    measured = (
        f"policy {v.policy or 'none'}, {v.accepted} of {len(probe.allow)} required flows "
        f"accepted, {len(v.extra)} extra opening(s)"
    )
    detail = "; ".join(
        v.chain + [f"missing: {m}" for m in v.missing] + [f"extra: {e}" for e in v.extra]
    )
    passed = not (v.chain or v.missing or v.extra)
    return check_result(inp, passed, measured, threshold, detail)
