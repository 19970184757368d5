"""From an inventory and its dependencies to waves: deterministic, every placement explained.

Rules (the issue's "Planning rules"):

- A VM's application comes from its custom attribute or tag (`appAttribute`), else the
  `appPattern` regex's group ``app`` over its name, else the mapping CSV; a VM with none is
  unplanned, with the reason. Templates are excluded.
- An application with a critical concern on any VM (RDM, multi-writer, FT, independent
  disks, passthrough, vGPU, an unsupported guest OS, ...) is unplanned with the concern: a
  person decides. So is everything in a dependency cycle with it.
- Class: holdout (wave 3) for special workloads that are only warnings (SR-IOV, high latency
  sensitivity), licensing-sensitive guests and applications without an owner; else factory
  (wave 1) for non-production, not high-criticality, stateless applications up to
  `factoryMaxGiB`; else stateful / business-critical (wave 2).
- Applications in one strongly connected component of the dependency graph take the class
  of the most demanding member, so they move in one wave; inside a class, components are
  ordered dependencies first, then split into waves by `maxWaveApps` and `maxWaveTiB`.
- `dependsOn` (A depends on B when A connects to B) within a wave, between components.

Complexity: 1, +1 per VM beyond the first (up to 4), +2 stateful, +2 database, +3 per
special-workload concern, +1 licensing, +1 no owner, +1 high criticality, +1 per connected
application (up to 5), +1 over 200 GiB, +2 over 1 TiB. Estimated hours: the data at
`transferMbps` plus `perVmHours` per VM; a wave: its applications at `waveConcurrency`
at once, never less than its longest.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter, defaultdict
from collections.abc import Iterable

from cutover.concerns import Concern, dns_label, evaluate
from cutover.inventory import VM, Inventory
from cutover.plan.model import (
    CLASS_WAVE,
    AppFacts,
    Criticality,
    DependencyRead,
    ExcludedVM,
    Mapping,
    Plan,
    PlannedApp,
    PlanPolicy,
    PlanResult,
    Summary,
    UnplannedVM,
    WaveClass,
    WavePlan,
)

GiB = 1 << 30
TiB = 1 << 40

#: Database servers by port and by process name.
DB_PORTS: dict[int, str] = {
    5432: "postgres",
    3306: "mysql",
    1433: "sqlserver",
    1521: "oracle",
    27017: "mongodb",
    6379: "redis",
    9042: "cassandra",
    50000: "db2",
    5984: "couchdb",
    9200: "elasticsearch",
    8086: "influxdb",
    26257: "cockroachdb",
    7000: "cassandra",
    5000: "db2",
}
DB_PROCESSES: dict[str, str] = {
    "postgres": "postgres",
    "postmaster": "postgres",
    "mysqld": "mysql",
    "mariadbd": "mysql",
    "sqlservr": "sqlserver",
    "sqlservr.exe": "sqlserver",
    "oracle": "oracle",
    "tnslsnr": "oracle",
    "mongod": "mongodb",
    "redis-server": "redis",
    "db2sysc": "db2",
    "cassandra": "cassandra",
    "couchdb": "couchdb",
    "elasticsearch": "elasticsearch",
    "influxd": "influxdb",
    "cockroach": "cockroachdb",
    "database": "database",
    "db": "database",
}
#: Licensing-sensitive database engines (by the name above).
LICENSED_DB = {"sqlserver": "SQL Server", "oracle": "Oracle Database", "db2": "IBM Db2"}

#: The concerns that make a VM a special workload (critical ones make it unplanned).
SPECIAL = frozenset(
    {
        "disk.rdm",
        "disk.shared",
        "vm.fault_tolerance",
        "disk.independent",
        "device.passthrough",
        "device.vgpu",
        "nic.sriov",
        "guest_os.unsupported",
        "vm.latency_sensitivity_high",
    }
)
_RANK: dict[WaveClass, int] = {"factory": 0, "stateful": 1, "holdout": 2}
_CRIT: tuple[Criticality, ...] = ("low", "medium", "high")


def _attr(vm: VM, name: str) -> str | None:
    """A custom attribute (case-insensitive name), else a tag of that category."""
    low = name.lower()
    for key, value in sorted(vm.customAttributes.items()):
        if key.lower() == low and value.strip():
            return value.strip()
    for tag in sorted(vm.tags, key=lambda t: (t.category, t.name)):
        if tag.category.lower() == low:
            return tag.name
    return None


def _db_of(port: int | None, kind: str) -> str | None:
    name = DB_PROCESSES.get(kind.lower()) if kind else None
    if name is None and kind.lower().endswith(".exe"):
        name = DB_PROCESSES.get(kind.lower().removesuffix(".exe"))
    return name or (DB_PORTS.get(port) if port is not None else None)


def strongly_connected(nodes: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (chains of thousands of
    applications would overflow the recursion), each sorted, in a deterministic order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(edges.get(root, ())))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, succ = work[-1]
            if succ:
                nxt = succ.pop(0)
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(edges.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp: list[str] = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                out.append(sorted(comp))
    return out


class _Unit:
    """A strongly connected component: the applications that move together."""

    def __init__(self, apps: list[AppFacts]) -> None:
        self.apps = apps
        self.key = apps[0].name
        self.names = [a.name for a in apps]
        self.bytes = sum(a.dataGiB for a in apps) * GiB


def make_plan(
    inventory: Inventory,
    dependencies: DependencyRead,
    policy: PlanPolicy,
    mapping: dict[str, Mapping] | None = None,
    missing_sheets: Iterable[str] = (),
) -> PlanResult:
    mapping = mapping or {}
    pattern = re.compile(policy.appPattern) if policy.appPattern else None
    vms = sorted(inventory.vms, key=lambda v: (v.name, v.moref))
    excluded = [ExcludedVM(vm=v.name, reason="template: never planned") for v in vms if v.template]
    unplanned: dict[str, list[str]] = {}
    app_of: dict[str, str] = {}  # moref -> application label
    raw_names: dict[str, set[str]] = defaultdict(set)
    members: dict[str, list[VM]] = defaultdict(list)
    how: dict[str, str] = {}
    for vm in vms:
        if vm.template:
            continue
        found, source = _attr(vm, policy.appAttribute), f"attribute '{policy.appAttribute}'"
        if found is None and pattern is not None:
            m = pattern.search(vm.name)
            if m and m.groupdict().get("app"):
                found, source = m.group("app"), "--app-pattern"
        if found is None and vm.name in mapping:
            found, source = mapping[vm.name].application, "the mapping CSV"
        if found is None:
            tried = [f"no custom attribute or tag '{policy.appAttribute}'"]
            if pattern is not None:
                tried.append("no match of --app-pattern")
            if mapping:
                tried.append("not in the mapping CSV")
            unplanned[vm.name] = ["no application: " + ", ".join(tried)]
            continue
        label = dns_label(found)
        if not label:
            unplanned[vm.name] = [f"application {found!r} has no usable name (a DNS-1123 label)"]
            continue
        app_of[vm.moref] = label
        raw_names[label].add(found)
        members[label].append(vm)
        how.setdefault(label, source)

    # Dependencies: databases by destination, application edges with counts and ports.
    db_on: dict[str, set[str]] = defaultdict(set)  # moref -> database names
    licensed_on: dict[str, set[str]] = defaultdict(set)
    calls: dict[str, Counter[str]] = defaultdict(Counter)
    ports: dict[tuple[str, str], set[int]] = defaultdict(set)
    dbs: dict[tuple[str, str], set[str]] = defaultdict(set)
    for e in dependencies.edges:
        db = _db_of(e.port, e.kind)
        if db is not None:
            db_on[e.destination].add(db)
            if db in LICENSED_DB:
                licensed_on[e.destination].add(LICENSED_DB[db])
        src, dst = app_of.get(e.source), app_of.get(e.destination)
        if src is not None and dst is not None and src != dst:
            calls[src][dst] += 1
            if e.port is not None:
                ports[(src, dst)].add(e.port)
            if db is not None:
                dbs[(src, dst)].add(db)

    apps: dict[str, AppFacts] = {}
    for name in sorted(members):
        apps[name] = _facts(name, members[name], inventory, policy, mapping, db_on, licensed_on)
        apps[name].reasons.insert(0, f"application from {how[name]}")
        if len(raw_names[name]) > 1:
            apps[name].reasons.append(
                "named " + ", ".join(repr(n) for n in sorted(raw_names[name])) + " in the inputs"
            )
        apps[name].calls = dict(sorted(calls[name].items()))
        apps[name].callPorts = {b: sorted(ports[(name, b)]) for b in sorted(calls[name])}
        apps[name].callDatabases = {
            b: sorted(dbs[(name, b)]) for b in sorted(calls[name]) if dbs[(name, b)]
        }
    edges = {a: set(calls[a]) for a in apps}
    callers: dict[str, set[str]] = defaultdict(set)
    for caller, called in edges.items():
        for b in called:
            callers[b].add(caller)
    comps = strongly_connected(sorted(apps), edges)

    # Critical concerns: the application, and its whole cycle, waits for a person.
    blocked: set[str] = set()
    for comp in comps:
        bad = [n for n in comp if apps[n].critical]
        if not bad:
            continue
        for n in comp:
            blocked.add(n)
            facts = apps[n]
            for vm in members[n]:
                own = [c for c in facts.critical if c.startswith(vm.name + ": ")]
                why = [f"critical concern {c.split(': ', 1)[1]}" for c in own]
                if not why:
                    first = apps[bad[0]].critical[0]
                    why = [
                        f"application '{n}' waits for a person: "
                        + (
                            f"{first}"
                            if bad[0] == n
                            else f"in a dependency cycle with '{bad[0]}' ({first})"
                        )
                    ]
                unplanned[vm.name] = why
    units: list[_Unit] = []
    for comp in comps:
        if comp[0] in blocked:
            continue
        unit = _Unit([apps[n] for n in comp])
        cls = max((_classify(a, policy) for a in unit.apps), key=lambda c: _RANK[c])
        for a in unit.apps:
            alone = _classify(a, policy)
            a.waveClass = cls
            if len(comp) > 1:
                others = ", ".join(n for n in comp if n != a.name)
                a.reasons.append(f"in a dependency cycle with {others}: they move in one wave")
                if alone != cls:
                    a.reasons.append(f"would be {alone}, moves with the cycle's {cls} members")
        units.append(unit)

    waves: list[WavePlan] = []
    for cls in ("factory", "stateful", "holdout"):
        mine = [u for u in units if u.apps[0].waveClass == cls]
        groups = _fill(_topological(mine, edges), policy)
        for k, group in enumerate(groups, 1):
            wave = CLASS_WAVE[cls] if len(groups) == 1 else f"{CLASS_WAVE[cls]}-{k}"
            in_wave = {n for u in group for n in u.names}
            for u in group:
                if len(group) == 1 and (
                    len(u.names) > policy.maxWaveApps or u.bytes > policy.maxWaveTiB * TiB
                ):
                    u.apps[0].reasons.append(
                        "its dependency cycle alone exceeds the wave caps: a wave of its own"
                    )
                for a in u.apps:
                    a.wave = wave
                    a.dependsOn = sorted(
                        d for d in calls[a.name] if d in in_wave and d not in u.names
                    )
            for u in group:
                for a in u.apps:
                    _estimate(a, policy, len(edges[a.name] | callers[a.name]))
            hours = [a.estimatedHours for u in group for a in u.apps]
            waves.append(
                WavePlan(
                    name=wave,
                    applications=sorted(in_wave),
                    dataTiB=round(sum(u.bytes for u in group) / TiB, 3),
                    estimatedHours=round(max(max(hours), sum(hours) / policy.waveConcurrency), 2),
                )
            )
    order = {w.name: i for i, w in enumerate(waves)}
    placed = sorted(
        (a for a in apps.values() if a.wave is not None),
        key=lambda a: (order[a.wave or ""], a.name),
    )
    for a in placed:
        other = [
            f"{d} ({'wave ' + str(apps[d].wave) if apps[d].wave else 'unplanned'})"
            for d in sorted(calls[a.name])
            if d not in a.dependsOn and apps[d].wave != a.wave
        ]
        if other:
            more = f" and {len(other) - 10} more" if len(other) > 10 else ""
            a.reasons.append(
                "depends on applications of other waves (reached across platforms meanwhile): "
                + ", ".join(other[:10])
                + more
            )
    plan = Plan(
        applications=[
            PlannedApp(
                name=a.name,
                wave=a.wave or "",
                vms=a.vms,
                criticality=a.criticality,
                stateful=a.stateful,
                complexity=a.complexity,
                estimatedHours=a.estimatedHours,
                dependsOn=a.dependsOn,
                reasons=a.reasons,
            )
            for a in placed
        ],
        unplanned=[UnplannedVM(vm=vm, reasons=r) for vm, r in sorted(unplanned.items())],
        waves=waves,
        excluded=excluded,
    )
    total = sum(d.capacityBytes for v in vms if not v.template for d in v.disks)
    summary = Summary(
        source=inventory.source,
        datacenters=len(inventory.datacenters),
        clusters=len(inventory.clusters),
        hosts=len(inventory.hosts),
        datastores=len(inventory.datastores),
        networks=len(inventory.networks),
        vms=len(vms),
        templates=len(excluded),
        poweredOn=sum(1 for v in vms if v.powerState == "poweredOn"),
        dataTiB=round(total / TiB, 3),
        missingSheets=list(missing_sheets),
    )
    return PlanResult(
        plan=plan,
        apps=list(apps.values()),
        summary=summary,
        dependencies=dependencies,
        policy=policy,
    )


def _facts(
    name: str,
    vms: list[VM],
    inventory: Inventory,
    policy: PlanPolicy,
    mapping: dict[str, Mapping],
    db_on: dict[str, set[str]],
    licensed_on: dict[str, set[str]],
) -> AppFacts:
    reasons: list[str] = []
    envs: Counter[str] = Counter()
    crits: list[str] = []
    owners: set[str] = set()
    for vm in vms:
        m = mapping.get(vm.name)
        env = next((v for a in policy.environmentAttributes if (v := _attr(vm, a))), None)
        env = env or (m.environment if m else None)
        if env:
            envs[env.lower()] += 1
        crit = _attr(vm, policy.criticalityAttribute) or (m.criticality if m else None)
        if crit:
            crits.append(crit.lower())
        owner = _attr(vm, policy.ownerAttribute) or (m.owner if m else None)
        if owner:
            owners.add(owner)
    environment = sorted(envs.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] if envs else None
    prod = environment in {e.lower() for e in policy.productionEnvironments}
    known = [c for c in crits if c in _CRIT]
    for bad in sorted({c for c in crits if c not in _CRIT}):
        reasons.append(f"criticality {bad!r} is not low/medium/high: ignored")
    if known:
        criticality: Criticality = max(known, key=_CRIT.index)
    else:
        criticality = "medium" if prod else "low"
        reasons.append(
            f"no criticality recorded: {criticality} by environment "
            f"({environment or 'none recorded'})"
        )
    special: list[str] = []
    critical: list[str] = []
    licensing: list[str] = []
    databases: set[str] = set()
    data_vms: list[str] = []
    for vm in vms:
        concerns: list[Concern] = evaluate(inventory, vm)
        for c in concerns:
            if c.severity == "critical":
                critical.append(f"{vm.name}: {c.id}: {c.message}")
            elif c.id in SPECIAL:
                special.append(f"{vm.name}: {c.id}")
        if len(vm.disks) > 1:
            data_vms.append(vm.name)
        databases |= db_on.get(vm.moref, set())
        licensing += [f"{lic} ({vm.name})" for lic in sorted(licensed_on.get(vm.moref, ()))]
        full = (vm.guestFullName or "").lower()
        if "windows" in full and "datacenter" in full:
            licensing.append(f"Windows Server Datacenter ({vm.name})")
    stateful = bool(databases or data_vms)
    if databases:
        reasons.append("stateful: database " + ", ".join(sorted(databases)))
    if data_vms:
        reasons.append("stateful: data disks on " + ", ".join(data_vms))
    clusters = Counter(vm.cluster or "unknown" for vm in vms)
    return AppFacts(
        name=name,
        vms=[vm.name for vm in vms],
        vmMorefs=[vm.moref for vm in vms],
        environment=environment,
        criticality=criticality,
        owner=sorted(owners)[0] if owners else None,
        stateful=stateful,
        databases=sorted(databases),
        dataGiB=round(sum(d.capacityBytes for vm in vms for d in vm.disks) / GiB, 3),
        special=sorted(special),
        critical=critical,
        licensing=sorted(set(licensing)),
        sourceCluster=sorted(clusters.items(), key=lambda kv: (-kv[1], kv[0]))[0][0],
        reasons=reasons,
    )


def _classify(app: AppFacts, policy: PlanPolicy) -> WaveClass:
    """The application's own class, with the reasons (added once)."""
    why: list[str] = []
    if app.special:
        why.append("special workload: " + ", ".join(app.special))
    if app.licensing:
        why.append("licensing-sensitive: " + ", ".join(app.licensing))
    if app.owner is None:
        why.append("no owner recorded (little documentation)")
    cls: WaveClass
    if why:
        cls, text = "holdout", "wave 3 (holdouts): " + "; ".join(why)
    else:
        prod = app.environment in {e.lower() for e in policy.productionEnvironments}
        blockers = []
        if prod:
            blockers.append(f"environment {app.environment}")
        if app.criticality == "high":
            blockers.append("criticality high")
        if app.stateful:
            blockers.append("stateful")
        if app.dataGiB > policy.factoryMaxGiB:
            blockers.append(f"{app.dataGiB:.0f} GiB > {policy.factoryMaxGiB:.0f} GiB")
        if blockers:
            cls, text = "stateful", "wave 2 (stateful, business-critical): " + ", ".join(blockers)
        else:
            cls = "factory"
            text = (
                f"wave 1 (factory): environment {app.environment or 'none recorded'}, "
                f"criticality {app.criticality}, stateless, {app.dataGiB:.0f} GiB, "
                "no special workload"
            )
    if text not in app.reasons:
        app.reasons.append(text)
    return cls


