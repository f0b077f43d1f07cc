"""The Helm chart (helm/evenflow), validated offline: helm lint, every values
set in ci/ rendered for both modes and validated against the Kubernetes API
schemas of 1.29 and 1.33 (kubernetes-validate --strict), the rendered
Evenflow config passing `evenflow check`, bad values refused with a clear
message, and the properties a rollout depends on (grace period, preStop,
probes, security context, least-privilege RBAC)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.conftest import BAD_VALUES, CHART, CI_VALUES, KUBE_VERSIONS, ROOT, Helm, by_kind, evenflow_containers, one, tool

VALIDATE_TIMEOUT = 180


def values(path: Path) -> dict[str, Any]:
    merged = yaml.safe_load((CHART / "values.yaml").read_text())
    for key, value in (yaml.safe_load(path.read_text()) or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def test_lint_strict(chart: Helm) -> None:
    for path in CI_VALUES:
        done = chart.run("lint", "--strict", CHART, "-f", path)
        assert done.returncode == 0, f"{path.name}:\n{done.stdout}{done.stderr}"


def test_ci_values_cover_both_modes() -> None:
    modes = {values(p)["mode"] for p in CI_VALUES}
    assert modes == {"gateway", "sidecar"}


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_rendered_manifests_validate(chart: Helm, kube: str, tmp_path: Path, client_chart: Path) -> None:
    """Every ci/ values set, and the client chart using the named templates,
    against the Kubernetes API schema of that version, strictly (unknown
    fields are errors)."""
    files = []
    for path in CI_VALUES:
        out = tmp_path / path.name
        out.write_text(chart.template("-f", path, kube=kube))
        files.append(out)
    out = tmp_path / "client-app.yaml"
    out.write_text(chart.template(chart=client_chart, kube=kube))
    files.append(out)
    done = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--no-warn", "-k", kube, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=VALIDATE_TIMEOUT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # ServiceMonitor is a CRD, not in the API schemas: checked below instead.
    assert "ERROR" not in done.stdout


# The fields of monitoring.coreos.com/v1 ServiceMonitor the chart uses
# (prometheus-operator's CRD, which is not available offline), strictly.
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "required": ["matchLabels"]},
                "namespaceSelector": {
                    "type": "object",
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "authorization": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "type": {"const": "Bearer"},
                                    "credentials": {
                                        "type": "object",
                                        "required": ["name", "key"],
                                        "properties": {"name": {"type": "string"}, "key": {"type": "string"}},
                                        "additionalProperties": False,
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_service_monitor_scrapes_the_admin_service(chart: Helm) -> None:
    docs = chart.docs("-f", CHART / "ci" / "gateway-loadbalancer-hpa.yaml")
    monitor = one(docs, "ServiceMonitor")
    jsonschema.validate(monitor, SERVICE_MONITOR)
    admin = [s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-admin")]
    assert len(admin) == 1
    labels = admin[0]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in admin[0]["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["authorization"]["credentials"] == {"name": "evenflow-admin", "key": "token"}
    # The LoadBalancer Service never carries the admin port.
    main = [s for s in by_kind(docs, "Service") if s["spec"]["type"] == "LoadBalancer"]
    assert [p["name"] for p in main[0]["spec"]["ports"]] == ["postgres", "redis"]


@pytest.mark.parametrize("path", [*CI_VALUES, None], ids=[*(p.stem for p in CI_VALUES), "client-app"])
def test_rendered_config_passes_evenflow_check(chart: Helm, path: Path | None, tmp_path: Path, client_chart: Path) -> None:
    docs = chart.docs("-f", path) if path else chart.docs(chart=client_chart)
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["evenflow.yaml"])
    token_file = config["admin"].get("token_file")
    if token_file:  # the mounted Secret, stood in for by a file of our own
        assert token_file.startswith("/var/run/secrets/evenflow/admin-token/")
        secret = tmp_path / "token"
        secret.write_text("0123456789abcdef0123456789abcdef\n")
        config["admin"]["token_file"] = str(secret)
    file = tmp_path / "evenflow.yaml"
    file.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "evenflow", "check", "--config", str(file)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert config["admin"]["listen"].startswith("0.0.0.0:")  # the kubelet's probes come from outside the pod


@pytest.mark.parametrize("path", BAD_VALUES, ids=[p.stem for p in BAD_VALUES])
def test_bad_values_fail_with_a_clear_message(chart: Helm, path: Path) -> None:
    expect = re.search(r"^# expect: (.+)$", path.read_text(), re.M)
    assert expect, f"{path.name} needs an '# expect: MESSAGE' line"
    done = chart.run("template", "rel", CHART, "-f", path)
    assert done.returncode != 0, f"{path.name} rendered without error"
    # helm install and upgrade render the same way, before touching the cluster.
    assert expect.group(1) in done.stderr, done.stderr


@pytest.mark.parametrize("path", CI_VALUES, ids=[p.stem for p in CI_VALUES])
def test_shutdown_and_probes(chart: Helm, path: Path) -> None:
    v = values(path)
    docs = chart.docs("-f", path)
    pods = [d["spec"]["template"]["spec"] for d in by_kind(docs, "Deployment")]
    assert pods, "no pod rendered"
    grace = v["preStopSleep"] + v["drainTimeout"] + v["terminationMargin"]
    for pod in pods:
        assert pod["terminationGracePeriodSeconds"] == grace
        (c,) = evenflow_containers(pod)
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": v["adminPort"]}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": v["adminPort"]}
        assert c["args"][:3] == ["run", "--config", "/etc/evenflow/evenflow.yaml"]
        if v["preStopSleep"]:
            assert c["lifecycle"]["preStop"] == {"sleep": {"seconds": v["preStopSleep"]}}
        else:
            assert "lifecycle" not in c
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert mounts["/etc/evenflow"]["readOnly"] is True
        assert "/tmp" in mounts  # the only writable place
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["evenflow.yaml"])
    assert config["drain_timeout"] == f"{v['drainTimeout']}s"


def test_pre_stop_on_kubernetes_1_29_is_an_exec_sleep(chart: Helm) -> None:
    """The preStop sleep action is on by default from 1.30 only."""
    docs = chart.docs(kube="1.29.0")
    (c,) = evenflow_containers(one(docs, "Deployment")["spec"]["template"]["spec"])
    assert c["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "5"]}}


@pytest.mark.parametrize("path", CI_VALUES, ids=[p.stem for p in CI_VALUES])
def test_rbac_is_read_only_endpointslices_where_discovered(chart: Helm, path: Path) -> None:
    v = values(path)
    docs = chart.docs("-f", path)
    wanted = set()
    for listener in v["config"]["listeners"]:
        for source in [listener.get("backends", {}), *(r["backends"] for r in listener.get("routes", []))]:
            if "kubernetes" in source:
                wanted.add(source["kubernetes"].get("namespace", "apps"))
    if wanted:
        wanted |= set(v["rbac"]["extraNamespaces"])
    roles = by_kind(docs, "Role")
    assert {r["metadata"]["namespace"] for r in roles} == wanted
    for role in roles:
        assert role["rules"] == [
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]}
        ]
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    sa = v["serviceAccount"]["name"] or "rel-evenflow"
    for binding in by_kind(docs, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "apps"}]
    assert bool(by_kind(docs, "ServiceAccount")) == v["serviceAccount"]["create"]
    for deployment in by_kind(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == sa
        if v["mode"] == "gateway":
            assert pod["automountServiceAccountToken"] == bool(wanted)


def test_gateway_service_ports_follow_the_listeners(chart: Helm) -> None:
    docs = chart.docs("-f", CHART / "ci" / "gateway-grpc-websocket.yaml")
    service = next(s for s in by_kind(docs, "Service") if s["metadata"]["name"] == "rel-evenflow")
    assert service["spec"]["ports"] == [
        {"name": "api", "port": 50051, "targetPort": "api", "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"},
        {"name": "chat-ws", "port": 8080, "targetPort": "chat-ws", "protocol": "TCP", "appProtocol": "kubernetes.io/ws"},
    ]
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    (c,) = evenflow_containers(deployment["spec"]["template"]["spec"])
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"api": 50051, "chat-ws": 8080, "admin": 9901}
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_gateway_extras_hpa_pdb_spread(chart: Helm) -> None:
    docs = chart.docs("-f", CHART / "ci" / "gateway-loadbalancer-hpa.yaml")
    deployment = one(docs, "Deployment")
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in pod["affinity"]["podAntiAffinity"]
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    # Port 636 needs no capability: the safe sysctl lowers the unprivileged range.
    assert pod["securityContext"]["sysctls"] == [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]
    service = next(s for s in by_kind(docs, "Service") if s["spec"]["type"] == "LoadBalancer")
    assert service["spec"]["externalTrafficPolicy"] == "Local"


def test_sidecar_native_and_classic(chart: Helm) -> None:
    native = one(chart.docs("-f", CHART / "ci" / "sidecar-native.yaml"), "Deployment")["spec"]["template"]["spec"]
    (c,) = native["initContainers"]
    assert c["name"] == "evenflow" and c["restartPolicy"] == "Always"
    assert [x["name"] for x in native["containers"]] == ["app"]
    classic_docs = chart.docs("-f", CHART / "ci" / "sidecar-classic.yaml")
    classic = one(classic_docs, "Deployment")["spec"]["template"]["spec"]
    assert "initContainers" not in classic
    assert [x["name"] for x in classic["containers"]] == ["app", "evenflow"]
    assert "restartPolicy" not in classic["containers"][1]
    # No gateway objects in sidecar mode.
    assert not by_kind(classic_docs, "Service") and not by_kind(classic_docs, "PodDisruptionBudget")
    volumes = {v["name"]: v for v in classic["volumes"]}
    assert volumes["evenflow-admin-token"]["secret"]["secretName"] == "my-app-evenflow-admin"


def test_client_chart_uses_the_named_templates(chart: Helm, client_chart: Path) -> None:
    docs = chart.docs(chart=client_chart)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (c,) = evenflow_containers(pod)
    assert c["restartPolicy"] == "Always"
    assert pod["terminationGracePeriodSeconds"] == 15 + 5 + 45 + 5
    assert pod["serviceAccountName"] == "rel-evenflow"
    config_map = one(docs, "ConfigMap")
    assert {"name": "evenflow-config", "configMap": {"name": config_map["metadata"]["name"]}} in pod["volumes"]
    assert one(docs, "Role")["metadata"]["namespace"] == "apps"


def test_config_changes_roll_the_pods(chart: Helm) -> None:
    def checksum(*args: str) -> str:
        deployment = one(chart.docs(*args), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/evenflow-config"])

    assert checksum() == checksum()
    assert checksum() != checksum("--set", "drainTimeout=31")


def _keys(name: str) -> set[str]:
    from evenflow import config  # the parser's own lists of keys

    return set(getattr(config, name))


def test_schema_knows_every_listener_and_route_key() -> None:
    """values.schema.json refuses unknown listener keys (a typo fails at helm
    install, not in a crash-looping pod), so it must know every key Evenflow
    does: a key added to evenflow/config.py goes into the schema too."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    listener = schema["properties"]["config"]["properties"]["listeners"]["items"]
    missing = _keys("_LISTENER_KEYS") - set(listener["properties"])
    assert not missing, f"add {sorted(missing)} to the listener in helm/evenflow/values.schema.json"
    missing = _keys("_ROUTE_KEYS") - set(listener["properties"]["routes"]["items"]["properties"])
    assert not missing, f"add {sorted(missing)} to the route in helm/evenflow/values.schema.json"


