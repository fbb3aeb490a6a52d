"""What a node knows about its own device, set up once at start-up: the calibrated device model (each task and
codec profiled per batch size, DESIGN §7; on one host, profiled once by the launcher before any node starts and
handed to every node: ``profile_host``, ``HostProfiles``), the service-time estimates it seeds, and, per link and
task boundary, whether learned feature codes pay (`compress: auto`).

A host's speed moves between profiles (this development machine's: by 14 % between two benches ten minutes apart),
and every emulated device moves with it. So the first profile of a package, thread count and max_batch is kept
(``emulation.device.profile_file``): in this user's cache, under the host's name, so that every later run,
simulation and plan on this host emulates the very same devices; or, with ``--device-profile FILE``
(``DEVICE_PROFILE_ENV``), in FILE, which pins them on this host or another (a host too slow for them says so in
``emulation_warnings``). ``--device-profile none`` profiles at every start."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mdiexit.config import ClusterConfig, ConfigError, NodeConfig
from mdiexit.emulation.device import DeviceModel, Key, profile_batches, profile_file
from mdiexit.emulation.zerocost import ZeroCostEngine
from mdiexit.engine import OrtEngine
from mdiexit.package import Package
from mdiexit.planner import Costs
from mdiexit.policies.offload import ServiceEstimator
from mdiexit.runtime.core import codes_pay
from mdiexit.util import isolated_s

ModelEngine = OrtEngine | ZeroCostEngine  # what runs a node's tasks and codecs
Profile = dict[Key, dict[int, float]]  # (kind, task) -> batch size -> host seconds
HOST_PROFILE_REPEATS = 15  # timed calls per task and batch size when the host is profiled once for every node
_host_profiles: dict[tuple[str, str, int, int], Profile] = {}  # profile_host's, per package, threads and max_batch


def make_engine(pkg: Package, cfg: NodeConfig, cluster: ClusterConfig,
                held: frozenset[int]) -> ModelEngine:
    """The node's model: ONNX Runtime sessions for the tasks it holds, or under `emulation: zero-cost` calls that
    return at once (the runtime alone)."""
    if cluster.emulation == "zero-cost":
        return ZeroCostEngine(pkg, cfg.name)
    return OrtEngine(pkg, threads=cfg.threads, tasks=sorted(held))


def task_input(pkg: Package, task: int, batch: int) -> np.ndarray:
    spec = pkg.task(task)
    dtype = np.uint8 if task == 1 else np.float32
    return np.zeros((batch, *spec.input_shape), dtype)


def calibrate(engine: ModelEngine, pkg: Package, held: frozenset[int], cfg: NodeConfig,
              cluster: ClusterConfig, host_profile: Profile | None = None, repeats: int = 5) -> DeviceModel:
    """Profile every task this node holds, and the codecs it may run, at each batch size (in isolation). With
    ``host_profile`` (made by :func:`profile_host` before the cluster started), take its times instead. Either
    way, every piece of work has run at every batch size before the node serves: ONNX Runtime's first call at a
    shape is many times slower."""
    def run_task(k: int):
        def make(b: int):
            x = task_input(pkg, k, b)
            return lambda: engine.run(k, x)
        return make

    def run_codec(spec, decode: bool):
        codec = engine.codec(spec.after_task)

        def make(b: int):
            x = np.zeros((b, *spec.features_shape), np.float32)
            code = codec.encode(x)
            return (lambda: codec.decode(code)) if decode else (lambda: codec.encode(x))
        return make

    codecs = {spec.after_task: spec for spec in pkg.compression}
    work = {(kind, k): run_task(k) if kind == "task" else run_codec(codecs[k], decode=kind == "decode")
            for kind, k in work_keys(pkg, held)}
    if (host_profile is not None and cfg.slowdown != 1.0 and cluster.emulation == "calibrated"
            and all(key in host_profile for key in work)):
        model, ran = DeviceModel(cfg.slowdown, cluster.emulation, {key: dict(host_profile[key]) for key in work}), {}
    else:
        model = DeviceModel.calibrate(cfg.slowdown, work, cluster.max_batch, cluster.emulation, repeats)
        ran = model.profiled_s  # the sizes profiling called
    for key, make in work.items():  # a first call at a new shape is slow: it would be a start-up item's delay
        for b in set(range(1, cluster.max_batch + 1)) - set(ran.get(key, ())):
            make(b)()
    return model


def work_keys(pkg: Package, held: frozenset[int]) -> list[Key]:
    """What a node holding ``held`` runs: its tasks, the encoders of the features it produces and the decoders of
    the features it takes."""
    keys: list[Key] = [("task", k) for k in sorted(held)]
    for spec in pkg.compression:
        if spec.after_task in held:
            keys.append(("encode", spec.after_task))
        if spec.after_task + 1 in held:
            keys.append(("decode", spec.after_task))
    return keys


def planner_costs(pkg: Package, cluster: ClusterConfig) -> dict[int, Costs]:
    """Per engine thread count in the cluster, each task's and codec's host seconds per item at batch 1: the host
    profile every emulated node takes (:func:`profile_host`; pinned with --device-profile), before its slowdown,
    for the planner."""
    out = {}
    for threads in sorted({n.threads for n in cluster.nodes}):
        profile = profile_host(pkg, cluster, threads)
        out[threads] = Costs(tuple(profile["task", t.index][1] for t in pkg.tasks),
                             {c.after_task: profile["encode", c.after_task][1] for c in pkg.compression},
                             {c.after_task: profile["decode", c.after_task][1] for c in pkg.compression})
    return out


def profile_host(pkg: Package, cluster: ClusterConfig, threads: int) -> Profile:
    """Host seconds of every task and codec per batch size, on ``threads`` engine threads: what each node on this
    host would profile for itself, profiled once per process (the fastest of HOST_PROFILE_REPEATS calls) and then
    reused by every run and simulation it makes. Made before any node starts, it is taken on a quiet host; profiled
    by each node at its own start-up, it was not: four other nodes starting beside it moved a node's batch-8 times
    by up to 3x between two runs, and nodes of one kind differed."""
    key = (str(pkg.root.resolve()), pkg.version, threads, cluster.max_batch)
    if key not in _host_profiles:
        kept, prefix = profile_file()
        name = f"{prefix}{pkg.version} threads={threads} max_batch={cluster.max_batch}"
        held = frozenset(range(1, pkg.num_tasks + 1))
        profile = _stored_profile(kept, name, work_keys(pkg, held), cluster.max_batch) if kept else None
        if profile is None:
            engine = OrtEngine(pkg, threads=threads, tasks=sorted(held))
            probe = dataclasses.replace(cluster.source, slowdown=2.0, threads=threads)  # any slowdown but 1 profiles
            profile = calibrate(engine, pkg, held, probe, dataclasses.replace(cluster, emulation="calibrated"),
                                repeats=HOST_PROFILE_REPEATS).profiled_s
            if kept:
                _store_profile(kept, name, profile)
        _host_profiles[key] = profile
    return _host_profiles[key]


def _stored_profile(path: Path, name: str, keys: list[Key], max_batch: int) -> Profile | None:
    """The profile stored in ``path`` under ``name``, when it has every task and codec at every batch size."""
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
        profile = _decode_profile(stored[name]) if name in stored else None
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as e:
        raise ConfigError(f"{path}: not a device profile ({e}); delete it, or name another file with "
                          f"--device-profile, and the host is profiled again") from None
    if profile is None or any(set(profile.get(k, {})) != set(profile_batches(max_batch)) for k in keys):
        return None
    return profile


def _store_profile(path: Path, name: str, profile: Profile) -> None:
    """Add ``profile`` under ``name`` (read again first: another command may have added one meanwhile)."""
    stored = json.loads(path.read_text()) if path.exists() else {}
    stored[name] = _encode_profile(profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per process: two commands may store at once
    tmp.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def _encode_profile(profile: Profile) -> dict[str, dict[str, float]]:
    return {f"{kind} {k}": {str(b): s for b, s in per_batch.items()} for (kind, k), per_batch in profile.items()}


def _decode_profile(raw: dict) -> Profile:
    return {(key.split()[0], int(key.split()[1])): {int(b): float(s) for b, s in per_batch.items()}
            for key, per_batch in raw.items()}


def write_profile(path: Path, profile: Profile) -> Path:
    path.write_text(json.dumps(_encode_profile(profile)))
    return path


def read_profile(path: Path) -> Profile:
    return _decode_profile(json.loads(Path(path).read_text()))


@dataclass
class HostProfiles:
    """The host's task times, profiled once before the nodes this launcher starts (one profile per engine thread
    count), and the files the workers read them from."""

    folder: Path | None = None
    by_threads: dict[int, Profile] = field(default_factory=dict)
    threads_of: dict[str, int] = field(default_factory=dict)

    def of(self, name: str) -> Profile | None:
        return self.by_threads.get(self.threads_of.get(name, -1))

    def file(self, name: str) -> Path | None:
        threads = self.threads_of.get(name)
        return None if self.folder is None or threads is None else self.folder / f"threads{threads}.json"

    def remove(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def profile_nodes(cluster: ClusterConfig, pkg: Package, names: list[str]) -> HostProfiles:
    """Profile this host for the emulated nodes among ``names`` (slowdown > 1, calibrated emulation) before any
    starts: a node profiling itself at start-up shares the cores with the others starting beside it."""
    emulated = {n: cluster.node(n).threads for n in names
                if cluster.node(n).slowdown != 1.0 and cluster.emulation == "calibrated"}
    if not emulated:
        return HostProfiles()
    out = HostProfiles(Path(tempfile.mkdtemp(prefix="mdiexit-profile-")), threads_of=emulated)
    for threads in sorted(set(emulated.values())):
        out.by_threads[threads] = profile_host(pkg, cluster, threads)
        write_profile(out.folder / f"threads{threads}.json", out.by_threads[threads])
    return out


def seed_estimates(estimator: ServiceEstimator, device: DeviceModel, held: frozenset[int]) -> None:
    """Start the service-time estimates from the calibrated times instead of MACs / rated speed."""
    for k in held:
        host = device.host_s(("task", k), 1)
        if host is not None:
            estimator.seed(k, device.slowdown * host)


def compression_plan(engine: ModelEngine, pkg: Package, held: frozenset[int], cluster: ClusterConfig, name: str,
                     peers: list[str], device: DeviceModel) -> dict[str, set[int]]:
    """Per peer, the task boundaries whose features travel as learned codes (`compress: on | off | auto`)."""
    cfg = cluster.node(name)
    plan: dict[str, set[int]] = {peer: set() for peer in peers}
    if cfg.compress == "off":
        return plan
    for spec in pkg.compression:
        if spec.after_task not in held:
            continue  # this node never produces those features
        for peer in peers:
            if cfg.compress == "on" or _compression_pays(engine, spec, cluster, name, peer, device):
                plan[peer].add(spec.after_task)
    return plan


def _compression_pays(engine: ModelEngine, spec, cluster: ClusterConfig, name: str, peer: str,
                      device: DeviceModel) -> bool:
    """auto: compress when encode + code transfer + decode beats the float transfer on this link. Host times
    come from the device model's profile where it has one (calibrated emulation), else are measured here."""
    bw, _ = cluster.link(name, peer)
    if bw is None:
        return False
    codec = engine.codec(spec.after_task)
    x = np.zeros((1, *spec.features_shape), np.float32)
    enc_s = device.host_s(("encode", spec.after_task), 1) or isolated_s(lambda: codec.encode(x), 7)
    dec_s = device.host_s(("decode", spec.after_task), 1)
    if dec_s is None:
        code = codec.encode(x)
        dec_s = isolated_s(lambda: codec.decode(code), 7)
    return codes_pay(4 * int(np.prod(spec.features_shape)), spec.code_bytes, bw, enc_s * cluster.node(name).slowdown,
                     dec_s * cluster.node(peer).slowdown)
