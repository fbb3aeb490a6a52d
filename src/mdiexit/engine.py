"""Run one task of a model package on a batch with ONNX Runtime (no torch; the torch twin for parity checks is
`mdiexit.training.torch_engine.TorchEngine`).

    engine = OrtEngine(pkg, threads=1)
    features, logits = engine.run(1, x_uint8_nchw)   # features is None for the last task
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from mdiexit.package import CompressionSpec, Package, PackageError


class Engine(Protocol):
    def run(self, task_index: int, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]: ...


def ort_session(path: Path, threads: int = 1, arena: bool = True):
    """An ONNX Runtime CPU session with `threads` intra-op threads (one per emulated device). arena=False returns
    each batch's memory as it is done with: for a long pass over many batches (evaluate), whose peak would
    otherwise grow with the number of batches."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_cpu_mem_arena = arena
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types for corrupt files
        raise PackageError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0]:.200})") from None


class OrtEngine:
    """ONNX Runtime sessions for the tasks a node holds, created on first use."""

    def __init__(self, pkg: Package, threads: int = 1, tasks: list[int] | None = None, arena: bool = True):
        self.pkg = pkg
        self.threads = threads
        self.arena = arena
        self._sessions = {}
        self._has_features: dict[int, bool] = {}
        self._codecs: dict[int, FeatureCodec | None] = {}
        for k in tasks or []:
            self._session(k)

    def _session(self, task_index: int):
        s = self._sessions.get(task_index)
        if s is None:
            s = self._sessions[task_index] = ort_session(self.pkg.task(task_index).path, self.threads, self.arena)
            self._has_features[task_index] = any(o.name == "features" for o in s.get_outputs())
        return s

    def codec(self, after_task: int) -> FeatureCodec | None:
        """The encoder/decoder pair for the features of `after_task`, if the package has one."""
        if after_task not in self._codecs:
            spec = self.pkg.compression_after(after_task)
            self._codecs[after_task] = FeatureCodec(spec, self.threads) if spec else None
        return self._codecs[after_task]

    def run(self, task_index: int, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        s = self._session(task_index)
        if self._has_features[task_index]:
            features, logits = s.run(["features", "logits"], {"x": x})
            return features, logits
        return None, s.run(["logits"], {"x": x})[0]


class FeatureCodec:
    """The package's learned encoder/decoder of one task boundary (DESIGN §5), run with ONNX Runtime."""

    def __init__(self, spec: CompressionSpec, threads: int = 1):
        self.spec = spec
        self.enc = ort_session(spec.encoder, threads)
        self.dec = ort_session(spec.decoder, threads)
        self.names = [o.name for o in spec.outputs]

    def encode(self, features: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.enc.run(self.names, {"x": features}), strict=True))

    def decode(self, code: dict[str, np.ndarray]) -> np.ndarray:
        return self.dec.run(["features"], {n: np.asarray(code[n]) for n in self.names})[0]

