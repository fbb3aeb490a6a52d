from pathlib import Path

import pytest

from mdiexit.bench.overhead import boards_cluster
from mdiexit.config import load_cluster, write_cluster
from mdiexit.emulation.boards import cpu_slowdown_of

REPO = Path(__file__).resolve().parents[2]


def test_the_charged_run_gives_every_node_the_board_its_power_names(tmp_path):
    edge = load_cluster(REPO / "examples/edge4.yaml")
    boards = load_cluster(boards_cluster(tmp_path, REPO / "examples/edge4.yaml"))
    for node in edge.nodes:
        assert node.cpu_slowdown is None  # the example itself is uncharged
        assert boards.node(node.name).cpu_slowdown == pytest.approx(cpu_slowdown_of(node.power))


def test_without_boards_there_is_no_charged_run(tmp_path):
    plain = write_cluster(tmp_path / "plain.yaml", REPO / "examples/edge4.yaml", every_node={"power": None})
    assert boards_cluster(tmp_path, plain) is None


def test_the_zero_cost_cluster_is_the_same_cluster_with_a_model_that_costs_nothing(tmp_path):
    from mdiexit.bench.overhead import zero_cost_cluster

    edge = load_cluster(REPO / "examples/edge4.yaml")
    zero = load_cluster(zero_cost_cluster(tmp_path, REPO / "examples/edge4.yaml", "edge"))
    assert zero.emulation == "zero-cost" and edge.emulation == "calibrated"
    assert [(n.name, n.slowdown, n.tasks, n.bandwidth_mbps) for n in zero.nodes] == [
        (n.name, n.slowdown, n.tasks, n.bandwidth_mbps) for n in edge.nodes]


def test_the_headline_is_the_median_run_and_keeps_every_runs_figure():
    from mdiexit.bench.overhead import median_run

    runs = [{"run": "a", "cpu_us_per_item_hop": 700.0}, {"run": "b", "cpu_us_per_item_hop": 600.0},
            {"run": "c", "cpu_us_per_item_hop": 900.0}]
    got = median_run(runs)
    assert got["run"] == "a" and got["repeats_us"] == [700.0, 600.0, 900.0]
    assert median_run(runs[:1])["cpu_us_per_item_hop"] == 700.0
