"""Supervised services: the units `mdiexit install-service` writes pass systemd's own checks, the examples in deploy/
are those very renderings, and the container files hold the settings a site and a Jetson need."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mdiexit.ops.services import ROLES, Service, ServiceError, write_service

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MAX_EXPOSURE = 3.5
EXAMPLES = [("worker", "jetson-a"), ("source", "source"), ("serve", "source")]
needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")


def mdiexit(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "mdiexit.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def _runnable(unit: Path, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an mdiexit that exists here (verify checks the executable)."""
    exe = Path(sys.executable).parent / "mdiexit"
    out = tmp_path / unit.name
    out.write_text(unit.read_text().replace("/opt/mdiexit/bin/mdiexit", str(exe)))
    return out


@needs_systemd
@pytest.mark.parametrize("role, name", EXAMPLES)
def test_each_unit_verifies_and_is_hardened(role, name, tmp_path):
    unit = _runnable(DEPLOY / "systemd" / f"mdiexit-{role}-{name}.service", tmp_path)
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True,
                              text=True, timeout=60)
    exposure = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout).group(1))
    assert exposure <= MAX_EXPOSURE, security.stdout[-2000:]


@pytest.mark.parametrize("role, name", EXAMPLES)
def test_the_deploy_examples_are_what_install_service_writes(role, name, tmp_path):
    service = Service(role, name, cluster=Path("site.yaml"), executable=Path("/opt/mdiexit/bin/mdiexit"))
    unit, env = write_service(service, tmp_path)
    assert unit.read_text() == (DEPLOY / "systemd" / unit.name).read_text()
    assert env.read_text() == (DEPLOY / "systemd" / env.name).read_text()
    text = unit.read_text()
    assert "Restart=always" in text and "DynamicUser=yes" in text and f"EnvironmentFile={service.env_file}" in text
    assert ("Environment=MDIEXIT_RUNTIME_DIR=/run/mdiexit" in text) == (role != "worker")  # for `mdiexit status`


def test_install_service_writes_a_unit_that_runs_the_command_a_person_would(tmp_path):
    out = mdiexit("install-service", "--role", "worker", "--name", "rpi-a", "--join", "tcp://10.0.0.2:5550",
                  "--out", tmp_path)
    assert out.returncode == 0, out.stderr
    unit = (tmp_path / "mdiexit-worker-rpi-a.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert " worker --join tcp://10.0.0.2:5550 --name rpi-a --key /var/lib/mdiexit/keys/rpi-a.key_secret " in exec_start
    assert (tmp_path / "mdiexit-worker-rpi-a").is_file()
    assert "systemctl enable --now mdiexit-worker-rpi-a.service" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["--role", "serve", "--name", "s", "--join", "tcp://a:1"], "--join is for a worker"),
    (["--role", "source", "--name", "s"], "needs the cluster file"),
    (["--role", "worker", "--name", "a b", "--cluster", "x.yaml"], "--name 'a b'"),
    (["--role", "worker", "--name", "w", "--join", "10.0.0.2:5550"], "tcp://HOST:PORT"),
])
def test_a_service_that_cannot_work_is_one_line(args, message, tmp_path):
    out = mdiexit("install-service", *args, "--out", tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("mdiexit: error: ") and message in out.stderr


def test_a_service_without_a_cluster_or_an_address_is_refused():
    with pytest.raises(ServiceError, match="--join tcp://SOURCE:PORT"):
        Service("worker", "w")


def test_every_role_renders():
    for role in ROLES:
        assert f"mdiexit {role}" in Service(role, "n", cluster=Path("s.yaml")).unit()


def test_the_container_files_carry_what_a_site_and_a_jetson_need():
    site = yaml.safe_load((DEPLOY / "compose" / "site.yaml").read_text())
    assert {"source", "worker-a", "worker-b"} <= set(site["services"])
    for svc in site["services"].values():
        assert svc["restart"] == "always" and svc["image"] == "mdiexit" and svc["stop_signal"] == "SIGTERM"
        assert any(v.endswith(":/site:ro") for v in svc["volumes"])
    jetson = yaml.safe_load((DEPLOY / "compose" / "jetson.yaml").read_text())["services"]["worker"]
    assert jetson["runtime"] == "nvidia" and jetson["network_mode"] == "host"
    ds = yaml.safe_load((DEPLOY / "k3s" / "worker-daemonset.yaml").read_text())
    assert ds["apiVersion"] == "apps/v1" and ds["kind"] == "DaemonSet"
    pod = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"] == ds["spec"]["template"]["metadata"]["labels"]
    assert pod["runtimeClassName"] == "nvidia" and pod["hostNetwork"] is True
    worker = pod["containers"][0]
    assert worker["args"][:2] == ["worker", "--cluster"] and pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["name"] for m in worker["volumeMounts"]}
    assert mounts <= {v["name"] for v in pod["volumes"]}
