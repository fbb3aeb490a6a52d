import json
from pathlib import Path

import pytest

from mdiexit.emulation.overhead import MEASURED, RuntimeCost

EDITION = Path(__file__).resolve().parents[2] / "docs" / "results" / "overhead.json"


def test_the_simulator_charges_the_committed_editions_figures():
    """emulation/overhead.py copies `mdiexit bench overhead`'s figures (the worker's install carries no docs): a new
    edition of docs/results/overhead.json must come with them."""
    edition = json.loads(EDITION.read_text())
    fixed = edition["fixed_us_per_s"]
    assert MEASURED.per_visit_s == pytest.approx(edition["marginal_us_per_visit"] * 1e-6, abs=0.5e-6)
    assert MEASURED.per_second_s == pytest.approx(sum(fixed.values()) / len(fixed) * 1e-6, abs=0.5e-3)


def test_a_node_pays_its_boards_factor_on_visits_and_seconds():
    cost = RuntimeCost(per_visit_s=100e-6, per_second_s=10e-3)
    assert cost.charge_s(None, visits=1000, seconds=1.0) == 0.0
    assert cost.charge_s(2.5, visits=1000, seconds=1.0) == pytest.approx(2.5 * (0.1 + 0.01))
