"""A run's summary (summary.json): every field, its type and its meaning defined once (RunSummary, RunConfig),
and the one function that puts a summary together, for the runtime (runtime.launch) and the simulator (sim.run)
alike. docs/reference/outputs.md is generated from the descriptions here.

    config = run_config(cluster_path, cluster, opts, mode, admission, net="app", emulation=cluster.emulation)
    summary = run_summary(mode, figures, opts, config, crashed=[], secure=True)   # checked, then plain JSON types

No processes, no sockets: the simulator imports it without the runtime's shells.
"""

from typing import Annotated, Any, get_type_hints

import msgspec
from msgspec import UNSET, Meta, UnsetType

from mdiexit.runtime.options import RunOptions
from mdiexit.util import shown_path


def _doc(text: str) -> Meta:
    return Meta(description=text)


class RunConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The run's settings, as the run took them."""

    cluster: str
    package: str
    mode: str
    rate: float
    duration_s: float
    warmup_s: float
    nodes: list[dict[str, Any]]
    net: str
    admission: str
    target_accuracy: float | None
    target_backlog_ms: float
    deadline_ms: float | None
    max_backlog_ms: float
    max_wait_ms: float
    thresholds: list[float]
    dead_after_ms: float
    items: str
    data_dir: str | None
    emulation: str
    dilation: float = 1.0


Count = Annotated[int, Meta(ge=0)]


