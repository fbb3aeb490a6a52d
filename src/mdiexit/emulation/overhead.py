"""The runtime's own host CPU as a model, for the simulator to charge under a node's `cpu_slowdown` (the runtime
charges what it measures instead, emulation/device.py): every node visit (an admission at the source, or an item's
DATA arriving at a node) costs `per_visit_s`, and every second `per_second_s` (heartbeats, polling, link threads).

The figures are `mdiexit bench overhead`'s on edge4 (docs/results/overhead.json: marginal_us_per_visit, and
fixed_us_per_s averaged over the processes); re-run it after changing the runtime's hot path and update them here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RuntimeCost:
    per_visit_s: float  # host CPU seconds per node visit
    per_second_s: float  # host CPU seconds per second of a node's life, whatever its load

    def charge_s(self, cpu_slowdown: float | None, visits: int = 0, seconds: float = 0.0) -> float:
        """Device seconds owed for ``visits`` and ``seconds`` on a CPU ``cpu_slowdown`` times slower (None: 0)."""
        if not cpu_slowdown:
            return 0.0
        return cpu_slowdown * (visits * self.per_visit_s + seconds * self.per_second_s)


# docs/results/overhead.json (edge4, pinned devices, its fifth edition): marginal 241 µs per visit; 16-23 ms of CPU
# per second per idle process (17.6 ms on average)
MEASURED = RuntimeCost(per_visit_s=241e-6, per_second_s=17.6e-3)
