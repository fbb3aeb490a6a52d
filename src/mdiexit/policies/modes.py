"""The modes of DESIGN §3.2: MDI-Exit and its baselines are one offloading rule with parts switched off; and the
source's admission strategies (§3.3). The one home of their names."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModeRules:
    name: str
    exits: bool  # early exits at the admission thresholds; False = every item runs to the last task
    source_computes: bool  # the source holds tasks (False: it only dispatches raw items, as in DDI)
    source_runs_first: bool  # the source always runs task 1 itself (classic MDI)
    offload_later: bool  # tasks after the first hop may move by the rule (False: the receiver runs all, DDI)
    single_node: bool = False  # only the source runs (local)


MODES: dict[str, ModeRules] = {
    "local": ModeRules("local", exits=False, source_computes=True, source_runs_first=True, offload_later=False,
                       single_node=True),
    "ddi": ModeRules("ddi", exits=False, source_computes=False, source_runs_first=False, offload_later=False),
    "ddi-exit": ModeRules("ddi-exit", exits=True, source_computes=False, source_runs_first=False,
                          offload_later=False),
    "mdi": ModeRules("mdi", exits=False, source_computes=True, source_runs_first=True, offload_later=True),
    "mdi-static": ModeRules("mdi-static", exits=True, source_computes=True, source_runs_first=True,
                            offload_later=True),
    "mdi-exit": ModeRules("mdi-exit", exits=True, source_computes=True, source_runs_first=False, offload_later=True),
}


# How the source admits items (DESIGN §3.3): at a fixed rate with fixed thresholds, adapting the rate at the
# cheapest thresholds that meet a target accuracy, or adapting the thresholds at a fixed rate.
ADMISSIONS = ("fixed", "rate", "thresholds")


def no_exit_thresholds(num_tasks: int) -> list[float]:
    """Thresholds that disable every early exit (1.0) and keep the final one (0.0)."""
    return [1.0] * (num_tasks - 1) + [0.0]


def rules_for(mode: str) -> ModeRules:
    try:
        return MODES[mode]
    except KeyError:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}") from None
