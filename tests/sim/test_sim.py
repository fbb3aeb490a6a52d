"""The simulator: small clusters in virtual time, seeded, task times from MACs (the same in every process)."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import numpy as np
import pytest

from mdiexit.calibration import confidence
from mdiexit.cli import main
from mdiexit.config import write_cluster
from mdiexit.data import load_test_split
from mdiexit.evaluate import all_exit_logits
from mdiexit.exitprofile import outcome
from mdiexit.package import load_package
from mdiexit.policies.modes import MODES, no_exit_thresholds
from mdiexit.runtime.options import RunOptions
from mdiexit.runtime.report import write_results
from mdiexit.runtime.summary import SUMMARY_FIELDS, RunSummary
from mdiexit.sim.run import simulate

PACKAGE = Path(__file__).resolve().parents[2] / "models" / "mobilenetv2-fmnist"
ITEMS = 200
# what a run's summary must hold (RunSummary's required fields), and the efficiency the benches and plots read
RUNTIME_FIELDS = {f.name for f in msgspec.structs.fields(RunSummary) if f.required} | {"efficiency"}

def nodes(tasks: dict[str, list[int]] | None = None) -> list[dict]:
    spec = [("source", "source", 40, 20, 5), ("w1", "worker", 20, 50, 2), ("w2", "worker", 40, 30, 4)]
    out = [{"name": n, "role": r, "port": 6000 + i, "slowdown": f, "bandwidth_mbps": bw, "latency_ms": lat,
            "compress": "auto"} for i, (n, r, f, bw, lat) in enumerate(spec)]
    for n in out:
        if n["name"] in (tasks or {}):
            n["tasks"] = tasks[n["name"]]
    return out


@pytest.fixture
def full(tmp_path) -> Path:
    return write_cluster(tmp_path / "full.yaml", package=PACKAGE, mode="mdi-exit", nodes=nodes())


@pytest.fixture
def partial(tmp_path) -> Path:
    """Not every node holds every task, and not every node is linked to every other."""
    return write_cluster(tmp_path / "partial.yaml", package=PACKAGE, mode="mdi-exit",
                         nodes=nodes({"source": [1, 2], "w2": [3, 4]}),
                         neighbours={"source": ["w1", "w2"], "w1": ["source", "w2"], "w2": ["w1"]})


@pytest.fixture(scope="module")
def reference():
    """Every item's confidences and labels at every exit, from a single-process run."""
    pkg = load_package(PACKAGE)
    logits = all_exit_logits(pkg, load_test_split(pkg).images[:ITEMS], threads=1, progress=False)
    conf = np.stack([confidence(lg, t.temperature) for lg, t in zip(logits, pkg.tasks, strict=True)])
    return pkg, conf, logits.argmax(2)


def sim(path: Path, mode: str, rate: float = 40.0, duration: float = 3.0, seed: int = 1, **kw):
    opts = RunOptions(mode=mode, rate=rate, duration_s=duration, warmup_s=0.5, live=False, limit_items=ITEMS, **kw)
    return simulate(path, opts, seed=seed, times="macs")


def check_outcomes(result, reference, mode: str) -> None:
    pkg, conf, labels = reference
    thresholds = np.array(pkg.default_thresholds if MODES[mode].exits else no_exit_thresholds(pkg.num_tasks))
    exits = outcome(conf, thresholds)
    for r in result.ledger.records.values():
        k = r.key
        assert (r.label, r.exit) == (labels[exits[k], k], exits[k] + 1), (k, r)


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_completes_every_item_with_its_single_process_outcome(full, reference, mode):
    result = sim(full, mode)
    s = result.summary
    assert RUNTIME_FIELDS <= set(s) <= set(SUMMARY_FIELDS)  # and every key it writes is documented
    assert s["admitted"] >= 10 and s["completed"] == s["admitted"]
    assert s["lost"] == 0 and s["duplicates"] == 0 and s["failed"] == 0
    check_outcomes(result, reference, mode)
    if mode in ("ddi", "ddi-exit"):
        assert "1" not in s["per_node"]["source"]["tasks_run"]
    if mode == "mdi":
        assert s["per_node"]["source"]["tasks_run"]["1"] == s["admitted"]
    if mode == "local":
        assert set(s["per_node"]) == {"source"}


@pytest.mark.parametrize("mode", ["mdi-exit", "ddi-exit", "mdi"])
def test_partial_holdings_route_each_task_to_a_holder(partial, reference, mode):
    result = sim(partial, mode)
    s = result.summary
    assert s["completed"] == s["admitted"] > 0 and s["lost"] == 0
    check_outcomes(result, reference, mode)
    assert not {"1", "2"} & set(s["per_node"]["w2"]["tasks_run"])  # w2 holds only tasks 3 and 4
    assert not {"3", "4"} & set(s["per_node"]["source"]["tasks_run"])


def test_a_seed_makes_a_run_repeatable(full):
    a, b = sim(full, "mdi-exit", seed=3), sim(full, "mdi-exit", seed=3)
    rows = [[(r.label, r.exit, r.node, r.done_at) for _, r in sorted(x.ledger.records.items())] for x in (a, b)]
    assert rows[0] == rows[1]
    assert str(a.timeline) == str(b.timeline)  # (NaN accuracies before the first result)


def test_throughput_is_within_a_sane_factor_of_the_planners_limit(full):
    s = sim(full, "mdi-exit", rate=5000.0, duration=4.0).summary  # far above capacity: the gate holds it back
    assert s["ideal_batched_throughput_per_s"] is not None
    assert 0.25 * s["ideal_throughput_per_s"] <= s["throughput_per_s"] <= 1.1 * s["ideal_batched_throughput_per_s"]
    assert s["lost"] == 0


