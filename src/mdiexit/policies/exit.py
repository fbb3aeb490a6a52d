"""Exit policy (DESIGN §3.1): decide, per item, whether it leaves after the task just run.

Pure numpy. A threshold of 1.0 (or more) disables the exit, as in :func:`mdiexit.exitprofile.outcome`;
the last task always exits.
"""

from __future__ import annotations

import math

import numpy as np

from mdiexit.calibration import confidence


def exit_decisions(logits: np.ndarray, temperature: float, threshold: float,
                   last: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decide which items of a batch exit after this task.

    Args:
        logits: (N, C) logits of exit head k (a single (C,) vector is treated as a batch of one).
        temperature: the exit's calibration temperature.
        threshold: T_k; an item exits when its confidence is >= T_k. T_k >= 1.0 disables the exit.
        last: True after the final task: every item exits.

    Returns:
        (exits, labels, confidences): bool (N,), int64 (N,) argmax of the logits, float64 (N,).
    """
    z = np.asarray(logits)
    if z.ndim == 1:
        z = z[None, :]
    if z.ndim != 2 or z.shape[1] == 0:
        raise ValueError(f"logits: expected shape (N, C) with C >= 1, got {z.shape}")
    conf = confidence(z, temperature)
    labels = z.argmax(axis=-1).astype(np.int64)
    if last:
        exits = np.ones(z.shape[0], dtype=bool)
    elif threshold >= 1.0:
        exits = np.zeros(z.shape[0], dtype=bool)
    else:
        exits = conf >= threshold
    return exits, labels, conf


def exit_decision(logits: np.ndarray, temperature: float, threshold: float, last: bool) -> tuple[bool, int, float]:
    """:func:`exit_decisions` for one item, in plain Python: (exits, label, confidence). The runtime decides each
    item of a batch on its own thresholds, and numpy's per-call cost is most of a 10-class softmax."""
    z = [v / temperature for v in logits.ravel().tolist()]
    top = max(z)
    conf = 1.0 / math.fsum(math.exp(v - top) for v in z)  # the largest softmax term: exp(0) over the sum
    exits = last or (threshold < 1.0 and conf >= threshold)
    return exits, z.index(top), conf
