"""`mdiexit pilot` end to end on a small emulated site: every option runs, report.json holds its figures, and
report.html is one self-contained page with its plots embedded and the verdict and figures of report.json."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mdiexit.config import load_cluster, write_cluster
from mdiexit.pilot.run import OPTIONS, fastest_worker, option_cluster
from mdiexit.runtime.ports import local_nodes

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def site(tmp_path, tiny_package):
    nodes = local_nodes([{"slowdown": 60, "power": "raspberry-pi-4", "bandwidth_mbps": 20},
                         {"slowdown": 20, "power": "jetson-nano", "bandwidth_mbps": 50},
                         {"slowdown": 40, "power": {"idle_w": 2.0, "busy_w": 5.0, "j_per_mb": 0.3},
                          "bandwidth_mbps": 30}], latency_ms=2)
    return write_cluster(tmp_path / "site.yaml", package=tiny_package, nodes=nodes)


def test_options_run_on_the_site_their_names_promise(site):
    cluster = load_cluster(site)
    assert fastest_worker(cluster) == "w1"
    assert [n.name for n in option_cluster(cluster, "local")[0].nodes] == ["source"]
    assert [n.name for n in option_cluster(cluster, "fastest")[0].nodes] == ["source", "w1"]
    assert option_cluster(cluster, "ddi-exit")[1] == "ddi-exit" and option_cluster(cluster, "mdi-exit")[1] == "mdi-exit"


def test_a_short_pilot_writes_the_report_a_manager_reads(site, tmp_path):
    out = tmp_path / "pilot"
    run = subprocess.run([sys.executable, "-m", "mdiexit.cli", "pilot", "--cluster", str(site), "--minutes", "1.25",
                          "--out", str(out)], capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[pilot" in run.stderr and "min left" in run.stderr  # progress all along
    report = json.loads((out / "report.json").read_text())
    assert list(report["options"]) == list(OPTIONS)
    for name, o in report["options"].items():
        assert o["lost"] == 0 and o["completed"] > 0, name
        assert o["throughput_per_s"] > 0 and o["joules_per_item"] > 0 and o["bytes_per_item"] >= 0, name
    assert report["options"]["local"]["bytes_per_item"] < report["options"]["ddi-exit"]["bytes_per_item"]
    assert {w["what"].split(" like ")[0] for w in report["what_if"]} >= {"one more device"}
    assert any("uplink halved" in w["what"] for w in report["what_if"])
    page = (out / "report.html").read_text()
    assert len(re.findall(r'<img alt="\w+" src="data:image/png;base64,', page)) >= 2
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched
    assert report["verdict"] in page.replace("&#x27;", "'")
    mdi = report["options"]["mdi-exit"]
    assert f"{mdi['throughput_per_s']:.1f}" in page
