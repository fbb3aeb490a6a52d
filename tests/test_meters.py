"""Power meters read from fake sysfs trees laid out as real boards lay them out: rails by name, whatever channel
they sit on."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdiexit.meters import find_meter


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text + "\n")
    return root


def test_a_hwmon_ina3221_is_read_by_rail_name_and_its_input_rail_wins(tmp_path):
    # an Orin-like board: the input rail on channel 2 (not 1), voltage in mV, current in mA
    root = _write(tmp_path, {"class/hwmon/hwmon0/name": "nct1008",
                             "class/hwmon/hwmon3/name": "ina3221",
                             "class/hwmon/hwmon3/in1_label": "VDD_CPU_GPU_CV", "class/hwmon/hwmon3/in1_input": "1000",
                             "class/hwmon/hwmon3/curr1_input": "500",
                             "class/hwmon/hwmon3/in2_label": "VDD_IN", "class/hwmon/hwmon3/in2_input": "5000",
                             "class/hwmon/hwmon3/curr2_input": "1200",
                             "class/hwmon/hwmon3/in7_label": "sum of shunt voltages",
                             "class/hwmon/hwmon3/in7_input": "1"})
    meter = find_meter(root)
    assert meter.names == ["VDD_IN"] and meter.read_w() == pytest.approx(6.0)


def test_without_an_input_rail_the_rails_are_summed(tmp_path):
    root = _write(tmp_path, {"class/hwmon/hwmon1/name": "ina3221",
                             "class/hwmon/hwmon1/in1_label": "VDD_GPU", "class/hwmon/hwmon1/power1_input": "1500000",
                             "class/hwmon/hwmon1/in3_label": "VDD_CPU", "class/hwmon/hwmon1/power3_input": "700000"})
    meter = find_meter(root)
    assert sorted(meter.names) == ["VDD_CPU", "VDD_GPU"] and meter.read_w() == pytest.approx(2.2)


def test_the_older_jetson_iio_layout_is_read_too(tmp_path):
    dev = "bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    root = _write(tmp_path, {f"{dev}/rail_name_0": "POM_5V_IN", f"{dev}/in_power0_input": "3120",
                             f"{dev}/rail_name_1": "POM_5V_GPU", f"{dev}/in_power1_input": "400"})
    meter = find_meter(root)
    assert meter.names == ["POM_5V_IN"] and meter.read_w() == pytest.approx(3.12)


def test_no_meter_or_an_unreadable_one_is_none(tmp_path):
    assert find_meter(tmp_path) is None
    root = _write(tmp_path, {"class/hwmon/hwmon2/name": "ina3221", "class/hwmon/hwmon2/in1_label": "VDD_IN",
                             "class/hwmon/hwmon2/power1_input": "not a number"})
    assert find_meter(root) is None


def test_the_energy_counter_integrates_the_watts_it_reads_and_drops_a_meter_that_fails(tmp_path):
    from mdiexit.meters import EnergyCounter

    root = _write(tmp_path, {"class/hwmon/hwmon0/name": "ina3221", "class/hwmon/hwmon0/in1_label": "VDD_IN",
                             "class/hwmon/hwmon0/power1_input": "4000000"})
    counter = EnergyCounter(find_meter(root), period_s=1.0)
    counter.read(0.0)
    counter.read(0.5)  # within the period: not read
    (root / "class/hwmon/hwmon0/power1_input").write_text("6000000\n")
    counter.read(2.0)  # 2 s from 4 W to 6 W: 10 J
    assert counter.joules == pytest.approx(10.0)
    (root / "class/hwmon/hwmon0/power1_input").write_text("broken\n")
    with pytest.raises(ValueError):
        counter.read(3.0)
    assert counter.meter is None and counter.joules == pytest.approx(10.0)


class FakeJtop:
    """jetson-stats' client as its documentation shows it: start(), ok(), and power['tot']['power'] in mW."""

    def __init__(self, milliwatts=(5000.0,), answers=True):
        self.readings, self.answers, self.started = list(milliwatts), answers, False

    def start(self):
        if not self.answers:
            raise ConnectionRefusedError("no jtop.sock")
        self.started = True

    def ok(self):
        return self.started

    @property
    def power(self):
        mw = self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]
        return {"rail": {"VDD_CPU_GPU_CV": {"power": mw / 2}}, "tot": {"power": mw, "avg": mw}}


def test_without_sysfs_rails_jtop_is_read_where_it_is_installed(tmp_path, monkeypatch):
    import sys
    import types

    from mdiexit.meters import EnergyCounter, JtopMeter

    client = FakeJtop((4000.0, 4000.0, 6000.0))
    monkeypatch.setitem(sys.modules, "jtop", types.SimpleNamespace(jtop=lambda: client))
    meter = find_meter(tmp_path)
    assert isinstance(meter, JtopMeter) and client.started
    counter = EnergyCounter(meter, period_s=1.0)
    counter.read(0.0)
    counter.read(2.0)  # 2 s from 4 W to 6 W
    assert counter.joules == pytest.approx(10.0)
    assert find_meter(tmp_path, use_jtop=False) is None


def test_a_jtop_without_its_service_or_total_is_no_meter(tmp_path, monkeypatch):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "jtop", types.SimpleNamespace(jtop=lambda: FakeJtop(answers=False)))
    assert find_meter(tmp_path) is None
    no_total = FakeJtop()
    no_total.__class__ = type("NoTotal", (FakeJtop,), {"power": property(lambda self: {"rail": {}})})
    monkeypatch.setitem(sys.modules, "jtop", types.SimpleNamespace(jtop=lambda: no_total))
    assert find_meter(tmp_path) is None
    monkeypatch.setitem(sys.modules, "jtop", None)  # not installed: import fails
    assert find_meter(tmp_path) is None
