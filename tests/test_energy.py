"""Energy per item: power models from the cluster file, the joules of a run by node and by exit, and the summary
of a simulated edge4 run whose boards are named."""

from __future__ import annotations

import pytest

from mdiexit.config import ConfigError, load_cluster, write_cluster
from mdiexit.energy import PRESETS, PowerError, PowerModel, cluster_models, power_model, run_energy
from mdiexit.protocol.stats import task_stats


def test_a_node_draws_idle_power_all_along_busy_power_while_it_computes_and_joules_per_megabyte_sent():
    pi = power_model("raspberry-pi-4")
    idle_only = pi.joules(elapsed_s=10.0, busy_s=0.0, bytes_sent=0.0)
    assert idle_only == pytest.approx(10 * PRESETS["raspberry-pi-4"][0][0])
    assert pi.joules(10.0, 10.0, 0.0) == pytest.approx(10 * PRESETS["raspberry-pi-4"][0][1])  # busy all along
    assert pi.joules(10.0, 0.0, 2e6) - idle_only == pytest.approx(2 * PRESETS["raspberry-pi-4"][0][2])
    assert power_model({"idle_w": 1, "busy_w": 3}) == PowerModel(1.0, 3.0, 0.0)
    assert power_model(None) is None
    for bad in ("pi-9", {"idle_w": 4, "busy_w": 2}, {"busy_w": 2}, {"idle_w": 1, "busy_w": 2, "volts": 5}):
        with pytest.raises(PowerError):
            power_model(bad)


def test_a_cluster_file_names_the_boards_and_a_wrong_one_is_refused_naming_the_field(tmp_path):
    assert [n.power for n in load_cluster("examples/edge4.yaml").nodes][:2] == ["raspberry-pi-4", "jetson-nano"]
    with pytest.raises(ConfigError, match=r"nodes\[1\]\.power: 'nano' is not a preset"):
        write_cluster(tmp_path / "c.yaml", "examples/edge4.yaml",
                      every_node=lambda n: {"power": "nano"} if n["name"] == "jetson-a" else {})


def _stats(busy_s: float, tasks: dict[int, int], task_s: dict[int, float], sent: float = 0.0) -> dict[str, float]:
    return {"elapsed_s": 10.0, "busy_s": busy_s, "bytes_sent": sent,
            **task_stats(tasks, task_s, task_s)}


def test_joules_per_item_and_per_exit_count_only_nodes_with_a_model():
    models = {"a": PowerModel(1.0, 5.0), "b": PowerModel(2.0, 4.0), "c": None}
    stats = {"a": _stats(4.0, {1: 100, 2: 40}, {1: 0.02, 2: 0.05}), "b": _stats(2.0, {2: 20}, {2: 0.1}),
             "c": _stats(9.0, {1: 5}, {1: 0.01})}
    e = run_energy(models, stats, completed=100, num_exits=2)
    assert e["energy_uncounted_nodes"] == ["c"] and set(e["energy_per_node_j"]) == {"a", "b"}
    assert e["joules"] == pytest.approx(sum(e["energy_per_node_j"].values()))
    assert e["joules_per_item"] == pytest.approx(e["joules"] / 100)
    assert 0 < e["joules_per_exit"][0] < e["joules_per_exit"][1]  # leaving later costs the later tasks
    assert run_energy({"c": None}, {"c": stats["c"]}, 100, 2)["joules_per_item"] is None


def test_a_simulated_run_reports_joules_per_item(tmp_path):
    from mdiexit.runtime.options import RunOptions
    from mdiexit.sim.run import simulate

    s = simulate("examples/edge4.yaml", RunOptions(rate=200.0, duration_s=4.0, warmup_s=0.5, live=False),
                 times="macs").summary
    assert s["joules_per_item"] > 0 and not s["energy_uncounted_nodes"]
    assert s["joules"] == pytest.approx(sum(s["energy_per_node_j"].values()))
    per_exit = s["joules_per_exit"]
    assert per_exit == sorted(per_exit) and per_exit[0] <= s["joules_per_item"] <= per_exit[-1]
    assert set(cluster_models(load_cluster("examples/edge4.yaml").nodes)) == set(s["energy_per_node_j"])


def test_a_node_that_meters_itself_reports_what_it_measured():
    models = {"a": PowerModel(1.0, 5.0), "jetson": None}
    stats = {"a": _stats(4.0, {1: 100}, {1: 0.02}), "jetson": {**_stats(3.0, {1: 50}, {1: 0.03}), "measured_j": 42.0}}
    e = run_energy(models, stats, completed=100, num_exits=1)
    assert e["energy_per_node_j"]["jetson"] == 42.0 and e["energy_measured_nodes"] == ["jetson"]
    assert e["energy_uncounted_nodes"] == [] and e["joules"] == pytest.approx(42.0 + e["energy_per_node_j"]["a"])