def test_chart_and_image_agree() -> None:
    chart_meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    pyproject = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.M)
    assert version and chart_meta["appVersion"] == version.group(1)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG VERSION={version.group(1)}" in dockerfile
    assert 'CMD ["run", "--config", "/etc/evenflow/evenflow.yaml"]' in dockerfile
    assert "USER 10001:10001" in dockerfile
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart_values["securityContext"]["runAsUser"] == 10001
    assert f"EXPOSE {chart_values['adminPort']}" in dockerfile


@pytest.mark.parametrize("path", CI_VALUES, ids=[p.stem for p in CI_VALUES])
def test_notes_tell_where_to_point_clients(chart: Helm, path: Path, tmp_path: Path) -> None:
    """NOTES.txt renders only at install, which needs a cluster: render it
    here through a copy of the chart that wraps it in a ConfigMap."""
    copy = tmp_path / "evenflow"
    shutil.copytree(CHART, copy)
    notes = (copy / "templates" / "NOTES.txt").read_text()
    (copy / "templates" / "NOTES.txt").unlink()
    (copy / "templates" / "_notes_test.tpl").write_text('{{- define "notes.test" -}}\n' + notes + "{{- end -}}\n")
    (copy / "templates" / "notes-test.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: {{ include "notes.test" . | toJson }}\n'
    )
    v = values(path)
    docs = chart.docs("-f", path, "--show-only", "templates/notes-test.yaml", chart=copy)
    text = docs[0]["data"]["notes"]
    grace = v["preStopSleep"] + v["drainTimeout"] + v["terminationMargin"]
    assert f"terminationGracePeriodSeconds is {grace}" in text
    for listener in v["config"]["listeners"]:
        port = listener["listen"].rsplit(":", 1)[1]
        where = f"rel-evenflow.apps.svc.cluster.local:{port}" if v["mode"] == "gateway" else f"127.0.0.1:{port}"
        assert f"{listener['name']} ({listener.get('protocol', 'tcp')}): {where}" in text, text
