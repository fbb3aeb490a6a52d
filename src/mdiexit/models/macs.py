"""Count multiply-accumulates of a module by forward hooks on Conv2d and Linear (the standard count:
BN, activations, pooling and additions are not counted)."""

from __future__ import annotations

import torch
from torch import nn


def layer_macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out[0].numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0


@torch.no_grad()
def count_macs(module: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """MACs per item of `module` on input `x` (batch 1), and its output."""
    total = 0

    def hook(m: nn.Module, _inp: object, out: torch.Tensor) -> None:
        nonlocal total
        total += layer_macs(m, out)

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        y = module(x)
    finally:
        for h in handles:
            h.remove()
    return total, y
