"""New versions of a package to roll out (`bench rollout`, the roll-out tests): the same model under another
version name, and a broken one whose every exit answers another class, with the same shapes and speed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np


def _copy(package: Path, out: Path, name: str, note: str) -> Path:
    """The package's files (no training artifacts) in ``out``, its manifest renamed: another version."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(package, out, ignore=shutil.ignore_patterns("train"))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["name"] = name
    manifest["note"] = note
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def renamed_package(package: Path, out: Path) -> Path:
    """The same model as a new version: a roll-out of it must complete (its labels agree)."""
    manifest = json.loads((Path(package) / "manifest.json").read_text())
    return _copy(package, out, f"{manifest['name']}-v2", "the same model, re-released")


def broken_package(package: Path, out: Path) -> Path:
    """A version whose every exit answers the class after its own (its logits rotated by one): the same shapes,
    confidences and speed, wrong labels. A roll-out of it must be rolled back."""
    import onnx
    from onnx import helper, numpy_helper

    manifest = json.loads((Path(package) / "manifest.json").read_text())
    out = _copy(package, out, f"{manifest['name']}-broken", "built to be wrong: every label rotated by one")
    classes = len(manifest["classes"])
    for task in manifest["tasks"]:
        path = out / task["file"]
        model = onnx.load(str(path))
        graph = model.graph
        for node in graph.node:
            node.output[:] = ["logits_right" if o == "logits" else o for o in node.output]
        rotated = np.roll(np.arange(classes, dtype=np.int64), 1)
        graph.initializer.append(numpy_helper.from_array(rotated, "rotated_classes"))
        graph.node.append(helper.make_node("Gather", ["logits_right", "rotated_classes"], ["logits"], axis=1))
        onnx.save(model, str(path))
    return out