class SourcePart(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One source's part of a run (``sources`` in summary.json): what it offered and what became of it."""

    weight: float  # its share of contended capacity
    stream: str  # what it admitted from (test, all, N, video:PATH, or clients)
    offered: Count
    admitted: Count
    skipped: Count  # a video's frames never offered, a newer one having come first
    rejected: Count
    completed: Count
    expired: Count
    failed: Count
    lost: int
    throughput_per_s: float
    accuracy: float | None  # null: its items carry no labels (a camera)
    target_accuracy: float | None  # its floor, where it had one
    latency_ms: dict[str, float]  # p50, p95
    exit_fraction: list[float]
    backlogged: bool  # it had more to send than it was given (counted in fairness_jain)


class RolloutRecord(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One roll-out of a new package version (``rollouts`` in summary.json; docs/guide/rollout.md)."""

    package: str  # as the operator named it
    version: str  # NAME@HASH of the new version
    from_version: str  # the version it was to replace
    outcome: str  # completed | rolled_back | in_progress (the run ended first)
    reason: str  # why it was rolled back ("" otherwise)
    started_at_s: float  # from the run's start
    ended_at_s: float | None
    agreement: float | None  # the share of shadow-compared items whose labels agreed (null: none compared)
    compared: Count
    items_on_new: Count  # admitted items that ran on the new version during its steps
    steps: list[float]
    step_s: float


class RunSummary(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What summary.json holds. A field that is UNSET is left out (it applies to some runs only)."""

    mode: Annotated[str, _doc("the mode the cluster ran in (local, ddi, ddi-exit, mdi, mdi-static, mdi-exit)")]
    offered: Annotated[Count, _doc("items offered to the source (the stream's, or the clients' requests)")]
    rejected: Annotated[Count, _doc("offered items refused at admission, with a reason")]
    rejected_reasons: Annotated[dict[str, int], _doc("rejections by reason (for example overloaded)")]
    admitted: Annotated[Count, _doc("items admitted into the cluster")]
    completed: Annotated[Count, _doc("admitted items that ended in a result")]
    expired: Annotated[Count, _doc("items dropped unrun past their deadline (at the gate or in the cluster)")]
    failed: Annotated[Count, _doc("admitted items that ended in an explicit failure (no node could run them)")]
    lost: Annotated[int, _doc("offered items that reached no outcome: always 0, else the run exits 1")]
    duplicates: Annotated[Count, _doc("items delivered twice: always 0, else the run exits 1")]
    skipped: Annotated[int | UnsetType, _doc(
        "with --items video: frames never offered, because a newer one came first (freshness, not loss)")] = UNSET
    video_error: Annotated[str | None | UnsetType, _doc(
        "with --items video: why the video stopped decoding before the run ended, if it did")] = UNSET
    redispatched: Annotated[Count, _doc("items sent again after a node was declared down")]
    redundant_results: Annotated[Count, _doc("late results of re-dispatched items, dropped")]
    accuracy: Annotated[float | None, _doc(
        "correct results over admitted items (null for a service's unlabelled requests)")]
    throughput_per_s: Annotated[float, _doc("results per second over the measured window (after warm-up)")]
    latency_ms: Annotated[dict[str, float], _doc("admission-to-result latency percentiles: p50, p95, p99")]
    exit_fraction: Annotated[list[float], _doc("the share of results that left at each exit")]
    bytes_per_item: Annotated[float, _doc("bytes sent on every link, over admitted items")]
    per_node: Annotated[dict[str, dict[str, Any]], _doc(
        "per node: utilization, tasks_run by task, backlog_s_mean, bytes_sent, task_ms, overrun_fraction, "
        "runtime_cpu_s (host CPU of everything but the model), runtime_share (of the device's time, charged under "
        "cpu_slowdown; null: not charged), messages_received by kind")]
    bad_messages: Annotated[Count, _doc("malformed messages the nodes dropped")]
    unknown_results: Annotated[Count, _doc("results for items the source did not know (dropped)")]
    rejected_messages: Annotated[dict[str, int], _doc("well-formed messages the nodes refused, by reason")]
    node_visits: Annotated[Count, _doc(
        "items at nodes: each admission at the source, and each item's DATA arriving at a node")]
    runtime_cpu_us_per_item_hop: Annotated[float | None, _doc(
        "host CPU of the runtime (every process, less the model's calls), in µs per node visit")]
    ideal_throughput_per_s: Annotated[float | None, _doc(
        "the physical limit at this exit mix, one item at a time (the planner's, where it has one)")]
    ideal_batched_throughput_per_s: Annotated[float | None, _doc(
        "the same limit with each task at its best batch size")]
    efficiency: Annotated[float | UnsetType, _doc("throughput over ideal_throughput_per_s")] = UNSET
    efficiency_batched: Annotated[float | UnsetType, _doc("throughput over ideal_batched_throughput_per_s")] = UNSET
    failure_reasons: Annotated[list[str] | UnsetType, _doc("why failed items failed")] = UNSET
    deadline_ms: Annotated[float | UnsetType, _doc("the items' deadline, where one was set")] = UNSET
    accuracy_within_deadline: Annotated[float | UnsetType, _doc(
        "correct results within the deadline, over offered items")] = UNSET
    sources: Annotated[dict[str, SourcePart] | UnsetType, _doc(
        "per source: weight, stream, offered, admitted, skipped, rejected, completed, expired, failed, lost, "
        "throughput_per_s, accuracy, target_accuracy, latency_ms (p50, p95), exit_fraction, backlogged")] = UNSET
    fairness_jain: Annotated[float | None | UnsetType, _doc(
        "Jain's index of throughput / weight over the backlogged sources: 1 is a share exactly by weight (null: "
        "fewer than two were backlogged)")] = UNSET
    rollouts: Annotated[list[RolloutRecord] | UnsetType, _doc(
        "each roll-out of a new package version (`mdiexit rollout`): package, version, from_version, outcome "
        "(completed, rolled_back), reason, started_at_s, ended_at_s, agreement, compared, items_on_new, steps, "
        "step_s")] = UNSET
    node_failures: Annotated[list[dict[str, Any]], _doc(
        "each node declared down: node, kind, at_s, in_flight, recovery_s")]
    recovery_s: Annotated[float | None, _doc(
        "the longest time until a failure's items in flight had all settled")]
    secure: Annotated[bool, _doc("whether every link was authenticated and encrypted (CurveZMQ)")]
    links: Annotated[dict[str, dict[str, dict[str, Any]]] | UnsetType, _doc(
        "per node and peer: estimated_mbps, latency_ms, bytes_sent at the end of the run")] = UNSET
    estimation_overhead: Annotated[dict[str, float] | UnsetType, _doc(
        "bytes that measuring the links added, and their fraction of all bytes sent")] = UNSET
    joules: Annotated[float | None, _doc(
        "energy of the nodes that have a power model (idle, busy and network), in joules; null when none has")]
    joules_per_item: Annotated[float | None, _doc("joules over completed items")]
    energy_per_node_j: Annotated[dict[str, float], _doc("each counted node's joules")]
    energy_measured_nodes: Annotated[list[str], _doc(
        "nodes whose joules their own power meter measured (a Jetson's INA3221 rails)")]
    energy_uncounted_nodes: Annotated[list[str], _doc(
        "nodes without a power model (`power` in the cluster file), left out of the joules")]
    joules_per_exit: Annotated[list[float] | UnsetType, _doc(
        "what an item leaving at each exit costs: the shared idle and network joules per item plus the busy "
        "joules of the tasks up to that exit")] = UNSET
    host_cpu_utilization: Annotated[float | UnsetType, _doc(
        "the host's CPU use over the run (emulation only)")] = UNSET
    emulation_warnings: Annotated[list[str], _doc(
        "where the emulation could not stay faithful (a busy host, devices overrunning)")]
    crashed: Annotated[list[str], _doc("nodes whose process exited during the run")]
    duration_s: Annotated[float, _doc("seconds of admission")]
    rate: Annotated[float, _doc("the admitted rate asked for (items/s)")]
    dilation: Annotated[float | UnsetType, _doc(
        "the time dilation the run was emulated at (every node's clock K times slower); every figure is in the "
        "cluster's own time")] = UNSET
    simulated: Annotated[dict[str, Any] | UnsetType, _doc(
        "simulator runs only: wall_s, setup_s, events, virtual_s")] = UNSET
    config: Annotated[RunConfig, _doc(
        "the run's settings: cluster, package, mode, rate, nodes, admission, thresholds, ...")]
    error: Annotated[str | UnsetType, _doc("why the run stopped early, where it did")] = UNSET


def summary_fields() -> dict[str, str]:
    """Each field of summary.json and what it means, in the order a summary writes them."""
    hints = get_type_hints(RunSummary, include_extras=True)
    return {name: next(m.description for m in hints[name].__metadata__ if getattr(m, "description", None))
            for name in RunSummary.__struct_fields__}


SUMMARY_FIELDS = summary_fields()


def run_config(cluster_path, cluster, opts: RunOptions, mode: str, admission, net: str,
               emulation: str) -> RunConfig:
    """The settings a run took: the cluster file's and the options', with the thresholds it started at."""
    return RunConfig(
        cluster=shown_path(cluster_path), package=shown_path(cluster.package), mode=mode, rate=opts.rate,
        duration_s=opts.duration_s, warmup_s=opts.warmup_s, nodes=[dict(n.__dict__) for n in cluster.nodes],
        net=net, admission=opts.admission, target_accuracy=getattr(admission, "target_accuracy", None),
        target_backlog_ms=opts.target_backlog_ms, deadline_ms=opts.deadline_ms, max_backlog_ms=opts.max_backlog_ms,
        max_wait_ms=opts.max_wait_ms, thresholds=[float(t) for t in admission.thresholds()[0]],
        dead_after_ms=cluster.dead_after_ms, items=str(opts.items),
        data_dir=None if opts.data_dir is None else str(opts.data_dir), emulation=emulation, dilation=opts.dilation)


def run_summary(mode: str, figures: dict, opts: RunOptions, config: RunConfig, **fields) -> dict:
    """The run's summary: ``figures`` (metrics.summarize's, the energy's, the links') and ``fields`` checked
    against RunSummary, as the plain JSON object summary.json holds. A figure of the wrong type or a field that is
    not a RunSummary's raises msgspec.ValidationError: a summary never writes what the reference does not say."""
    given = {"mode": mode, **figures, "duration_s": opts.duration_s, "rate": opts.rate, **fields,
             "config": msgspec.to_builtins(config)}
    if opts.dilation != 1.0:
        given["dilation"] = opts.dilation
    summary = msgspec.convert(msgspec.to_builtins(given, enc_hook=_plain), RunSummary, strict=False)
    return msgspec.to_builtins(summary)


def _plain(x: Any) -> Any:
    """numpy's scalars (a figure computed with numpy) as Python's."""
    if hasattr(x, "item"):
        return x.item()
    raise NotImplementedError(f"a summary holds plain JSON values, not {type(x).__name__}")
