"""`emulation: zero-cost`: a model whose calls return at once, so that a run measures the runtime alone (`mdiexit
bench overhead`, docs/bench/overhead.md). Every task and codec takes no device time and runs no model:

- a task returns zero features of its output's shape and, per item, logits that exit (one certain class) or go on
  (flat), drawn so that the items exit in the package's exit mix at its default thresholds (exitprofile.py);
- a codec returns zero arrays of the code's and the features' shapes.

The mix is right and the work per item is the runtime's own; the labels mean nothing (a run's accuracy is about
one in the number of classes). Each node draws from its own seeded generator, so a run is repeatable."""

from __future__ import annotations

import zlib

import numpy as np

from mdiexit.package import CompressionSpec, Package

CERTAIN = 1e4  # the logit of an exiting item's class: a confidence of 1.0 at any temperature below 500


def exit_chances(pkg: Package) -> list[float]:
    """Per task, the chance that an item which reached it exits there (the last task: 1)."""
    mix = pkg.profile.exit_mix(pkg.default_thresholds)
    chances, left = [], 1.0
    for share in mix[:-1]:
        chances.append(min(1.0, share / left) if left > 0 else 1.0)
        left -= share
    return [*chances, 1.0]


class ZeroCostEngine:
    """The OrtEngine's calls (``run``, ``codec``), answered at once."""

    def __init__(self, pkg: Package, seed_name: str):
        self.pkg = pkg
        self.chances = exit_chances(pkg)
        self.rng = np.random.default_rng(zlib.crc32(seed_name.encode()))
        self._codecs: dict[int, ZeroCostCodec | None] = {}

    def run(self, task_index: int, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        batch = len(x)
        logits = np.zeros((batch, len(self.pkg.classes)), np.float32)
        exits = self.rng.random(batch) < self.chances[task_index - 1]
        logits[exits, 0] = CERTAIN
        if task_index == self.pkg.num_tasks:
            return None, logits
        return np.zeros((batch, *self.pkg.task(task_index).features_shape), np.float32), logits

    def codec(self, after_task: int) -> ZeroCostCodec | None:
        if after_task not in self._codecs:
            spec = self.pkg.compression_after(after_task)
            self._codecs[after_task] = ZeroCostCodec(spec) if spec else None
        return self._codecs[after_task]


class ZeroCostCodec:
    """A learned code's encoder and decoder (engine.FeatureCodec), answered at once with zeros."""

    def __init__(self, spec: CompressionSpec):
        self.spec = spec

    def encode(self, features: np.ndarray) -> dict[str, np.ndarray]:
        return {o.name: np.zeros((len(features), *o.shape), o.dtype) for o in self.spec.outputs}

    def decode(self, code: dict[str, np.ndarray]) -> np.ndarray:
        batch = len(next(iter(code.values())))
        return np.zeros((batch, *self.spec.features_shape), np.float32)
