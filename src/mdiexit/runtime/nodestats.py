"""What a node reports of itself (runtime.node): its final counters for the run's summary, carried by its last STATE,
and the progress the site's status reads from it once a second. Readers only: nothing here changes the node."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mdiexit.energy import node_joules
from mdiexit.protocol.messages import REJECT_REASONS
from mdiexit.protocol.stats import task_stats

if TYPE_CHECKING:
    from mdiexit.runtime.node import NodeProcess


def final_stats(node: NodeProcess) -> dict[str, float]:
    """The node's counters at the end of the run (protocol.stats names them)."""
    dev = node.device
    limit = {k: best for k in node.held if (best := dev.per_item_s(("task", k))) is not None}
    out = task_stats(node.core.tasks_run, {k: dev.slowdown * dev.host_s(("task", k), 1) for k in limit}, limit,
                     {k: {b: dev.slowdown * s for b, s in dev.profiled_s.get(("task", k), {}).items()}
                      for k in node.held})
    out.update(busy_s=node.busy_s, elapsed_s=node.clock.now() - node.started_at,
               bad_messages=float(node.bad_messages),
               bytes_sent=float(node.egress.bytes_sent), dropped_parked=float(node.core.dropped_parked),
               estimation_bytes=float(node.meter.overhead_bytes))
    out.update({f"rejected_{r}": float(node.rejected[r]) for r in REJECT_REASONS})
    out.update(emulated_calls=float(dev.calls), overruns=float(dev.overruns))
    out.update(runtime_cpu_s=dev.runtime_cpu_s(), engine_cpu_s=dev.engine_cpu_s - dev.cpu_start[1],
               runtime_charged_s=dev.charged_s)
    out.update({f"received_{kind}": float(n) for kind, n in node.received.items()})
    if node.energy.meter is not None:
        out["measured_j"] = node.energy.joules  # the device's own meter (mdiexit.meters)
    return out


def progress_report(node: NodeProcess, t: float) -> dict[str, float]:
    """What the site's status reads from each node once a second: busy time, tasks and joules so far."""
    out = {"busy_s": node.busy_s, "tasks": float(sum(node.core.tasks_run.values()))}
    sofar = {"elapsed_s": t - node.started_at, "busy_s": node.busy_s, "bytes_sent": float(node.egress.bytes_sent)}
    if node.energy.meter is not None:
        sofar["measured_j"] = node.energy.joules
    if (joules := node_joules(node.power, sofar)) is not None:
        out["joules"] = joules
    return out
