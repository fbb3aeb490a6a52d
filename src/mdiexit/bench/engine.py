"""`mdiexit bench engine`: per-task latency at batch 1 and 32, ONNX Runtime vs torch, median of repeats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mdiexit.engine import Engine, OrtEngine
from mdiexit.package import load_package
from mdiexit.util import median_s

BATCHES = (1, 32)


def median_ms(engine: Engine, task: int, x: np.ndarray, repeats: int, warmup: int = 5) -> float:
    return 1000 * median_s(lambda: engine.run(task, x), repeats, warmup)


def task_inputs(pkg, engine: Engine, batch: int, seed: int = 0) -> list[np.ndarray]:
    """Realistic inputs for every task: random uint8 images pushed through the earlier tasks."""
    x = np.random.default_rng(seed).integers(0, 256, (batch, *pkg.input_shape), dtype=np.uint8)
    inputs = []
    for t in pkg.tasks:
        inputs.append(x)
        x, _ = engine.run(t.index, x)
    return inputs


def bench_engine(package: Path, repeats: int = 50, threads: int = 1, checkpoint: Path | None = None) -> list[dict]:
    pkg = load_package(package, check_onnx=True)
    ort = OrtEngine(pkg, threads=threads)
    checkpoint = checkpoint or _default_checkpoint(package)
    torch_engine = None
    if checkpoint is not None:
        from mdiexit.training.torch_engine import TorchEngine

        torch_engine = TorchEngine(checkpoint, threads=threads)
    rows = []
    print(f"{pkg.name}: median of {repeats} runs, {threads} intra-op thread(s)")
    print(f"{'task':>4} {'batch':>5} {'MACs(M)':>8} {'ORT ms':>8} {'torch ms':>9} {'torch/ORT':>9}")
    for batch in BATCHES:
        inputs = task_inputs(pkg, ort, batch)
        for t, x in zip(pkg.tasks, inputs, strict=True):
            o = median_ms(ort, t.index, x, repeats)
            tt = median_ms(torch_engine, t.index, x, repeats) if torch_engine else float("nan")
            rows.append({"task": t.index, "batch": batch, "ort_ms": o, "torch_ms": tt})
            print(f"{t.index:>4} {batch:>5} {t.macs / 1e6:>8.2f} {o:>8.3f} {tt:>9.3f} {tt / o:>8.2f}x")
    if torch_engine is None:
        print("(torch column empty: pass --checkpoint model.pt, or install the train extra)")
    print(json.dumps({"package": pkg.name, "threads": threads, "repeats": repeats, "rows": rows}))
    return rows


def _default_checkpoint(package: Path) -> Path | None:
    path = Path(package) / "train" / "model.pt"
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    return path if path.is_file() else None