def test_rate_adaptation_finds_a_rate_and_logs_a_timeline(full):
    result = sim(full, "mdi-exit", rate=5.0, duration=8.0, admission="rate", target_accuracy=0.9)
    rates = [row["rate"] for row in result.timeline]
    assert max(rates) > 5.0  # it ramped up from the initial rate
    assert result.summary["completed"] == result.summary["admitted"]


def test_simulate_command_writes_what_run_writes(full, tmp_path):
    out = tmp_path / "out"
    code = main(["simulate", "--cluster", str(full), "--mode", "mdi-exit", "--rate", "30", "--duration", "2",
                 "--items", str(ITEMS), "--times", "macs", "--seed", "2", "--out", str(out)])
    assert code == 0
    assert {"summary.json", "items.csv", "timeline.csv"} <= {p.name for p in out.iterdir()}
    s = json.loads((out / "summary.json").read_text())
    assert RUNTIME_FIELDS <= set(s) <= set(SUMMARY_FIELDS) and s["simulated"]["seed"] == 2
    lines = (out / "items.csv").read_text().splitlines()
    assert len(lines) == s["admitted"] + 1


def test_write_results_accepts_a_simulated_run(full, tmp_path):
    path = write_results(sim(full, "ddi-exit", duration=1.0), tmp_path / "r")
    assert json.loads(path.read_text())["config"]["net"] == "simulated"


def test_the_energy_objective_spends_fewer_joules_at_the_same_rate(tmp_path):
    """The same cluster and rate under `objective: energy`: the jetson (the fewest joules per task) takes more of
    the work, and the run costs fewer joules per item than under the soonest finish, losing nothing. (Task times
    from MACs are tens of ms here, so the slack is wider than the default's 20 ms.)"""
    boards = {"source": "raspberry-pi-4", "w1": "jetson-nano", "w2": "raspberry-pi-4"}
    runs = {}
    for objective in ("throughput", "energy"):
        path = write_cluster(tmp_path / f"{objective}.yaml", package=PACKAGE, mode="mdi-exit", nodes=nodes(),
                             every_node=lambda n: {"power": boards[n["name"]]}, objective=objective,
                             energy_slack_ms=200)
        runs[objective] = sim(path, "mdi-exit", rate=20.0, duration=4.0).summary
    fast, frugal = runs["throughput"], runs["energy"]
    assert fast["lost"] == frugal["lost"] == 0
    assert frugal["joules_per_item"] < fast["joules_per_item"]
    assert frugal["per_node"]["w1"]["utilization"] > fast["per_node"]["w1"]["utilization"]


def test_cpu_slowdown_charges_the_runtimes_work_to_the_simulated_devices(tmp_path):
    """The same cluster and rate with every CPU 5x slower than this host's for the runtime's own work: the devices
    pay for it (runtime_share), so they are busier and the cluster carries less when overloaded."""
    runs = {}
    for cpu in (None, 5.0):
        path = write_cluster(tmp_path / f"cpu{cpu}.yaml", package=PACKAGE, mode="mdi-exit", nodes=nodes(),
                             every_node={"cpu_slowdown": cpu} if cpu else None)
        runs[cpu] = sim(path, "mdi-exit", rate=5000.0, duration=4.0).summary
    free, charged = runs[None], runs[5.0]
    assert all(n["runtime_share"] is None for n in free["per_node"].values())
    assert all(0 < n["runtime_share"] < 1 for n in charged["per_node"].values())
    assert charged["throughput_per_s"] < free["throughput_per_s"]
    assert charged["lost"] == free["lost"] == 0


def test_a_zero_cost_cluster_is_refused_with_the_fix(tmp_path, capsys):
    path = write_cluster(tmp_path / "zc.yaml", package=PACKAGE, mode="mdi-exit", nodes=nodes(), emulation="zero-cost")
    assert main(["simulate", "--cluster", str(path), "--rate", "10", "--duration", "1", "--times", "macs"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "zero-cost" in err[0] and "emulation calibrated" in err[0]


def cameras(tmp_path, weights: tuple[float, ...]) -> Path:
    """Two worker nodes shared by sources cam0, cam1, ... of these weights."""
    spec = [(f"cam{i}", "source", 80, {"weight": w}) for i, w in enumerate(weights)]
    spec += [("w1", "worker", 20, {}), ("w2", "worker", 40, {})]
    return write_cluster(tmp_path / "cams.yaml", package=PACKAGE, mode="mdi-exit", nodes=[
        {"name": n, "role": r, "port": 6100 + i, "slowdown": f, "bandwidth_mbps": 50, "latency_ms": 2, **extra}
        for i, (n, r, f, extra) in enumerate(spec)])


def test_backlogged_sources_share_the_cluster_by_weight(tmp_path, reference):
    result = sim(cameras(tmp_path, (1, 1, 2)), "mdi-exit", rate=100, duration=20.0, admission="rate")
    s = result.summary
    parts = s["sources"]
    assert set(parts) == {"cam0", "cam1", "cam2"} and all(p["backlogged"] and p["lost"] == 0 for p in parts.values())
    per_weight = [p["throughput_per_s"] / p["weight"] for p in parts.values()]
    assert max(per_weight) < 1.15 * min(per_weight)  # cam2 gets about twice cam0's or cam1's
    assert s["fairness_jain"] > 0.98
    assert s["completed"] == sum(p["completed"] for p in parts.values()) and s["lost"] == 0
    for source, ledger in result.ledgers.items():  # every result went to the source that admitted the item
        assert ledger.completed == parts[source]["completed"] > 0
    _, _, labels = reference
    for ledger in result.ledgers.values():  # each item classified as in a single process, from its own stream
        assert all(r.label == labels[r.exit - 1, r.key] for r in ledger.records.values() if r.key < ITEMS)

