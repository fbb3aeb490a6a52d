"""`pip install mdiexit` is what a worker needs and no more; a command that needs an extra says which, in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mdiexit.cli.errors import EXTRA_OF
from mdiexit.runtime.ports import local_nodes

from .runtime.conftest import write_cluster

ROOT = Path(__file__).resolve().parent.parent
OPTIONAL = sorted(EXTRA_OF)  # every package an extra brings: scipy, simpy, torch, tqdm, PIL, matplotlib, ...

# Imported first by every interpreter started with this folder on PYTHONPATH: the named packages cannot be imported,
# as on a device where they were never installed.
BLOCKER = '''
import importlib.abc, os, sys

BLOCKED = set(os.environ["MDIEXIT_TEST_BLOCKED"].split(","))


class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Absent())
'''


def without(tmp_path: Path, modules: list[str]) -> dict[str, str]:
    """An environment whose Python processes (and their children) cannot import `modules`."""
    site = tmp_path / "blocker"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT / 'src'}", "MDIEXIT_TEST_BLOCKED": ",".join(modules)}


def mdiexit(env: dict[str, str], *args, python: str = sys.executable, timeout: float = 120, cwd=ROOT):
    return subprocess.run([python, "-m", "mdiexit.cli", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=cwd)


def test_the_base_dependencies_are_the_workers_and_every_optional_package_has_an_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {d.split(">")[0].split("=")[0].lower() for d in project["dependencies"]}
    assert base == {"numpy", "onnxruntime", "pyzmq", "msgspec", "pyyaml", "lz4", "zstandard", "prometheus_client"}
    extras = project["optional-dependencies"]
    for module, extra in EXTRA_OF.items():
        dist = {"PIL": "pillow"}.get(module, module)
        assert any(d.lower().startswith(dist.lower()) for d in extras[extra]), (module, extra)


@pytest.mark.parametrize("blocked, args, extra", [
    ("simpy", ["simulate", "--duration", "1"], "sim"),
    ("scipy", ["plan"], "sim"),
    ("torch", ["train", "--epochs", "1", "--out", "{tmp}/run"], "train"),
    ("matplotlib", ["plot", "{tmp}"], "plot"),
])
def test_a_command_that_needs_an_extra_says_which_in_one_line(tmp_path, blocked, args, extra):
    (tmp_path / "timeline.csv").write_text("t_s,rate,operating_point,thresholds,max_backlog_s,throughput_per_s,"
                                           "accuracy\n0,100,1,0.9 0,0.01,99,0.9\n")
    out = mdiexit(without(tmp_path, [blocked]), *[a.format(tmp=tmp_path) for a in args])
    command = " ".join(a for a in args if not a.startswith("-") and "{" not in a and not a[0].isdigit())
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("mdiexit: error:")]
    assert len(lines) == 1, out.stderr
    assert f"`mdiexit {command}` needs {blocked}" in lines[0] and f"pip install 'mdiexit[{extra}]'" in lines[0]


@pytest.mark.cluster
def test_a_cluster_runs_with_no_optional_package_at_all(tmp_path, tiny_package):
    cluster = write_cluster(tmp_path / "c.yaml", tiny_package, [30, 10, 20])
    out = mdiexit(without(tmp_path, OPTIONAL), "run", "--cluster", cluster, "--rate", 100, "--duration", 2,
                  "--quiet", "--out", tmp_path / "run", timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["completed"] > 0 and summary["lost"] == 0


@pytest.mark.slow
@pytest.mark.cluster
def test_a_fresh_venv_with_the_base_install_runs_a_worker_in_a_cluster(tmp_path, tiny_package):
    """The real thing: `pip install .` into an empty venv, then that venv's `mdiexit worker` serves a cluster."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    report = tmp_path / "report.json"
    pip = subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--report", report, ROOT],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    installed = {i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]}
    assert installed & {"scipy", "simpy", "torch", "tqdm", "pillow", "matplotlib"} == set()
    # a source from the full install, and one worker from the lean venv, started by hand as on a device
    nodes = local_nodes([{"slowdown": 3000}, {"slowdown": 10}], bandwidth_mbps=50, latency_ms=1)  # a slow source
    from mdiexit.config import write_cluster as write_cluster_file

    cluster = write_cluster_file(tmp_path / "c.yaml", package=tiny_package, mode="mdi-exit", nodes=nodes)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    worker = subprocess.Popen([venv / "bin" / "mdiexit", "worker", "--cluster", cluster, "--name", "w1", "--insecure"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        out = subprocess.run([sys.executable, "-m", "mdiexit.cli", "source", "--cluster", cluster, "--rate", "100",
                              "--duration", "3", "--quiet", "--insecure", "--out", tmp_path / "run"],
                             capture_output=True, text=True, timeout=240, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        worker_log = worker.communicate(timeout=60)[0]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["lost"] == 0 and summary["completed"] > 0
    assert sum(summary["per_node"]["w1"]["tasks_run"].values()) > 0, (summary["per_node"], worker_log[-2000:])
