"""Temperature scaling (Guo et al. 2017) and expected calibration error. numpy only."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def confidence(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """C(d) = max softmax(logits / T), per item (DESIGN §2)."""
    return softmax(np.asarray(logits, dtype=np.float64), temperature).max(axis=-1)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits.astype(np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, lo: float = 0.05, hi: float = 20.0,
                    iters: int = 60) -> float:
    """Temperature minimising the NLL on held-out data, by golden-section search on log T (NLL is convex in 1/T)."""
    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(logits, labels, np.exp(c)), nll(logits, labels, np.exp(d))
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(logits, labels, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(logits, labels, np.exp(d))
    return float(np.exp((a + b) / 2))


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0,
                               bins: int = 15) -> float:
    """ECE: confidence-weighted gap between confidence and accuracy over equal-width bins."""
    p = softmax(logits.astype(np.float64), temperature)
    conf, pred = p.max(1), p.argmax(1)
    correct = pred == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(conf[m].mean() - correct[m].mean())
    return float(ece)
