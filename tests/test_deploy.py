"""deploy/ checked against the code it deploys (pure: no cluster, no service, no network).

Every YAML file parses (multi-document, the Helm chart's extraObjects included); the
required fields are there (kinds, names, images, the four search attributes with their
types, numHistoryShards, TLS with client auth, PostgreSQL with its password from a Secret);
every `cutover` command line (container command/args, systemd ExecStart) parses with the
real CLI's parser, so a flag the CLI lacks fails here; every CUTOVER_* / TEMPORAL_* name in
deploy/ is one the product's source reads, and the worker's environment file lists all the
worker reads; images, task queues, namespaces, addresses, certificate names, mounts and the
metrics port agree across files. The worker fleet (issue 17): every worker command line,
with its manifest's environment, passes the CLI's own role checks against the shipped
site; the data hosts' StatefulSet pod names are the site's `fleet.dataHosts`; a data host
stages in its own directory on the shared staging volume and is never versioned; the
orchestration worker's build ID is its image tag. The checkers are tested on a bogus flag,
variable and fleet, so a violation is known to fail.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from cutover import search_attributes
from cutover.cli import parser
from cutover.cli.service import _role_problem
from cutover.fleet import data_queue
from cutover.site import SiteConfig, load_site

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
VALUES = DEPLOY / "temporal" / "values.yaml"
CERTIFICATES = DEPLOY / "temporal" / "certificates.yaml"
SYSTEMD = DEPLOY / "systemd"
#: The product's source (what a deployment can configure): not tests, benches or the lab,
#: which sets variables for the processes it starts rather than reading them.
PRODUCT = ("cutover", "workflows", "activities", "adapters", "workers")
#: The modules a `cutover worker` process reads its environment in.
WORKER_ENV_READERS = (
    "cutover/temporal.py",
    "cutover/telemetry.py",
    "cutover/cli/service.py",
    "cutover/cli/lab.py",  # default_site: $CUTOVER_SITE
    "workers/audit.py",
    "workers/sites.py",
)
ENV_NAME = re.compile(r"\b(?:CUTOVER|TEMPORAL)_[A-Z0-9_]*[A-Z0-9]\b")
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
DATA_UNIT = SYSTEMD / "cutover-data-worker@.service"
#: Flags that differ by a worker's role (the rest are the same for every worker).
ROLE_FLAGS = {"--role", "--data-host", "--staging-dir", "--max-copies"}
#: Worker Deployment versioning: orchestration workers only, never a data host.
VERSIONING = {"--deployment", "--build-id", "CUTOVER_DEPLOYMENT", "CUTOVER_BUILD_ID"}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "ClusterIssuer", "Kustomization"}


# ---------------------------------------------------------------- reading deploy/


def yaml_files() -> list[Path]:
    return sorted(p for ext in ("*.yaml", "*.yml") for p in DEPLOY.rglob(ext))


def documents(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert all(isinstance(d, dict) for d in docs), f"{path}: a document is not a mapping"
    return docs


def values() -> dict[str, Any]:
    (doc,) = documents(VALUES)
    return doc


def extra_objects() -> list[dict[str, Any]]:
    """The chart renders each extraObjects string with `tpl`: template actions become a
    placeholder, the rest must be YAML."""
    objs = []
    for text in values().get("extraObjects", []):
        assert isinstance(text, str), "extraObjects entries are strings (the chart tpl's them)"
        obj = yaml.safe_load(re.sub(r"\{\{.*?\}\}", "TEMPLATE", text))
        assert isinstance(obj, dict)
        objs.append(obj)
    return objs


def manifests() -> list[dict[str, Any]]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in documents(p)]


def kind(docs: list[dict[str, Any]], k: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == k and name in (None, d.get("metadata", {}).get("name"))
    ]
    assert len(found) == 1, f"expected one {k} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def worker() -> dict[str, Any]:
    return kind(manifests(), "Deployment", "cutover-worker")


def worker_container() -> dict[str, Any]:
    (c,) = [c for c in containers(worker()) if c["name"] == "worker"]
    return c


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def data_hosts() -> dict[str, Any]:
    return kind(manifests(), "StatefulSet", "cutover-data")


def data_container() -> dict[str, Any]:
    (c,) = [c for c in containers(data_hosts()) if c["name"] == "worker"]
    return c


def shipped_site(tmp: Path) -> SiteConfig:
    """The site in ConfigMap cutover-site, loaded by the product's own model."""
    for name, text in kind(manifests(), "ConfigMap", "cutover-site")["data"].items():
        (tmp / name).write_text(text, encoding="utf-8")
    return load_site(tmp / "site.yaml")


