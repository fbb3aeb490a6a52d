"""Power meters a device may have: the INA3221 current monitors of Jetson boards, under hwmon or as the older
`ina3221x` iio devices, and, where neither reads but jetson-stats is installed, its `jtop` service. Rails are found
by their names, never by channel numbers, which differ between boards and kernels. Standard library only: a worker
reads its meter without extra packages (jtop is used when it is there, never required).

    meter = find_meter()            # None when the device has no readable meter
    watts = meter.read_w()          # the board's input power now

The board's input rail (VDD_IN, POM_5V_IN, ...) is read when there is one; otherwise the sum of every rail.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0", "SYS_5V0", "VDD_5V_IN")  # the whole board's input, by name


@dataclass(frozen=True)
class Rail:
    name: str
    power: Path | None  # a power reading (hwmon: µW; iio: mW)
    volts: Path | None  # mV
    amps: Path | None  # mA
    power_unit_w: float  # watts per unit of `power`

    def read_w(self) -> float:
        if self.power is not None:
            return float(self.power.read_text().strip()) * self.power_unit_w
        return float(self.volts.read_text().strip()) * float(self.amps.read_text().strip()) / 1e6


@dataclass(frozen=True)
class Meter:
    rails: tuple[Rail, ...]

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rails]

    def read_w(self) -> float:
        """Watts now: the input rail's, or the sum of the rails read."""
        return sum(r.read_w() for r in self.rails)


def _text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _rail(name: str | None, power: Path, volts: Path, amps: Path, power_unit_w: float) -> Rail | None:
    """A named rail read from its power file, else from its voltage and current; None when it has neither."""
    if not name:
        return None
    if power.exists():
        return Rail(name, power, None, None, power_unit_w)
    if volts.exists() and amps.exists():
        return Rail(name, None, volts, amps, 0.0)
    return None


def _hwmon_rails(root: Path) -> list[Rail | None]:
    rails = []
    for dev in sorted((root / "class" / "hwmon").glob("hwmon*")):
        if not (_text(dev / "name") or "").startswith("ina3221"):
            continue
        for label in sorted(dev.glob("in*_label")):
            n, name = label.name[2:-len("_label")], _text(label)
            if name and not name.lower().startswith("sum"):  # "sum of shunt voltages" is no rail
                rails.append(_rail(name, dev / f"power{n}_input", dev / f"in{n}_input", dev / f"curr{n}_input", 1e-6))
    return rails


def _iio_rails(root: Path) -> list[Rail | None]:
    rails = []
    for dev in sorted((root / "bus" / "i2c" / "drivers" / "ina3221x").glob("*/iio:device*")):
        for label in sorted(dev.glob("rail_name_*")):
            i = label.name[len("rail_name_"):]
            rails.append(_rail(_text(label), dev / f"in_power{i}_input", dev / f"in_voltage{i}_input",
                               dev / f"in_current{i}_input", 1e-3))
    return rails


class JtopMeter:
    """jetson-stats' `jtop` client: the board's total power (`power['tot']['power']`, mW), as its service reads it."""

    names = ["jtop total"]

    def __init__(self, client) -> None:
        self.client = client  # a started jtop.jtop()

    def read_w(self) -> float:
        power = self.client.power if self.client.ok() else None
        total = power.get("tot") if isinstance(power, dict) else None
        if not isinstance(total, dict) or "power" not in total:
            raise ValueError("jtop reports no total power")
        return float(total["power"]) / 1000


def find_meter(root: Path = Path("/sys"), use_jtop: bool = True) -> Meter | JtopMeter | None:
    """The device's power meter, or None. Every rail found must read; one that does not leaves it out. With no
    readable rail, jetson-stats' jtop where it is installed and its service answers."""
    rails = [r for r in _hwmon_rails(root) + _iio_rails(root) if r is not None and _reads(r)]
    if not rails:
        return _jtop_meter() if use_jtop else None
    inputs = [r for r in rails if r.name.upper() in INPUT_RAILS]
    return Meter(tuple(inputs[:1] or rails))


def _jtop_meter() -> JtopMeter | None:
    try:
        from jtop import jtop  # jetson-stats: optional, found on Jetsons that have it
    except ImportError:
        return None
    try:
        client = jtop()
        client.start()
        meter = JtopMeter(client)
        meter.read_w()
        return meter
    except Exception:  # noqa: BLE001 - no service, no socket, a different jtop: no meter, the power model counts
        return None


def _reads(rail: Rail) -> bool:
    try:
        rail.read_w()
        return True
    except (OSError, ValueError):
        return False


class EnergyCounter:
    """The joules a meter has seen: trapezoids of its watts, read at most once every `period_s`. A meter that stops
    reading is dropped (the node's power model counts from then on)."""

    def __init__(self, meter: Meter | JtopMeter | None, period_s: float = 1.0):
        self.meter, self.period_s = meter, period_s
        self.joules = 0.0
        self.last: tuple[float, float | None] = (float("-inf"), None)  # (when, watts) of the last reading

    def read(self, t: float) -> None:
        if self.meter is None or t - self.last[0] < self.period_s:
            return
        try:
            watts = self.meter.read_w()
        except (OSError, ValueError):
            self.meter = None
            raise
        last_t, last_w = self.last
        if last_w is not None:
            self.joules += (t - last_t) * (watts + last_w) / 2
        self.last = (t, watts)
