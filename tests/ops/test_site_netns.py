"""A site of separate machines, as far as one host allows: the source and each worker in a folder of their own
holding only their own secret key (plus the public keys they need), each worker in its own network namespace,
every node started with the exact command line of its systemd unit (`mdiexit install-service`), the workers
joining by the source's address. One worker is killed and started again by its "supervisor", one leaves; nothing
is lost. Progress is read with `mdiexit status`, as an operator would. Needs root."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mdiexit.config import ClusterConfig, NodeConfig, write_cluster
from mdiexit.emulation.netns import NamespaceNetwork, namespaces_supported
from mdiexit.ops.services import STATE_DIR, Service
from mdiexit.runtime.ports import free_ports

pytestmark = [pytest.mark.root, pytest.mark.cluster,
              pytest.mark.skipif(not namespaces_supported()[0], reason="network namespaces unavailable (needs root "
                                                                       "and iproute2 on Linux)")]
ROOT = Path(__file__).resolve().parents[2]
EXE = Path(sys.executable).parent / "mdiexit"
WORKERS = ("w1", "w2", "w3")


def mdiexit(*args, env=None):
    out = subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    return out


def unit_command(service: Service, folder: Path, args: str, cluster: Path | None = None) -> list[str]:
    """The unit's ExecStart, with the state folder at `folder` and its environment file's settings filled in."""
    line = service.command().replace(str(STATE_DIR), str(folder)).replace("$MDIEXIT_ARGS", args)
    if cluster is not None:
        line = line.replace("${MDIEXIT_CLUSTER}", str(cluster))
    return shlex.split(line)


def test_a_site_of_separate_machines_rides_out_a_crash_and_a_leave(tiny_package, tmp_path):
    source_port, *worker_ports = free_ports(1 + len(WORKERS))
    layout = ClusterConfig(package=tiny_package, nodes=(
        NodeConfig("source", source_port, role="source"),
        *(NodeConfig(w, p) for w, p in zip(WORKERS, worker_ports, strict=True))))
    env = {**os.environ, "MDIEXIT_RUNTIME_DIR": str(tmp_path / "run")}
    procs: dict[str, subprocess.Popen] = {}
    with NamespaceNetwork(layout) as net:
        # the source's machine: the cluster file (the source alone), its keys, the package
        src = tmp_path / "source"
        mdiexit("keys", "--names", "source", "--out", src / "keys")
        cluster = write_cluster(src / "site.yaml", package=tiny_package, keys_dir="keys", dead_after_ms=600,
                                nodes=[{"name": "source", "role": "source", "host": net.nodes["source"][1],
                                        "port": source_port, "slowdown": 1000}])
        workers = {}
        for w, port in zip(WORKERS, worker_ports, strict=True):  # each device: its own key and the source's public
            folder = tmp_path / w
            mdiexit("keys", "--names", w, "--out", folder / "keys")
            (folder / "keys" / "source.key").write_text((src / "keys" / "source.key").read_text())
            mdiexit("keys", "allow", folder / "keys" / f"{w}.key", "--name", w, "--keys-dir", src / "keys")
            ns, address = net.nodes[w]
            service = Service("worker", w, join=f"tcp://{net.nodes['source'][1]}:{source_port}", executable=EXE)
            workers[w] = ["ip", "netns", "exec", ns, *unit_command(
                service, folder, f"--host {address} --port {port} --slowdown 8")]
        assert sorted(p.name for p in (tmp_path / "w1" / "keys").iterdir()) == ["source.key", "w1.key",
                                                                               "w1.key_secret"]
        source_cmd = unit_command(Service("source", "source", cluster=cluster, executable=EXE), src,
                                  "--rate 60 --duration 30 --warmup 0", cluster=cluster)

        def start(name: str, cmd: list[str]) -> None:
            procs[name] = subprocess.Popen(cmd, cwd=tmp_path / name, env=env, stdout=subprocess.DEVNULL,
                                           stderr=open(tmp_path / f"{name}.log", "a"))

        def states() -> dict[str, str]:
            out = subprocess.run([str(EXE), "status", "--cluster", str(cluster), "--json"], capture_output=True,
                                 text=True, timeout=30, env=env)
            return {n["name"]: n["state"] for n in json.loads(out.stdout)["nodes"]} if out.returncode == 0 else {}

        def wait_for(what: str, test, timeout: float = 60.0) -> None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if test(states()):
                    return
                assert procs["source"].poll() is None, (tmp_path / "source.log").read_text()[-3000:]
                time.sleep(0.2)
            raise AssertionError(f"timed out waiting for {what}: {states()}")

        try:
            start("source", source_cmd)
            for w in WORKERS:
                start(w, workers[w])
            wait_for("three workers up", lambda s: all(s.get(w) == "up" for w in WORKERS))
            procs["w1"].kill()  # kill -9 of the device's node
            procs["w1"].wait(timeout=10)
            wait_for("w1 declared down", lambda s: s.get("w1") == "down")
            start("w1", workers["w1"])  # the supervisor starts the same command again
            wait_for("w1 back", lambda s: s.get("w1") == "up")
            procs["w2"].send_signal(signal.SIGTERM)  # systemctl stop: a graceful leave
            wait_for("w2 gone", lambda s: s.get("w2") == "left")
            assert procs["source"].wait(timeout=120) == 0, (tmp_path / "source.log").read_text()[-3000:]
            for w in ("w1", "w3"):  # the source shuts the workers down at the end
                assert procs[w].wait(timeout=30) == 0, (tmp_path / f"{w}.log").read_text()[-3000:]
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=10)
    summary = json.loads((src / "source" / "summary.json").read_text())
    assert summary["lost"] == summary["duplicates"] == 0 and summary["completed"] > 0
    assert summary["secure"] is True
    kinds = [(e["node"], e["kind"]) for e in summary["node_failures"]]
    assert {("w1", "joined"), ("w1", "silent"), ("w1", "back"), ("w2", "left")} <= set(kinds)
    assert kinds.index(("w1", "silent")) < kinds.index(("w1", "back"))  # noticed by its silence, then back
    tasks = {n: sum(summary["per_node"][n]["tasks_run"].values()) for n in ("source", *WORKERS)}
    # the slow source offloads most of the work (to whichever workers the rule finds soonest: one may get most of it
    # at 60 items/s); its own share rises while w1 restarts and w2 leaves (once 2,131 of 6,131 tasks)
    assert sum(tasks[w] for w in WORKERS) > tasks["source"], tasks
