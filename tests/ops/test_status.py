"""`mdiexit status`: the snapshot a running source writes, read back during a real run of five nodes, and the one
line it says when no source is running."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mdiexit.config import write_cluster
from mdiexit.ops.status import (
    NodeStatus,
    SiteStatus,
    SourceStatus,
    StatusError,
    read_status,
    render,
    write_status,
)
from mdiexit.runtime.ports import local_nodes

ROOT = Path(__file__).resolve().parents[2]


def mdiexit(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "mdiexit.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def _status(**changes) -> SiteStatus:
    fields = dict(cluster="site.yaml", source="source", mode="mdi-exit", phase="admitting", pid=1,
                  written_at=time.time(), run_s=3.0, package="p@1", throughput_per_s=10.0, admission_rate_per_s=10.0,
                  admitted=30, completed=29, in_flight=1, rejected=0, expired=0, failed=0, accuracy=0.9,
                  nodes=[NodeStatus("source", "source", "up", "p@1", 3.0, 0.5, 20.0, None),
                         NodeStatus("w1", "worker", "down", "p@2", None, None, None, None)], events=[])
    return SiteStatus(**{**fields, **changes})


def test_a_snapshot_reads_back_and_shows_what_is_wrong(tmp_path, monkeypatch):
    monkeypatch.setenv("MDIEXIT_RUNTIME_DIR", str(tmp_path))
    path = write_status(_status(), 5550)
    assert path.parent == tmp_path
    back, where = read_status("source", 5550)
    assert back == _status(written_at=back.written_at) and where == path
    view = render(back)
    assert re.search(r"\nw1 +worker +DOWN .* p@2$", view)  # a node down, on another package version
    assert "STALE" in render(back, now=back.written_at + 60)
    assert "done (ended 60 s ago)" in render(_status(phase="done", written_at=0.0), now=60.0)
    assert "12 frames skipped" in render(_status(skipped=12)) and "skipped" not in render(_status())
    with pytest.raises(StatusError, match="is `mdiexit run`, `source` or `serve` running"):
        read_status("source", 5551)
    cams = _status(sources=[SourceStatus("cam-a", 1.0, 80.0, 20, 19, 0.95), SourceStatus("cam-c", 2.0, 160.0, 40, 38,
                                                                                         None, skipped=7)])
    write_status(cams, 5550)
    assert read_status("source", 5550)[0].sources == cams.sources  # each source's own counts, read back
    assert re.search(r"\n  cam-c +2 +160.0/s +40 +38 +- +7$", render(cams), re.M)
    assert "sources:" not in view  # one source: its counts are the site's line


def test_no_running_source_is_one_line(tiny_package, tmp_path):
    cluster = write_cluster(tmp_path / "c.yaml", package=tiny_package, nodes=local_nodes(2))  # a port nobody uses
    env = {**os.environ, "MDIEXIT_RUNTIME_DIR": str(tmp_path / "empty")}
    out = mdiexit("status", "--cluster", cluster, env=env)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("mdiexit: error: no status from source 'source'")


@pytest.mark.cluster
def test_status_during_a_run_lists_every_node_with_its_state(tiny_package, tmp_path):
    cluster = write_cluster(tmp_path / "five.yaml", package=tiny_package,
                            nodes=local_nodes([{"slowdown": 8}, {"slowdown": 4}, {"slowdown": 4}, {"slowdown": 8},
                                               {"slowdown": 16}], latency_ms=1, power="jetson-nano"))
    env = {**os.environ, "MDIEXIT_RUNTIME_DIR": str(tmp_path / "run")}
    run = subprocess.Popen([sys.executable, "-m", "mdiexit.cli", "run", "--cluster", str(cluster), "--rate", "100",
                            "--duration", "8", "--quiet", "--out", str(tmp_path / "out")], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and run.poll() is None:
            out = mdiexit("status", "--cluster", cluster, "--json", env=env)
            if out.returncode == 0:
                snap = json.loads(out.stdout)
                if snap["phase"] == "admitting" and snap["completed"] > 0 and \
                        all(n["tasks_per_s"] is not None for n in snap["nodes"]):
                    seen = snap
                    break
            time.sleep(0.2)
        assert seen is not None, "no snapshot of the run while it admitted"
        assert [n["name"] for n in seen["nodes"]] == ["source", "w1", "w2", "w3", "w4"]
        assert all(n["state"] == "up" and n["package"] == seen["package"] for n in seen["nodes"])
        assert all(n["link"] is not None for n in seen["nodes"][1:])
        assert all(n["watts"] > 1.0 for n in seen["nodes"])  # at least about the board's idle 1.9 W
        assert seen["joules_per_item"] > 0
        view = mdiexit("status", "--cluster", cluster, env=env).stdout
        assert all(f"w{i}" in view for i in range(1, 5)) and "admitting" in view and "J/item" in view
        _, err = run.communicate(timeout=120)
        assert run.returncode == 0, err[-3000:]
    finally:
        if run.poll() is None:
            run.kill()
    done = json.loads(mdiexit("status", "--cluster", cluster, "--json", env=env).stdout)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert done["phase"] == "done" and done["completed"] == summary["completed"]
