"""Early-exit models. `create(spec, ...)` builds a built-in architecture or your own (`MODULE:FUNCTION`, see
`mdiexit.models.spec`); `build_early_exit` wraps your own backbone."""

from __future__ import annotations

from collections.abc import Sequence

from mdiexit.models.earlyexit import EarlyExitModel, ExitHead, Task, build_early_exit
from mdiexit.models.mobilenetv2 import mobilenetv2_blocks
from mdiexit.models.resnet import resnet50_blocks
from mdiexit.models.spec import ModelSpecError, build_from_spec, normalisation, set_normalisation
from mdiexit.models.tiny import tiny_blocks

ARCHS = {"mobilenetv2": mobilenetv2_blocks, "resnet50": resnet50_blocks, "tiny": tiny_blocks}
# Exits of the tiny model sit after blocks 0, 1 and 2 (fixed, for hand-checkable tests).
FIXED_CUTS = {"tiny": [0, 1, 2]}
HEAD_WIDTH = {"tiny": 16}


def create(arch: str, input_shape: Sequence[int], num_classes: int, mean: Sequence[float] | None = None,
           std: Sequence[float] | None = None, cut_after: Sequence[int] | None = None,
           search: Sequence[str] = ()) -> EarlyExitModel:
    """A built-in architecture by name, or `MODULE:FUNCTION` (your own, looked up first in the folders `search`).
    `mean`/`std` None: the model's own normalisation (a built-in one's is set by `train`)."""
    if arch not in ARCHS:
        model = build_from_spec(arch, input_shape, num_classes, search)
        if mean:
            set_normalisation(model, mean, std)
        return model
    kwargs = {"image_size": input_shape[-1]} if arch == "mobilenetv2" else {}
    blocks, head = ARCHS[arch](input_shape[0], num_classes, **kwargs)
    return build_early_exit(blocks, input_shape, num_classes, head, cut_after=cut_after or FIXED_CUTS.get(arch),
                            mean=mean or None, std=std or None, arch=arch, head_width=HEAD_WIDTH.get(arch, 128))


__all__ = ["ARCHS", "EarlyExitModel", "ExitHead", "ModelSpecError", "Task", "build_early_exit", "create",
           "normalisation", "set_normalisation"]
