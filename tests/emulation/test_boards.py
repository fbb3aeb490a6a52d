import pytest
import yaml

from mdiexit.config import load_cluster
from mdiexit.emulation.boards import CPU_PRESETS, HOST_MIPS, cpu_slowdown_of


def test_a_board_is_read_as_this_hosts_rating_over_its_own():
    for board, (mips, _) in CPU_PRESETS.items():
        assert cpu_slowdown_of(board) == pytest.approx(HOST_MIPS / mips)
    # slower boards are charged more: a Pi 3 more than a Pi 4, a Pi 4 more than a Pi 5
    assert cpu_slowdown_of("raspberry-pi-3") > cpu_slowdown_of("raspberry-pi-4") > cpu_slowdown_of("raspberry-pi-5")


def test_a_number_stands_and_a_board_faster_than_the_host_is_not_charged_below_one():
    assert cpu_slowdown_of(3) == 3.0 and cpu_slowdown_of(None) is None
    assert cpu_slowdown_of("raspberry-pi-5", host_mips=1000.0) == 1.0


def test_a_cluster_file_names_boards_and_every_node_gets_its_factor(tmp_path):
    nodes = [{"name": "src", "role": "source", "port": 6000, "cpu_slowdown": "raspberry-pi-4"},
             {"name": "w1", "port": 6001, "cpu_slowdown": "jetson-nano"},
             {"name": "w2", "port": 6002, "cpu_slowdown": 6},
             {"name": "w3", "port": 6003}]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"package": "pkg", "nodes": nodes}))
    c = load_cluster(path)
    assert c.node("src").cpu_slowdown == pytest.approx(HOST_MIPS / CPU_PRESETS["raspberry-pi-4"][0])
    assert c.node("w1").cpu_slowdown == pytest.approx(HOST_MIPS / CPU_PRESETS["jetson-nano"][0])
    assert c.node("w2").cpu_slowdown == 6.0 and c.node("w3").cpu_slowdown is None


def test_the_guides_table_of_boards_is_the_codes():
    """docs/guide/emulation.md lists every preset with its rating and the factor the code reads it as."""
    import re
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[2] / "docs/guide/emulation.md").read_text()
    rows = {m[1]: (float(m[2].replace(",", "")), float(m[3]))
            for m in re.finditer(r"^\| `([a-z0-9-]+)` \|[^|]+\| ([\d,]+) \| ([\d.]+) \|$", guide, re.M)}
    assert set(rows) == set(CPU_PRESETS)
    for board, (mips, factor) in rows.items():
        assert mips == CPU_PRESETS[board][0]
        assert factor == pytest.approx(cpu_slowdown_of(board), abs=0.005)
    assert f"| {HOST_MIPS:,.0f} |" in guide