def pod_names(sts: dict[str, Any]) -> list[str]:
    """A StatefulSet's pod names: <name>-0 .. <name>-<replicas-1>."""
    return [f"{sts['metadata']['name']}-{i}" for i in range(int(sts["spec"]["replicas"]))]


def expand(argv: list[str], variables: dict[str, str]) -> list[str]:
    """What the process gets: Kubernetes' $(VAR) in args, systemd's %i in ExecStart."""
    out = []
    for a in argv:
        for k, v in variables.items():
            a = a.replace(k, v)
        out.append(a)
    return out


def fleet_problems(sts: dict[str, Any], site: SiteConfig) -> list[str]:
    """Where the data hosts' StatefulSet and the site's fleet disagree."""
    fleet = [h.name for h in site.fleet.dataHosts] if site.fleet else []
    problems = []
    if pod_names(sts) != fleet:
        problems.append(f"pods {pod_names(sts)} but the site's fleet.dataHosts are {fleet}")
    for c in containers(sts):
        argv = cutover_argv([*c.get("command", []), *c.get("args", [])])
        if argv is None:
            continue
        if option(argv, "--data-host") != "$(POD_NAME)":
            problems.append("--data-host is not $(POD_NAME): pod names are the host names")
        pod_name = [e for e in c.get("env", []) if e["name"] == "POD_NAME"]
        field = pod_name[0].get("valueFrom", {}).get("fieldRef", {}) if pod_name else {}
        if field.get("fieldPath") != "metadata.name":
            problems.append("POD_NAME is not the pod's metadata.name")
    return problems


def unit(path: Path) -> list[tuple[str, str, str]]:
    """A systemd unit's (section, key, value) entries, continuation lines joined."""
    entries: list[tuple[str, str, str]] = []
    section, pending = "", ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = (pending + raw.strip()) if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not KEY=VALUE: {line}"
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(path: Path, key: str) -> list[str]:
    return [v for _, k, v in unit(path) if k == key]


def cutover_argv(command: list[str]) -> list[str] | None:
    """The arguments after `cutover` when the command runs the cutover CLI, else None."""
    if command and PurePosixPath(command[0]).name == "cutover":
        return command[1:]
    return None


def cutover_invocations() -> Iterator[tuple[str, list[str]]]:
    """Every cutover command line in deploy/: (where, argv after `cutover`)."""
    workloads = [d for d in manifests() if d["kind"] in WORKLOADS] + [
        d for d in extra_objects() if d.get("kind") in WORKLOADS
    ]
    for w in workloads:
        for c in containers(w):
            argv = cutover_argv([*c.get("command", []), *c.get("args", [])])
            if argv is not None:
                yield f"{w['kind']}/{w['metadata']['name']}/{c['name']}", argv
    for path in sorted(SYSTEMD.glob("*.service")):
        for value in unit_values(path, "ExecStart"):
            argv = cutover_argv(shlex.split(value.lstrip("-@+!:")))
            if argv is not None:
                yield path.name, argv


def option(argv: list[str], flag: str) -> str:
    values = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]
    values += [a.split("=", 1)[1] for a in argv if a.startswith(flag + "=")]
    assert len(values) == 1, f"{flag} given {len(values)} times in {argv}"
    return values[0]


# ---------------------------------------------------------------- the checkers


