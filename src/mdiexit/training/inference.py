"""A trained torch model run over many items in memory-bounded batches: validation during training, calibration and
the exit profile at export, the codecs' selection in compress."""

from __future__ import annotations

import numpy as np
import torch

from mdiexit.data import LazyImages
from mdiexit.models import EarlyExitModel

MEMORY_BUDGET = 1 << 30  # bytes of activations one inference batch may take (export, validation)


def memory_batch(model: EarlyExitModel, budget_bytes: int = MEMORY_BUDGET, cap: int = 512) -> int:
    """Items per inference batch so that the activations stay within `budget_bytes`: the largest output of any
    layer, three times over (input, output and a residual), per item."""
    largest = [4 * int(np.prod(model.input_shape))]
    device = _device_of(model)

    def hook(_mod, _inp, out):
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                largest[0] = max(largest[0], t.element_size() * t[0].numel())

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros((1, *model.input_shape), dtype=torch.uint8, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(max(1, min(cap, budget_bytes // (3 * largest[0]))))


@torch.no_grad()
def predict_logits(model: EarlyExitModel, images: np.ndarray | LazyImages, batch_size: int | None = None) -> np.ndarray:
    """Logits of every exit, shape (K, N, classes), in batches sized to stay within about 1 GB."""
    batch_size = batch_size or memory_batch(model)
    device = _device_of(model)
    model.eval()
    outs = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size]))
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        outs.append(torch.stack(model(x)).float().cpu().numpy())
    return np.concatenate(outs, axis=1)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
