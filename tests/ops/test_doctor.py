"""`mdiexit doctor` on a keyed site: all green on a correct device, a failure naming the file for an exposed secret
key, and neighbours checked by a real CurveZMQ handshake (a listening peer with its own key, one with a key that
is not the one the cluster file names, and one that is not running)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from mdiexit.config import load_cluster, write_cluster
from mdiexit.ops.doctor import run_checks
from mdiexit.runtime.ports import local_nodes
from mdiexit.security import create_keys, load_identity, make_server

ROOT = Path(__file__).resolve().parents[2]


def mdiexit(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "mdiexit.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


@pytest.fixture
def site(tmp_path, tiny_package):
    keys = tmp_path / "keys"
    path = write_cluster(tmp_path / "site.yaml", package=tiny_package, keys_dir=str(keys),
                         nodes=local_nodes([{}, {"slowdown": 4}, {}]))
    create_keys([n.name for n in load_cluster(path).nodes], keys)
    return path


def _outcomes(checks) -> dict[str, str]:
    return {c.name: c.outcome for c in checks}


def test_a_correct_device_passes_and_an_exposed_secret_key_fails_naming_the_file(site, tmp_path):
    out = mdiexit("doctor", "--cluster", site, "--name", "w1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[ok  ] keys: w1's secret key" in out.stdout and "0 failed" in out.stdout
    secret = tmp_path / "keys" / "w1.key_secret"
    os.chmod(secret, 0o644)
    out = mdiexit("doctor", "--cluster", site, "--name", "w1")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("[FAIL] keys"))
    assert str(secret) in line and "readable by others" in line
    assert f"fix: run `chmod 600 {secret}`" in out.stdout
    report = json.loads(mdiexit("doctor", "--cluster", site, "--name", "w1", "--json").stdout)
    assert report["ok"] is False and {"name": "keys", "outcome": "fail"}.items() <= report["checks"][1].items()


def test_neighbours_are_checked_by_a_real_handshake(site, tmp_path):
    cluster = load_cluster(site)
    source, w2 = cluster.node("source"), cluster.node("w2")
    ctx = zmq.Context.instance()
    listening = ctx.socket(zmq.PULL)  # the source, with its own key
    make_server(listening, load_identity("source", cluster.public_keys(), tmp_path / "keys"))
    listening.bind(source.address)
    impostor_keys = tmp_path / "other"
    create_keys(["w2"], impostor_keys)  # w2's address, but a key that is not w2's
    impostor = ctx.socket(zmq.PULL)
    make_server(impostor, load_identity("w2", {"w2": None}, impostor_keys))
    impostor.bind(w2.address)
    try:
        checks = {c.name: c for c in run_checks(site, "w1")}
    finally:
        listening.close(0)
        impostor.close(0)
    assert checks["neighbour source"].outcome == "pass" and "handshake done" in checks["neighbour source"].found
    assert checks["neighbour w2"].outcome == "fail" and "refused the handshake" in checks["neighbour w2"].found
    alone = _outcomes(run_checks(site, "w1"))  # nobody listens now: a warning, not a failure
    assert alone["neighbour source"] == alone["neighbour w2"] == "warn"


def test_a_node_not_in_the_file_and_a_missing_package_fail(site, tmp_path):
    assert _outcomes(run_checks(site, "nobody"))["cluster file"] == "fail"
    broken = write_cluster(tmp_path / "broken.yaml", site, package=str(tmp_path / "no-package"))
    checks = run_checks(broken, "w1")
    assert _outcomes(checks)["package"] == "fail" and _outcomes(checks)["speed"] == "warn"