def cli_problems(argv: list[str]) -> list[str]:
    """What the real CLI rejects in `cutover ARGV`: unknown commands and flags, or any
    argument its parser refuses (missing values, bad choices)."""
    top = parser()
    (sub,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    if not argv or argv[0] not in sub.choices:
        return [f"no command {argv[:1]} (commands: {', '.join(sub.choices)})"]
    known = {o for a in sub.choices[argv[0]]._actions for o in a.option_strings}
    problems = [
        f"`cutover {argv[0]}` has no flag {flag}"
        for a in argv[1:]
        if a.startswith("-") and (flag := a.split("=", 1)[0]) not in known
    ]
    try:
        top.parse_args(argv)
    except SystemExit:
        problems.append(f"the CLI's parser refuses: cutover {shlex.join(argv)}")
    return problems


def product_sources() -> Iterator[Path]:
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.relative_to(ROOT).parts[:2] != ("cutover", "lab"):
                yield path


def _is_environ(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def _reads_env(func: ast.expr) -> bool:
    if isinstance(func, ast.Attribute):
        return (func.attr == "get" and _is_environ(func.value)) or func.attr == "getenv"
    return isinstance(func, ast.Name) and func.id == "getenv"


def env_reads(path: Path) -> set[str]:
    """The CUTOVER_* / TEMPORAL_* variables a module reads (`os.environ.get`, `os.getenv`,
    `os.environ[...]`): by a literal name, a module constant, or an f-string, which stands
    for the names the module spells out that fit it (`TEMPORAL_TLS_{k}`: the docstring's
    TEMPORAL_TLS_CERT, _KEY, _CA). Names in messages alone are not reads."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    constants = {
        t.id: n.value.value
        for n in tree.body
        if isinstance(n, ast.Assign)
        and isinstance(n.value, ast.Constant)
        and isinstance(n.value.value, str)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    spelled = set(ENV_NAME.findall(source))
    found: set[str] = set()
    for node in ast.walk(tree):
        arg: ast.expr | None = None
        if isinstance(node, ast.Call) and node.args and _reads_env(node.func):
            arg = node.args[0]
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Load)
            and _is_environ(node.value)
        ):
            arg = node.slice
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            found.add(arg.value)
        elif isinstance(arg, ast.Name) and arg.id in constants:
            found.add(constants[arg.id])
        elif isinstance(arg, ast.JoinedStr):
            pattern = "".join(
                re.escape(str(v.value)) if isinstance(v, ast.Constant) else "[A-Z0-9_]+"
                for v in arg.values
            )
            found |= {n for n in spelled if re.fullmatch(pattern, n)}
    return {n for n in found if ENV_NAME.fullmatch(n)}


def names_read(paths: list[Path]) -> set[str]:
    return {n for p in paths for n in env_reads(p)}


def unread_names(text: str, read: set[str]) -> set[str]:
    return set(ENV_NAME.findall(text)) - read


# ---------------------------------------------------------------- tests


def test_every_yaml_file_parses() -> None:
    files = yaml_files()
    assert {VALUES, CERTIFICATES, K8S / "deployment.yaml"} <= set(files)
    for path in files:
        documents(path)
    assert extra_objects(), "the search-attribute Job is missing from extraObjects"


def test_every_manifest_names_its_kind_and_namespace() -> None:
    docs = manifests() + documents(CERTIFICATES) + extra_objects()
    for d in docs:
        assert d.get("apiVersion") and d.get("kind"), d
        if d["kind"] == "Kustomization":
            continue
        assert d["metadata"].get("name"), d
        if d["kind"] not in CLUSTER_SCOPED:
            assert d["metadata"].get("namespace"), f"{d['kind']} {d['metadata']['name']}"
    kinds = {d["kind"] for d in manifests()}
    need = {"Namespace", "ServiceAccount", "ConfigMap", "PersistentVolumeClaim"}
    need |= {"Deployment", "StatefulSet", "Service", "NetworkPolicy", "Kustomization"}
    assert need <= kinds


def test_kustomization_applies_every_manifest_and_sets_the_worker_image() -> None:
    kust = kind(manifests(), "Kustomization")
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kust["images"]}
    for w in (d for d in manifests() if d["kind"] in WORKLOADS):
        for c in containers(w):
            if cutover_argv(c.get("command", [])) is not None:
                repo = c["image"].rsplit(":", 1)[0]
                assert images.get(repo) == c["image"], f"{c['image']} vs kustomization {images}"


def test_the_image_built_is_the_image_deployed() -> None:
    image = worker_container()["image"]
    for path in (DEPLOY / "README.md", DEPLOY / "image" / "Dockerfile"):
        text = " ".join(path.read_text(encoding="utf-8").replace("#", " ").split())
        tags = re.findall(r"docker build [^`]*?-t ([\w./-]+:[\w.-]+)", text)
        assert tags and set(tags) == {image}, f"{path}: docker build -t {tags}, deployed {image}"
    uid = re.search(r"--uid (\d+)", (DEPLOY / "image" / "Dockerfile").read_text())
    assert uid is not None
    assert pod_spec(worker())["securityContext"]["runAsUser"] == int(uid.group(1))


def test_every_cutover_command_line_parses_with_the_real_cli() -> None:
    found = list(cutover_invocations())
    where = {w for w, _ in found}
    assert {"Deployment/cutover-worker/worker", "StatefulSet/cutover-data/worker"} <= where
    assert {"cutover-worker.service", "cutover-server.service", DATA_UNIT.name} <= where
    for place, argv in found:
        assert not cli_problems(argv), f"{place}: {cli_problems(argv)}"


def test_flag_checker_rejects_a_flag_the_cli_lacks() -> None:
    good = ["worker", "--site", "s.yaml", "--task-queue", "cutover"]
    assert cli_problems(good) == []
    assert any("--no-such-flag" in p for p in cli_problems([*good, "--no-such-flag", "x"]))
    assert cli_problems([*good[:3], "--task", "cutover"])  # argparse would take it: we do not
    assert cli_problems([*good, "--task-queue"])  # a flag without its value
    assert cli_problems(["wrkr"])


def test_every_environment_variable_in_deploy_is_read_by_the_product() -> None:
    read = names_read(list(product_sources()))
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        unread = unread_names(path.read_text(encoding="utf-8"), read)
        assert not unread, f"{path.relative_to(ROOT)}: nothing in the product reads {unread}"


def test_env_checker_rejects_a_variable_nothing_reads() -> None:
    read = names_read(list(product_sources()))
    assert "TEMPORAL_TLS_CA" in read and "CUTOVER_AUDIT_LOG" in read
    text = "CUTOVER_NO_SUCH_SETTING=1 TEMPORAL_ADDRESS=x"
    assert unread_names(text, read) == {"CUTOVER_NO_SUCH_SETTING"}


def test_the_worker_environment_file_lists_every_variable_the_worker_reads() -> None:
    read = names_read([ROOT / p for p in WORKER_ENV_READERS])
    assert {"TEMPORAL_ADDRESS", "TEMPORAL_TLS_CERT", "CUTOVER_WORKER_KEY"} <= read
    listed = set(ENV_NAME.findall((SYSTEMD / "worker.env").read_text(encoding="utf-8")))
    assert read <= listed, f"worker.env does not list {read - listed}"
    for path in (SYSTEMD / "cutover-worker.service", DATA_UNIT):
        files = unit_values(path, "EnvironmentFile")
        assert [f.lstrip("-") for f in files] == ["/etc/cutover/worker.env"], path.name


def test_temporal_values_persist_to_postgresql_with_a_fixed_shard_count() -> None:
    server = values()["server"]
    persistence = server["config"]["persistence"]
    shards = persistence["numHistoryShards"]
    assert isinstance(shards, int) and shards >= 1
    stores = persistence["datastores"]
    for role in ("defaultStore", "visibilityStore"):
        sql = stores[persistence[role]]["sql"]
        assert sql["pluginName"].startswith("postgres"), sql
        assert sql["existingSecret"] and "password" not in sql, "password from a Secret only"
        assert sql["manageSchema"] is True, "the chart's schema Job sets the schema up"
        host, _, port = sql["connectAddr"].rpartition(":")
        assert host and port.isdigit()
    assert values()["schema"]["useHelmHooks"] is True


def test_temporal_tls_is_mutual_on_frontend_and_internode() -> None:
    tls = values()["server"]["tls"]
    certs = {d["metadata"]["name"]: d for d in documents(CERTIFICATES)}
    for section in ("internode", "frontend"):
        s = tls[section]
        assert s["enabled"] is True and s["requireClientAuth"] is True, section
        assert s["serverName"], section
        cert = [c for c in certs.values() if c["spec"].get("secretName") == s["secretName"]]
        assert cert, f"no Certificate makes Secret {s['secretName']}"
        assert s["serverName"] in cert[0]["spec"]["dnsNames"]
        assert "client auth" in cert[0]["spec"]["usages"]
    web = values()["web"]["tls"]
    assert web["enabled"] is True and web["secretName"] == tls["frontend"]["secretName"]


def test_search_attribute_job_registers_the_workflows_attributes() -> None:
    (job,) = [d for d in extra_objects() if d["kind"] == "Job"]
    assert "post-install" in job["metadata"]["annotations"]["helm.sh/hook"]
    assert int(job["metadata"]["annotations"]["helm.sh/hook-weight"]) > 0  # after namespaces
    (c,) = containers(job)
    script = "\n".join(c["args"])
    registered = dict(re.findall(r"--name\s+(\w+)\s+--type\s+(\w+)", script))
    # the CLI's --type spelling of the SDK's type: KEYWORD -> Keyword, KEYWORD_LIST ->
    # KeywordList
    want = {
        k.name: "".join(w.capitalize() for w in k.indexed_value_type.name.split("_"))
        for k in search_attributes.ALL
    }
    assert len(want) == 4
    assert registered == want
    worker_env = env(worker_container())
    assert option(script.split(), "--namespace") == worker_env["TEMPORAL_NAMESPACE"]
    assert option(script.split(), "--address") == worker_env["TEMPORAL_ADDRESS"]
    namespaces = {n["name"] for n in values()["server"]["config"]["namespaces"]["namespace"]}
    assert values()["server"]["config"]["namespaces"]["create"] is True
    assert worker_env["TEMPORAL_NAMESPACE"] in namespaces
    # the CLI's client certificate: the frontend Secret, mounted where the flags point
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod_spec(job)["volumes"]
               if "secret" in v}  # fmt: skip
    (vol,) = [
        n for n, s in secrets.items() if s == values()["server"]["tls"]["frontend"]["secretName"]
    ]
    assert option(script.split(), "--tls-cert-path") == f"{mounts[vol]}/tls.crt"


def test_worker_connects_over_mtls_to_the_frontend_the_chart_serves() -> None:
    c, spec = worker_container(), pod_spec(worker())
    e = env(c)
    host = e["TEMPORAL_ADDRESS"].rsplit(":", 1)[0]
    frontend = [
        d for d in documents(CERTIFICATES)
        if d["spec"].get("secretName") == values()["server"]["tls"]["frontend"]["secretName"]
    ]  # fmt: skip
    # cutover's client verifies the host it dials: it must be on the frontend certificate
    assert host in frontend[0]["spec"]["dnsNames"]
    assert e["TEMPORAL_ADDRESS"].endswith(":7233")
    client = kind(documents(CERTIFICATES), "Certificate", "cutover-temporal-client-tls")
    assert client["metadata"]["namespace"] == worker()["metadata"]["namespace"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    for var, file in (("TEMPORAL_TLS_CERT", "tls.crt"), ("TEMPORAL_TLS_KEY", "tls.key"),
                      ("TEMPORAL_TLS_CA", "ca.crt")):  # fmt: skip
        path = PurePosixPath(e[var])
        assert path.name == file
        vol = volumes[mounts[str(path.parent)]]
        assert vol["secret"]["secretName"] == client["spec"]["secretName"]


def test_task_queue_agrees_across_site_worker_and_units(tmp_path: Path) -> None:
    site_cm = kind(manifests(), "ConfigMap", "cutover-site")
    for name, text in site_cm["data"].items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    site = load_site(tmp_path / "site.yaml")  # the product's own model validates it
    queues = {site.taskQueue}
    for _, argv in cutover_invocations():
        if argv[0] == "worker":
            queues.add(option(argv, "--task-queue"))
    assert queues == {"cutover"}


def test_worker_paths_lie_on_the_volumes_mounted_for_them() -> None:
    c, spec = worker_container(), pod_spec(worker())
    argv = cutover_argv([*c["command"], *c["args"]])
    assert argv is not None and argv[0] == "worker"
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}

    def volume_of(path: str) -> dict[str, Any]:
        p = PurePosixPath(path)
        found = [
            v for m, v in mounts.items() if p == PurePosixPath(m) or PurePosixPath(m) in p.parents
        ]
        assert found, f"{path} is on no mounted volume"
        volume: dict[str, Any] = found[0]
        return volume

    site_cm = kind(manifests(), "ConfigMap", "cutover-site")
    site_file = option(argv, "--site")
    assert volume_of(site_file)["configMap"]["name"] == "cutover-site"
    assert PurePosixPath(site_file).name in site_cm["data"]
    key = option(argv, "--key")
    assert "secret" in volume_of(key) and PurePosixPath(key).name == "worker.key"
    for flag in ("--audit-log", "--site-archive"):
        assert "persistentVolumeClaim" in volume_of(option(argv, flag)), flag
    site = yaml.safe_load(site_cm["data"]["site.yaml"])
    staging = volume_of(site["stagingDir"])["persistentVolumeClaim"]["claimName"]
    pvc = kind(manifests(), "PersistentVolumeClaim", staging)
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]  # shared with the KVM hosts
    for secret_file in (site["vcenter"]["passwordRef"]["file"], site["vcenter"]["caFile"],
                        site["dns"]["tsigKeyFile"]):  # fmt: skip
        assert "secret" in volume_of(secret_file), secret_file
    keyfile = re.search(r"keyfile=([^&]+)", site["libvirt"]["uri"])
    assert keyfile is not None and "secret" in volume_of(keyfile.group(1))


def test_worker_runs_unprivileged_with_resources() -> None:
    spec, c = pod_spec(worker()), worker_container()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert worker()["spec"]["strategy"]["type"] == "Recreate"  # one audit-log writer


def test_metrics_port_agrees_and_is_the_only_ingress() -> None:
    c = worker_container()
    argv = cutover_argv([*c["command"], *c["args"]])
    assert argv is not None
    port = int(option(argv, "--metrics-address").rsplit(":", 1)[1])
    (cport,) = [p for p in c["ports"] if p["name"] == "metrics"]
    assert cport["containerPort"] == port
    annotations = worker()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    svc = kind(manifests(), "Service", "cutover-worker-metrics")
    assert [p["port"] for p in svc["spec"]["ports"]] == [port]
    policy = kind(manifests(), "NetworkPolicy", "cutover-worker")
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ingress_ports = {p["port"] for r in policy["spec"]["ingress"] for p in r["ports"]}
    assert ingress_ports == {port}
    egress_ports = {p["port"] for r in policy["spec"]["egress"] for p in r.get("ports", [])}
    assert {53, 7233, 443} <= egress_ports


def test_systemd_worker_is_hardened_and_writes_only_its_state() -> None:
    path = SYSTEMD / "cutover-worker.service"
    service = {k: v for s, k, v in unit(path) if s == "Service"}
    assert service["User"] == "cutover" and service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict" and service["PrivateTmp"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    state = [f"/var/lib/{d}" for d in service["StateDirectory"].split()]
    (argv,) = [a for w, a in cutover_invocations() if w == path.name]
    for flag in ("--audit-log", "--site-archive"):
        p = PurePosixPath(option(argv, flag))
        assert any(PurePosixPath(s) in (p, *p.parents) for s in state), f"{flag} {p}"
    # the same worker as on Kubernetes: same flags (values may differ per host; the role
    # comes from worker.env here)
    k8s = cutover_argv([*worker_container()["command"], *worker_container()["args"]])
    assert k8s is not None

    def flags(a: list[str]) -> set[str]:
        return {f for f in a if f.startswith("--")} - ROLE_FLAGS - VERSIONING

    assert flags(argv) == flags(k8s)


@pytest.mark.parametrize(
    "name", ["cutover-worker.service", "cutover-server.service", DATA_UNIT.name]
)
def test_systemd_units_have_their_sections(name: str) -> None:
    sections = {s for s, _, _ in unit(SYSTEMD / name)}
    assert sections == {"Unit", "Service", "Install"}
    assert unit_values(SYSTEMD / name, "WantedBy") == ["multi-user.target"]


# ---------------------------------------------------------------- the worker fleet (issue 17)


def worker_runs() -> Iterator[tuple[str, list[str], dict[str, str]]]:
    """Every `cutover worker` as its process sees it: (where, argv, CUTOVER_* environment),
    with $(POD_NAME) the StatefulSet's first pod and a unit's %i the site's second host."""
    for w in (d for d in manifests() if d["kind"] in WORKLOADS):
        pod = pod_names(w)[0] if w["kind"] == "StatefulSet" else w["metadata"]["name"]
        for c in containers(w):
            argv = cutover_argv([*c.get("command", []), *c.get("args", [])])
            if argv is not None and argv[0] == "worker":
                e = {k: v for k, v in env(c).items() if k.startswith("CUTOVER_")}
                yield f"{w['kind']}/{w['metadata']['name']}", expand(argv, {"$(POD_NAME)": pod}), e
    for path in (SYSTEMD / "cutover-worker.service", DATA_UNIT):
        (argv,) = [a for w, a in cutover_invocations() if w == path.name]
        yield path.name, expand(argv, {"%i": "cutover-data-1"}), {}


def test_every_worker_passes_the_clis_role_checks_against_the_shipped_site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = shipped_site(tmp_path)
    assert site.fleet is not None, "the shipped site has data hosts (data-hosts.yaml)"
    roles = {}
    for where, argv, variables in worker_runs():
        for name in ("CUTOVER_WORKER_ROLE", "CUTOVER_DATA_HOST", "CUTOVER_STAGING_DIR",
                     "CUTOVER_MAX_COPIES", "CUTOVER_DEPLOYMENT", "CUTOVER_BUILD_ID"):  # fmt: skip
            monkeypatch.delenv(name, raising=False)
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        args = parser().parse_args(argv)  # the flags' defaults read the environment
        assert _role_problem(args, [site]) is None, f"{where}: {_role_problem(args, [site])}"
        roles[where] = args.role
        if args.data_host is not None:
            assert data_queue(args.task_queue, args.data_host) == f"cutover-data-{args.data_host}"
    assert roles["Deployment/cutover-worker"] == "orchestration"
    assert roles["StatefulSet/cutover-data"] == "data"
    assert roles[DATA_UNIT.name] == "data"


def test_role_checks_reject_a_data_host_the_site_does_not_name(tmp_path: Path) -> None:
    site = shipped_site(tmp_path)
    ok = parser().parse_args(["worker", "--role", "data", "--data-host", "cutover-data-0",
                              "--staging-dir", "/s", "--task-queue", "cutover"])  # fmt: skip
    assert _role_problem(ok, [site]) is None
    bad = parser().parse_args(["worker", "--role", "data", "--data-host", "cutover-data-7",
                               "--staging-dir", "/s", "--task-queue", "cutover"])  # fmt: skip
    assert "not in its fleet.dataHosts" in str(_role_problem(bad, [site]))


def test_data_host_pod_names_are_the_sites_data_hosts(tmp_path: Path) -> None:
    sts, site = data_hosts(), shipped_site(tmp_path)
    assert fleet_problems(sts, site) == []
    # the StatefulSet's governing Service: headless, selecting exactly its pods
    svc = kind(manifests(), "Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # no other workload's selector takes the data hosts' pods (metrics Service, policy)
    worker_svc = kind(manifests(), "Service", "cutover-worker-metrics")
    assert not worker_svc["spec"]["selector"].items() <= labels.items()


def test_fleet_checker_rejects_a_statefulset_the_site_does_not_match(tmp_path: Path) -> None:
    sts, site = data_hosts(), shipped_site(tmp_path)
    more = {**sts, "spec": {**sts["spec"], "replicas": len(pod_names(sts)) + 1}}
    assert any("fleet.dataHosts" in p for p in fleet_problems(more, site))
    c = data_container()
    fixed = [*c["args"]]
    fixed[fixed.index("--data-host") + 1] = "conv-01"
    tpl = sts["spec"]["template"]
    named = {**sts, "spec": {**sts["spec"], "template": {**tpl, "spec": {
        **tpl["spec"], "containers": [{**c, "args": fixed}]}}}}  # fmt: skip
    assert any("$(POD_NAME)" in p for p in fleet_problems(named, site))


def test_data_hosts_stage_apart_on_the_shared_staging_volume(tmp_path: Path) -> None:
    sts, c, site = data_hosts(), data_container(), shipped_site(tmp_path)
    argv = cutover_argv([*c["command"], *c["args"]])
    assert argv is not None
    spec = pod_spec(sts)
    volumes = {v["name"]: v for v in spec["volumes"]}
    templates = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}

    def volume_of(path: str) -> str:
        """The volume mounted deepest on the way to `path`."""
        p = PurePosixPath(path)
        found = [m for m in mounts if PurePosixPath(m) in (p, *p.parents)]
        assert found, f"{path} is on no mounted volume"
        return str(mounts[max(found, key=len)])

    # staging: its own directory (named after the pod) under the site's stagingDir, on
    # the same ReadWriteMany claim the orchestration worker mounts there (the KVM hosts
    # and the orchestration worker read the pools under it at the same path)
    staging = option(argv, "--staging-dir")
    assert "$(POD_NAME)" in staging
    assert site.stagingDir is not None
    assert PurePosixPath(site.stagingDir) in PurePosixPath(staging).parents
    claim = volumes[volume_of(staging)]["persistentVolumeClaim"]["claimName"]
    w_mounts = {m["mountPath"]: m["name"] for m in worker_container()["volumeMounts"]}
    w_volumes = {v["name"]: v for v in pod_spec(worker())["volumes"]}
    w_claim = w_volumes[w_mounts[site.stagingDir]]["persistentVolumeClaim"]["claimName"]
    assert claim == w_claim
    assert (
        "ReadWriteMany" in kind(manifests(), "PersistentVolumeClaim", claim)["spec"]["accessModes"]
    )
    # what one worker process owns (audit log, site archive): a volume per pod
    for flag in ("--audit-log", "--site-archive"):
        assert volume_of(option(argv, flag)) in templates, flag
    # the same image, queue, Temporal connection and Secrets as the orchestration worker
    assert c["image"] == worker_container()["image"]
    k8s = cutover_argv([*worker_container()["command"], *worker_container()["args"]])
    assert k8s is not None and option(argv, "--task-queue") == option(k8s, "--task-queue")
    for var in ("TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_TLS_CERT", "TEMPORAL_TLS_KEY",
                "TEMPORAL_TLS_CA"):  # fmt: skip
        assert env(c)[var] == env(worker_container())[var], var
    secrets = {v["secret"]["secretName"] for v in volumes.values() if "secret" in v}
    w_secrets = {v["secret"]["secretName"] for v in w_volumes.values() if "secret" in v}
    assert secrets <= w_secrets and "cutover-dns-tsig" not in secrets
    # a new image replaces no data host mid-copy: pods are replaced when deleted
    assert sts["spec"]["updateStrategy"]["type"] == "OnDelete"
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert (
        pod_spec(sts)["securityContext"]["runAsUser"]
        == pod_spec(worker())["securityContext"]["runAsUser"]
    )


def test_only_orchestration_workers_are_versioned() -> None:
    # a data host on build B would not take the steps of cutovers pinned to build A
    data = [
        (w, a, v) for w, a, v in worker_runs() if "--role" in a and option(a, "--role") == "data"
    ]
    assert {w for w, _, _ in data} == {"StatefulSet/cutover-data", DATA_UNIT.name}
    for where, argv, variables in data:
        assert not VERSIONING & ({*argv} | set(variables)), where
    # nor through any variable the data hosts' manifest sets (secretKeyRef, configMapKeyRef)
    assert not VERSIONING & set(ENV_NAME.findall(yaml.safe_dump(data_hosts())))
    # the orchestration worker's build is its image's tag: one build per image
    e = env(worker_container())
    assert e["CUTOVER_DEPLOYMENT"]
    assert e["CUTOVER_BUILD_ID"] == worker_container()["image"].rsplit(":", 1)[1]


def test_systemd_data_host_instances_keep_apart() -> None:
    (argv,) = [a for w, a in cutover_invocations() if w == DATA_UNIT.name]
    assert option(argv, "--role") == "data" and option(argv, "--data-host") == "%i"
    service = {k: v for s, k, v in unit(DATA_UNIT) if s == "Service"}
    state = [PurePosixPath(f"/var/lib/{d}") for d in service["StateDirectory"].split()]
    for flag in ("--staging-dir", "--audit-log", "--site-archive"):
        p = PurePosixPath(option(argv, flag))
        assert "%i" in str(p), f"{flag}: two instances would share {p}"
        assert any(s in (p, *p.parents) for s in state), f"{flag} {p} outside StateDirectory"
    # hardened as the worker unit is
    worker = {k: v for s, k, v in unit(SYSTEMD / "cutover-worker.service") if s == "Service"}
    hardening = {k for k in worker if k.startswith(("Protect", "Restrict", "Private", "System"))}
    hardening |= {"NoNewPrivileges", "CapabilityBoundingSet", "User"}
    assert {k: service.get(k) for k in hardening} == {k: worker[k] for k in hardening}
    # its own metrics port: it may share a machine with cutover-worker.service
    (worker_argv,) = [a for w, a in cutover_invocations() if w == "cutover-worker.service"]
    assert option(argv, "--metrics-address") != option(worker_argv, "--metrics-address")


def test_data_hosts_network_policy_allows_metrics_in_and_the_data_path_out() -> None:
    labels = data_hosts()["spec"]["template"]["metadata"]["labels"]
    (policy,) = [
        d for d in manifests()
        if d["kind"] == "NetworkPolicy"
        and d["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]  # fmt: skip
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    (port,) = [p["containerPort"] for p in data_container()["ports"] if p["name"] == "metrics"]
    assert {p["port"] for r in policy["spec"]["ingress"] for p in r["ports"]} == {port}
    egress = {p["port"] for r in policy["spec"]["egress"] for p in r.get("ports", [])}
    assert {53, 7233, 443} <= egress and {22, 16514} & egress
