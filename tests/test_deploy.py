"""deploy/ checked against the code it deploys (pure: no cluster, no service, no network).

Every YAML file parses (multi-document, the Helm chart's extraObjects included); the
required fields are there (kinds, names, images, the four search attributes with their
types, numHistoryShards, TLS with client auth, PostgreSQL with its password from a Secret);
every `cutover` command line (container command/args, systemd ExecStart) parses with the
real CLI's parser, so a flag the CLI lacks fails here; every CUTOVER_* / TEMPORAL_* name in
deploy/ is one the product's source reads, and the worker's environment file lists all the
worker reads; images, task queues, namespaces, addresses, certificate names, mounts and the
metrics port agree across files. The checkers are tested on a bogus flag and variable, so
a violation is known to fail.
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
from cutover.site import load_site

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
    need |= {"Deployment", "Service", "NetworkPolicy", "Kustomization"}
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
    assert "Deployment/cutover-worker/worker" in where
    assert {"cutover-worker.service", "cutover-server.service"} <= where
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
    for _, key, value in unit(SYSTEMD / "cutover-worker.service"):
        if key == "EnvironmentFile":
            assert value.lstrip("-") == "/etc/cutover/worker.env"


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
    # the same worker as on Kubernetes: same flags (values may differ per host)
    k8s = cutover_argv([*worker_container()["command"], *worker_container()["args"]])
    assert k8s is not None
    assert {a for a in argv if a.startswith("--")} == {a for a in k8s if a.startswith("--")}


@pytest.mark.parametrize("name", ["cutover-worker.service", "cutover-server.service"])
def test_systemd_units_have_their_sections(name: str) -> None:
    sections = {s for s, _, _ in unit(SYSTEMD / name)}
    assert sections == {"Unit", "Service", "Install"}
    assert unit_values(SYSTEMD / name, "WantedBy") == ["multi-user.target"]