def _topological(units: list[_Unit], edges: dict[str, set[str]]) -> list[_Unit]:
    """Units ordered so what an application depends on comes first (ties by name)."""
    owner = {n: u.key for u in units for n in u.names}
    by_key = {u.key: u for u in units}
    needs: dict[str, set[str]] = {u.key: set() for u in units}
    for u in units:
        for n in u.names:
            for d in edges.get(n, ()):
                k = owner.get(d)
                if k is not None and k != u.key:
                    needs[u.key].add(k)
    waiting = {k: len(v) for k, v in needs.items()}
    users: dict[str, list[str]] = defaultdict(list)
    for k, v in needs.items():
        for d in v:
            users[d].append(k)
    ready = [k for k, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    out: list[_Unit] = []
    while ready:
        k = heapq.heappop(ready)
        out.append(by_key[k])
        for user in users[k]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    return out


def _fill(units: list[_Unit], policy: PlanPolicy) -> list[list[_Unit]]:
    """Split in order at the caps (a unit over a cap alone gets a wave of its own)."""
    groups: list[list[_Unit]] = []
    count, size = 0, 0.0
    for u in units:
        if groups and (
            count + len(u.names) <= policy.maxWaveApps and size + u.bytes <= policy.maxWaveTiB * TiB
        ):
            groups[-1].append(u)
            count, size = count + len(u.names), size + u.bytes
        else:
            groups.append([u])
            count, size = len(u.names), u.bytes
    return groups


def _estimate(app: AppFacts, policy: PlanPolicy, degree: int) -> None:
    copy_hours = app.dataGiB * GiB * 8 / (policy.transferMbps * 1e6) / 3600
    app.estimatedHours = round(copy_hours + policy.perVmHours * len(app.vms), 2)
    if app.dataGiB <= policy.coldMaxGiB:
        app.template = "cold"
    else:
        app.template = "stateful-warm" if app.stateful else "stateless-warm"
    score = 1 + min(len(app.vms) - 1, 4)
    score += 2 * app.stateful + 2 * bool(app.databases) + 3 * len(app.special)
    score += bool(app.licensing) + (app.owner is None) + (app.criticality == "high")
    score += min(degree, 5) + (app.dataGiB > 200) + 2 * (app.dataGiB > 1024)
    app.complexity = score
    where = (
        "all of it inside the downtime (cold: small enough)"
        if app.template == "cold"
        else "copied while the source serves (warm): the downtime is the last sync, "
        "conversion and boot"
    )
    app.reasons.append(
        f"runbook {app.template}; {app.dataGiB:.0f} GiB at {policy.transferMbps:g} Mbit/s "
        f"and {policy.perVmHours:g} h per VM: {app.estimatedHours} h, {where}"
    )
