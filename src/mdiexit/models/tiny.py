"""A tiny early-exit CNN for fast tests: four plain conv blocks whose MACs are easy to count by hand."""

from __future__ import annotations

from torch import nn


def tiny_blocks(in_channels: int, num_classes: int, width: int = 8) -> tuple[list[nn.Module], nn.Module]:
    def block(cin: int, cout: int, stride: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    w = width
    blocks = [block(in_channels, w, 2), block(w, 2 * w, 2), block(2 * w, 2 * w, 1), block(2 * w, 4 * w, 2)]
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, num_classes))
    return blocks, head
