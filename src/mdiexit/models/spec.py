"""A model by name: one of the built-in architectures, or your own as `MODULE:FUNCTION` (or `path/to/file.py:FUNCTION`).

`FUNCTION(input_shape, num_classes)` returns either an `EarlyExitModel` (made with `build_early_exit`, which then
also fixes its input normalisation) or `(blocks, final_head)`, a backbone to cut. A checkpoint records the spec,
so that `export`, `compress`, `evaluate` and the engines rebuild the model from it without any registry.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from mdiexit.models.earlyexit import EarlyExitModel, InputNorm, build_early_exit

BUILTIN = ("mobilenetv2", "resnet50", "tiny")


class ModelSpecError(Exception):
    """A model spec cannot be resolved or its function returned something unusable. The message names the fix."""


def is_builtin(spec: str) -> bool:
    return spec in BUILTIN


def resolve(spec: str, search: Sequence[str | Path] = ()) -> Callable:
    """The FUNCTION of `MODULE:FUNCTION` or `FILE.py:FUNCTION`. As Python does for a script, the file's own folder
    comes first on the import path, so a builder imports the modules beside it. A module name is looked up in
    `search` (the folder a checkpoint recorded), then in the current folder (as `python -m` would), then on
    sys.path."""
    if ":" not in spec:
        raise ModelSpecError(f"--model {spec!r}: use one of {', '.join(BUILTIN)}, or MODULE:FUNCTION (e.g. "
                             "my_model:build), where FUNCTION(input_shape, num_classes) returns build_early_exit(...)")
    where, _, func = spec.rpartition(":")
    if not where or not func.isidentifier():
        raise ModelSpecError(f"--model {spec!r}: expected MODULE:FUNCTION, e.g. my_model:build")
    if is_file_spec(spec):
        tried = [Path(d) / Path(where).name for d in search] + [Path(where).resolve()]
        path = next((p for p in tried if p.is_file()), None)
        if path is None:
            raise ModelSpecError(f"--model {spec!r}: file {' or '.join(map(str, tried))} not found; give an existing "
                                 ".py file or a module name")
        _first_on_path([path.parent])
        mod_spec = importlib.util.spec_from_file_location(f"_mdiexit_model_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(module)
        except ModuleNotFoundError as e:
            raise ModelSpecError(f"--model {spec!r}: {path.name} imports {e.name!r}, which is neither beside it (in "
                                 f"{path.parent}) nor installed; put {e.name}.py in that folder or pip install "
                                 "it") from None
        except Exception as e:  # the user's module: any error, reported in one line
            raise ModelSpecError(f"--model {spec!r}: importing {path} failed: {type(e).__name__}: {e}") from None
    else:
        folders = [Path(d) for d in search] + [Path.cwd()]
        _first_on_path(folders)
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as e:
            looked = ", ".join(str(d) for d in dict.fromkeys(folders))
            if e.name == where.split(".")[0]:
                raise ModelSpecError(f"--model {spec!r}: no module {e.name!r} in {looked} or the installed packages; "
                                     f"run from the folder that holds {where.replace('.', '/')}.py, give it as "
                                     "FILE.py:FUNCTION, or add its folder to PYTHONPATH") from None
            raise ModelSpecError(f"--model {spec!r}: {where} imports {e.name!r}, which is neither in {looked} nor "
                                 f"installed; put {e.name}.py beside {where.replace('.', '/')}.py or pip install "
                                 "it") from None
        except Exception as e:
            raise ModelSpecError(f"--model {spec!r}: importing {where} failed: {type(e).__name__}: {e}") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ModelSpecError(f"--model {spec!r}: {where} has no function {func!r}")
    return fn


def is_file_spec(spec: str) -> bool:
    where = spec.rpartition(":")[0]
    return where.endswith(".py") or "/" in where


def builder_folder(spec: str) -> str | None:
    """The folder a builder's module was found in, as an absolute path (the checkpoint records it, so that later
    commands rebuild the model from any folder); None for a built-in model."""
    if is_builtin(spec) or ":" not in spec:
        return None
    where = spec.rpartition(":")[0]
    if is_file_spec(spec):
        return str(Path(where).resolve().parent)
    resolve(spec)
    module = sys.modules.get(where)
    file = getattr(module, "__file__", None)
    return str(Path(file).resolve().parents[where.count(".")]) if file else None


def _first_on_path(folders: Sequence[Path]) -> None:
    for folder in reversed([str(f.resolve()) for f in folders]):
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)


def build_from_spec(spec: str, input_shape: Sequence[int], num_classes: int,
                    search: Sequence[str | Path] = ()) -> EarlyExitModel:
    """Call the spec's function and turn what it returns into an early-exit model (`search`: see `resolve`)."""
    fn = resolve(spec, search)
    try:
        out = fn(tuple(input_shape), num_classes)
    except Exception as e:
        raise ModelSpecError(f"--model {spec!r}: {getattr(fn, '__name__', 'FUNCTION')}({tuple(input_shape)}, "
                             f"{num_classes}) failed: {type(e).__name__}: {e}") from None
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], nn.Module):
        blocks, head = out
        out = build_early_exit(list(blocks), input_shape, num_classes, head)
    if not isinstance(out, EarlyExitModel):
        raise ModelSpecError(f"--model {spec!r} returned {type(out).__name__}; return build_early_exit(blocks, "
                             "input_shape, num_classes, final_head, ...) or a (blocks, final_head) pair")
    if tuple(out.input_shape) != tuple(input_shape):
        raise ModelSpecError(f"--model {spec!r} built a model for input {tuple(out.input_shape)}, but the data is "
                             f"{tuple(input_shape)}; use the input_shape argument, or --image-size/--channels")
    with torch.no_grad():
        logits = out.eval()(torch.zeros((1, *input_shape), dtype=torch.uint8))
    if logits[-1].shape[-1] != num_classes:
        raise ModelSpecError(f"--model {spec!r}: the final head has {logits[-1].shape[-1]} outputs for "
                             f"{num_classes} classes; pass --num-classes {logits[-1].shape[-1]} to keep it")
    out.arch = spec
    return out


def input_norm(model: EarlyExitModel) -> InputNorm:
    norm = model.tasks[0].segment[0] if isinstance(model.tasks[0].segment, nn.Sequential) else None
    if not isinstance(norm, InputNorm):
        raise ModelSpecError("task 1 does not start with the input normalisation; build the model with "
                             "build_early_exit")
    return norm


def normalisation(model: EarlyExitModel) -> tuple[list[float], list[float]] | None:
    """(mean, std) the model was built with, or None when it was left at build_early_exit's default."""
    norm = input_norm(model)
    if not norm.explicit:
        return None
    std = (1.0 / (255.0 * norm.scale.flatten())).tolist()
    mean = (-norm.shift.flatten() * torch.tensor(std)).tolist()
    return [round(m, 6) for m in mean], [round(s, 6) for s in std]


def set_normalisation(model: EarlyExitModel, mean: Sequence[float], std: Sequence[float]) -> None:
    channels = model.input_shape[0]
    if len(mean) not in (1, channels) or len(std) not in (1, channels):
        raise ModelSpecError(f"--mean/--std: give 1 or {channels} values each (got {len(mean)} and {len(std)})")
    if min(std) <= 0:
        raise ModelSpecError(f"--std: values must be > 0, got {list(std)}")
    input_norm(model).set(mean, std)
