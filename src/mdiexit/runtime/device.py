"""What a node knows about its own device, set up once at start-up: the calibrated device model (each task and
codec profiled per batch size, DESIGN §7), the service-time estimates it seeds, and, per link and task
boundary, whether learned feature codes pay (`compress: auto`)."""

from __future__ import annotations

import numpy as np

from mdiexit.config import ClusterConfig, NodeConfig
from mdiexit.emulation.device import DeviceModel
from mdiexit.engine import OrtEngine
from mdiexit.package import Package
from mdiexit.policies.offload import ServiceEstimator
from mdiexit.runtime.core import codes_pay
from mdiexit.util import isolated_s


def task_input(pkg: Package, task: int, batch: int) -> np.ndarray:
    spec = pkg.task(task)
    dtype = np.uint8 if task == 1 else np.float32
    return np.zeros((batch, *spec.input_shape), dtype)


def calibrate(engine: OrtEngine, pkg: Package, held: frozenset[int], cfg: NodeConfig,
              cluster: ClusterConfig) -> DeviceModel:
    """Profile every task this node holds, and the codecs it may run, at each batch size (in isolation)."""
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

    work = {("task", k): run_task(k) for k in sorted(held)}
    for spec in pkg.compression:
        if spec.after_task in held:
            work["encode", spec.after_task] = run_codec(spec, decode=False)
        if spec.after_task + 1 in held:
            work["decode", spec.after_task] = run_codec(spec, decode=True)
    return DeviceModel.calibrate(cfg.slowdown, work, cluster.max_batch, cluster.emulation)


def seed_estimates(estimator: ServiceEstimator, device: DeviceModel, held: frozenset[int]) -> None:
    """Start the service-time estimates from the calibrated times instead of MACs / rated speed."""
    for k in held:
        host = device.host_s(("task", k), 1)
        if host is not None:
            estimator.seed(k, device.slowdown * host)


def compression_plan(engine: OrtEngine, pkg: Package, held: frozenset[int], cluster: ClusterConfig, name: str,
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


def _compression_pays(engine: OrtEngine, spec, cluster: ClusterConfig, name: str, peer: str,
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
