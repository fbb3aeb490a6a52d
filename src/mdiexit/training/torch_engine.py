"""The tasks of a training checkpoint run in eager torch: the `Engine` twin of `OrtEngine`, for comparison and
parity checks (`mdiexit bench engine`, tests). Needs torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mdiexit.training.train import load_trained


class TorchEngine:
    """The same tasks run in eager torch from a training checkpoint (for comparison and parity checks)."""

    def __init__(self, checkpoint: Path, threads: int = 1, model=None):
        torch.set_num_threads(threads)
        self.model, _, _ = load_trained(checkpoint, model)
        self.model = self.model.to(memory_format=torch.channels_last)

    def run(self, task_index: int, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        with torch.inference_mode():
            features, logits = self.model.tasks[task_index - 1](torch.from_numpy(x))
        last = task_index == self.model.num_exits
        return (None if last else features.numpy()), logits.numpy()
