"""A node's statistics, as its final STATE carries them (``State.stats``): one flat map of names to floats, so
that it decodes with the other wire types. Per-task figures are keyed by task (and batch size); those names are
made and read here only, by the runtime's nodes, the simulator's, the run summary and the planner.

    {"tasks_run_2": 310.0, "single_task_2_s": 0.0112, "limit_task_2_s": 0.0061, "task_2_batch_4_s": 0.0301, ...}
"""

from __future__ import annotations

from collections.abc import Mapping

TASKS_RUN = "tasks_run_"  # tasks run, by task: present for every task the node holds
SINGLE = "single_task_"  # emulated seconds per item, one item at a time
LIMIT = "limit_task_"  # emulated seconds per item at the node's best batch size
BATCH = ("task_", "_batch_", "_s")  # task_K_batch_B_s: emulated seconds for a whole batch of B items of task K


def task_stats(tasks_run: Mapping[int, int], single_s: Mapping[int, float], limit_s: Mapping[int, float],
               batch_s: Mapping[int, Mapping[int, float]] | None = None) -> dict[str, float]:
    """The per-task entries of a node's stats. ``batch_s`` is its calibration: task -> batch -> emulated seconds
    for the whole batch."""
    out = {f"{TASKS_RUN}{k}": float(v) for k, v in tasks_run.items()}
    out.update({f"{SINGLE}{k}_s": float(v) for k, v in single_s.items()})
    out.update({f"{LIMIT}{k}_s": float(v) for k, v in limit_s.items()})
    for k, per_batch in (batch_s or {}).items():
        out.update({f"{BATCH[0]}{k}{BATCH[1]}{b}{BATCH[2]}": float(v) for b, v in per_batch.items()})
    return out


def tasks_run(stats: Mapping[str, float]) -> dict[int, int]:
    """Tasks run, by task; its keys are the tasks the node holds."""
    return {int(k[len(TASKS_RUN):]): int(v) for k, v in stats.items() if k.startswith(TASKS_RUN)}


def per_task_s(stats: Mapping[str, float], prefix: str) -> dict[int, float]:
    """Emulated seconds per item, by task, under ``SINGLE`` or ``LIMIT``; empty for an uncalibrated (real) node."""
    return {int(k[len(prefix):-2]): v for k, v in stats.items() if k.startswith(prefix)}


def calibration_ms(stats: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """The node's calibration, as run summaries show it: task -> batch size -> emulated ms for the whole batch."""
    out: dict[str, dict[str, float]] = {}
    for key, v in stats.items():
        if key.startswith(BATCH[0]) and BATCH[1] in key and key.endswith(BATCH[2]):
            task, batch = key[len(BATCH[0]):-len(BATCH[2])].split(BATCH[1])
            out.setdefault(task, {})[batch] = 1000 * v
    return out
