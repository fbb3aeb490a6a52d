"""What the simulator knows of the model and the data, computed once per process and reused by every run:

- **Host times** of each task and codec per batch size, the very profile the runtime's launcher gives its
  nodes (runtime.device.profile_host: ONNX Runtime, per engine thread count, once per process); a simulated node
  takes its slowdown times that (DESIGN §7). `times="macs"` uses the manifest's MACs at BASE_RATED_GMACS instead
  (no profiling: the same numbers in every process, for deterministic tests).
- **Items**: every test item's logits at every exit (evaluate.all_exit_logits), so that a simulated item exits
  exactly where and with the label a single-process run gives it at any thresholds.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mdiexit.config import BASE_RATED_GMACS, ClusterConfig
from mdiexit.emulation.device import DeviceModel, Key
from mdiexit.package import Package

TIMES = ("profile", "macs")
CACHE_DIR = Path(tempfile.gettempdir()) / "mdiexit-sim-cache"  # the items' logits, per package and data
_items: dict[tuple[str, str], Items] = {}


@dataclass(frozen=True)
class Items:
    """The stream: each item's true label and its logits at every exit, (K, N, classes)."""

    labels: np.ndarray
    logits: np.ndarray
    paths: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)


def host_times(pkg: Package, cluster: ClusterConfig, threads: int,
               times: str = "profile") -> dict[Key, dict[int, float]]:
    """Host seconds of each task and codec (key) per batch size, on ``threads`` engine threads."""
    if times == "macs":
        return _macs_times(pkg, cluster.max_batch)
    if times != "profile":
        raise ValueError(f"times: expected one of {', '.join(TIMES)}, got {times!r}")
    from mdiexit.runtime.device import profile_host

    return profile_host(pkg, cluster, threads)  # the profile every run of this process takes


def _macs_times(pkg: Package, max_batch: int) -> dict[Key, dict[int, float]]:
    rate = BASE_RATED_GMACS * 1e9
    extra = {c.get("after_task"): c for c in pkg.manifest.get("compression") or []}
    per_item: dict[Key, float] = {("task", t.index): t.macs / rate for t in pkg.tasks}
    for c in pkg.compression:
        per_item["encode", c.after_task] = extra.get(c.after_task, {}).get("encoder_macs", 0) / rate
        per_item["decode", c.after_task] = extra.get(c.after_task, {}).get("decoder_macs", 0) / rate
    return {k: {1: s, max_batch: s * max_batch} for k, s in per_item.items()}


def device_table(slowdown: float, profiled: dict[Key, dict[int, float]], max_batch: int) -> dict[Key, list[float]]:
    """A simulated device's seconds per key and batch size (index b, 1..max_batch): slowdown x the host's time,
    interpolated between profiled sizes exactly as the runtime's emulation does (DeviceModel.host_s)."""
    model = DeviceModel(slowdown, profiled_s=profiled)
    return {k: [0.0] + [slowdown * (model.host_s(k, b) or 0.0) for b in range(1, max_batch + 1)] for k in profiled}


def load_items_logits(pkg: Package, items: str | int = "test", data_dir: Path | None = None,
                      limit: int | None = None) -> Items:
    """The items a run streams (data.load_items) with their logits at every exit: computed once (ONNX Runtime)
    and kept on disk per package and data, since a simulated run needs them before anything else."""
    from mdiexit.data import load_items

    key = (str(pkg.root.resolve()), f"{items}:{data_dir}:{limit}")
    if key not in _items:
        stream = load_items(pkg, items, data_dir)
        if limit:
            stream = stream.subset(list(range(min(limit, len(stream)))))
        manifest = (pkg.root / "manifest.json").read_bytes()
        digest = hashlib.sha256(manifest + stream.images.tobytes() + str(stream.images.shape).encode())
        path = CACHE_DIR / f"{digest.hexdigest()[:24]}.npy"
        if path.is_file():
            logits = np.load(path)
        else:
            from mdiexit.evaluate import all_exit_logits

            logits = all_exit_logits(pkg, stream.images, threads=2, batch=500, progress=False)
            CACHE_DIR.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, logits.astype(np.float32))
            tmp.replace(path)
        _items[key] = Items(np.asarray(stream.labels), logits.astype(np.float32), stream.paths)
    return _items[key]
