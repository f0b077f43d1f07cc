"""The container image, checked without a Docker engine: hadolint on the
Dockerfile (every rule, down to style, and the OCI labels), and the wheel set
the image's build stage makes (`pip wheel . -w DIR`) installed with no index
into a throwaway venv, as the final stage does, then run."""

from __future__ import annotations

import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT, tool

DOCKERFILE = ROOT / "Dockerfile"
LABELS = ("title", "description", "version", "revision", "licenses", "source")


def test_hadolint_clean() -> None:
    args = [tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) == 2 and len(set(stages)) == 1, stages  # build and final on the same pinned base
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:3\.1[12]\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base.group(1))
    assert "RUN pip wheel . -w /wheels" in text
    final = text.split("\nFROM ")[-1]
    assert "--no-index --find-links /wheels" in final
    assert not re.search(r"apt-get|gcc|build-essential|COPY \. ", final)  # no build tools, no source tree
    assert re.search(r'^ENTRYPOINT \["evenflow"\]$', final, re.M)  # exec form: SIGTERM reaches evenflow
    assert re.search(r"^USER \d+:\d+$", final, re.M)
    for label in LABELS:  # OCI image labels, on the final stage
        assert f"org.opencontainers.image.{label}=" in final, label


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wheel_set_installs_offline_and_runs(tmp_path: Path) -> None:
    """The image's two pip steps, here: build every wheel, then install
    Evenflow from those wheels alone (--no-index) into a fresh venv."""
    wheels = tmp_path / "wheels"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", str(ROOT), "-w", str(wheels)],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    env_dir = tmp_path / "image-venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version
    done = subprocess.run(
        [
            py,
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-index",
            "--find-links",
            str(wheels),
            f"evenflow=={version.group(1)}",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    evenflow = env_dir / "bin" / "evenflow"
    done = subprocess.run([evenflow, "--version"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"evenflow {version.group(1)}", done.stdout + done.stderr
    # And the image's CMD on a config like the chart's, outside the source tree.
    config = tmp_path / "evenflow.yaml"
    config.write_text(
        'admin: {listen: "0.0.0.0:9901"}\ndrain_timeout: 30s\nlisteners:\n'
        '  - {name: app, listen: "0.0.0.0:8080", backends: {kubernetes: {service: backend, port: 8080}}}\n'
    )
    done = subprocess.run([evenflow, "check", "--config", str(config)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
