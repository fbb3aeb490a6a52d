"""`mdiexit pilot` end to end on a small emulated site: every option runs, report.json holds its figures, and
report.html is one self-contained page with its plots embedded and the verdict and figures of report.json."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mdiexit.config import load_cluster, write_cluster
from mdiexit.pilot.report import write_html
from mdiexit.pilot.run import OPTIONS, fastest_worker, option_cluster, verdict
from mdiexit.runtime.ports import local_nodes

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


@pytest.mark.cluster
def test_a_short_pilot_writes_the_report_a_manager_reads(site, tmp_path):
    out = tmp_path / "pilot"
    run = subprocess.run([sys.executable, "-m", "mdiexit.cli", "pilot", "--cluster", str(site), "--minutes", "1.1",
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


def _report() -> dict:
    options = {name: {"mode": "mdi-exit", "nodes": ["source"], "admission": "rate", "throughput_per_s": tput,
                      "accuracy": 0.93, "bytes_per_item": b, "joules_per_item": j, "p50_ms": 20.0, "p95_ms": 80.0,
                      "lost": 0, "rejected": 0, "completed": 100}
               for name, tput, b, j in (("local", 180.0, 0.0, 0.036), ("fastest", 360.0, 1219.0, 0.023),
                                        ("ddi-exit", 990.0, 1280.0, 0.027), ("mdi-exit-fixed", 850.0, 1183.0, 0.03),
                                        ("mdi-exit", 1138.6, 1345.0, 0.027))}
    report = {"site": {"cluster": "site.yaml", "package": "pkg", "nodes": [
        {"name": "source", "role": "source", "slowdown": 40.0, "bandwidth_mbps": 20.0, "latency_ms": 5.0,
         "power": "raspberry-pi-4"}]}, "target_accuracy": 0.925, "thresholds": [0.9, 0.0],
        "planner_limit_per_s": 948.0, "seconds_per_option": 40.0, "options": options,
        "what_if": [{"what": "one more device like w1", "limit_per_s": 1239.8, "change": 0.31}],
        "energy_what_if": {"rate_per_s": 850.0, "measured_j": 0.03, "fewest_j": 0.026, "change": 0.026 / 0.03 - 1}}
    report["verdict"] = verdict(report)
    return report


def test_the_verdict_names_the_energy_objectives_saving_when_it_is_worth_saying():
    report = _report()
    assert "`objective: energy` could spend as little as 0.026 J per item (-13% against the measured 0.030)" \
        in report["verdict"]
    report["energy_what_if"]["change"] = -0.01
    assert "objective: energy" not in verdict(report)
    report["energy_what_if"] = None
    assert "objective: energy" not in verdict(report)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium here (apt-get install -y chromium)")
def test_the_page_renders_in_a_real_browser_with_its_figures(tmp_path):
    report = _report()
    page = write_html(report, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}"]
    out = subprocess.run([*base, f"--screenshot={shot}", "--window-size=1000,1800", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert shot.is_file(), out.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        grey = np.asarray(im.convert("L"), dtype=float)
    assert grey.shape == (1800, 1000)
    assert (grey < 128).mean() > 0.01 and grey.std() > 20  # text and bars drawn, not a blank page
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert "1138.6" in dom and "0.027" in dom and "one more device like w1" in dom
    assert report["verdict"].split(":")[0] in dom
    assert len(re.findall(r"<img [^>]*src=\"data:image/png;base64,", dom)) == 3
