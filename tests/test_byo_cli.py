"""End to end from the command line with a model the CLI does not know: `train --model tests_mod:build` -> `export`
-> `evaluate` -> `run` over an image folder on a 3-node cluster; the labels equal single-process inference."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mdiexit.calibration import confidence
from mdiexit.config import write_cluster
from mdiexit.data import load_items
from mdiexit.evaluate import all_exit_logits, predicted_labels
from mdiexit.package import load_package
from mdiexit.runtime.ports import local_nodes

pytestmark = [pytest.mark.training, pytest.mark.cluster]

SRC = Path(__file__).resolve().parents[1] / "src"
TESTS_BLOCKS = textwrap.dedent('''
    """A helper module beside the builder, as a user's model code has them."""
    from torch import nn

    def block(cin, cout, stride):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
''')
TESTS_MOD = textwrap.dedent('''
    """A small custom backbone: three conv blocks and a classifier, exits after blocks 0 and 1."""
    from torch import nn
    from tests_blocks import block
    from mdiexit.models import build_early_exit

    def build(input_shape, num_classes):
        blocks = [block(input_shape[0], 8, 2), block(8, 16, 2), block(16, 24, 2)]
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, num_classes))
        return build_early_exit(blocks, input_shape, num_classes, head, cut_after=[0, 1], head_width=16)
''')
CLASSES = {1: "Trouser", 4: "Coat", 7: "Sneaker", 8: "Bag"}


def mdiexit(*args, cwd, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(SRC)}  # this checkout's mdiexit; nothing of the user's model
    return subprocess.run([sys.executable, "-m", "mdiexit.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def ok(out):
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, fmnist):
    """tests_mod.py and an image folder (4 Fashion-MNIST classes, 60 PNGs each) in a fresh folder."""
    from PIL import Image

    root = tmp_path_factory.mktemp("byo")
    (root / "tests_mod.py").write_text(TESTS_MOD)
    (root / "tests_blocks.py").write_text(TESTS_BLOCKS)
    (root / "elsewhere").mkdir()
    train, _ = fmnist
    for label, name in CLASSES.items():
        (root / "images" / name).mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(train.labels == label)[:60]):
            Image.fromarray(train.images[i, 0]).save(root / "images" / name / f"{j:03d}.png")
    return root


@pytest.fixture(scope="module")
def package(workdir):
    ok(mdiexit("train", "--model", "tests_mod:build", "--dataset", "folder", "--data-dir", "images",
               "--image-size", "32", "--epochs", "6", "--batch-size", "32", "--threads", "1", "--out", "run",
               cwd=workdir))
    # from another folder, with no PYTHONPATH to the model's: the checkpoint recorded where its builder is
    out = ok(mdiexit("export", "../run/model.pt", "--out", "../pkg", cwd=workdir / "elsewhere"))
    assert "default thresholds" in out.stderr
    return workdir / "pkg"


def test_custom_model_trains_exports_and_evaluates(workdir, package):
    m = json.loads((package / "manifest.json").read_text())
    assert m["arch"] == "tests_mod:build" and m["training"]["config"]["model"] == "tests_mod:build"
    assert m["classes"] == sorted(CLASSES.values()) and m["input"]["shape"] == [1, 32, 32]
    assert len(m["tasks"]) == 3 and m["profile_targets"] == "labels"
    out = ok(mdiexit("evaluate", "pkg", "--items", "all", "--data-dir", "images", "--out", "eval.json",
                     cwd=workdir))
    r = json.loads((workdir / "eval.json").read_text())
    assert r["items"] == 240 and r["scored_against"] == "labels" and "exit 3: accuracy" in out.stdout
    assert r["per_exit_accuracy"][-1] > 0.5  # 4 classes: well above chance after 6 short epochs


@pytest.mark.parametrize("thresholds", [None, "0.6,0.7,0"])
def test_run_over_the_folder_matches_single_process_inference(workdir, package, tmp_path, thresholds):
    cluster = write_cluster(tmp_path / "c.yaml", package=package, mode="mdi-exit",
                            nodes=local_nodes([{"slowdown": 2}, {}, {}], bandwidth_mbps=50, latency_ms=1))
    extra = ["--thresholds", thresholds] if thresholds else []
    out = ok(mdiexit("run", "--cluster", cluster, "--items", "all", "--data-dir", "images", "--rate", 150,
                     "--duration", 20, "--warmup", 0, "--quiet", "--out", tmp_path / "r", *extra, cwd=workdir))
    assert f"summary written to {tmp_path / 'r' / 'summary.json'}" in out.stdout
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["admitted"] == summary["completed"] == 240, out.stdout  # every image once, then it stops
    assert summary["lost"] == summary["duplicates"] == 0
    pkg = load_package(package)
    items = load_items(pkg, "all", workdir / "images")
    ths = [float(x) for x in thresholds.split(",")] if thresholds else pkg.default_thresholds
    assert summary["config"]["thresholds"] == ths
    logits = all_exit_logits(pkg, items.images, threads=1, progress=False)
    labels, exits = predicted_labels(pkg, logits, ths)
    conf = np.stack([confidence(lg, t.temperature) for lg, t in zip(logits, pkg.tasks, strict=True)])
    rows = list(csv.DictReader((tmp_path / "r" / "items.csv").open()))
    assert [str(workdir / r["path"]) for r in rows] == items.paths  # in folder order, each row names its file
    for k, r in enumerate(rows):
        near = abs(conf[int(r["exit"]) - 1, k] - ths[int(r["exit"]) - 1]) < 1e-5  # float ties may flip
        assert (int(r["label"]), int(r["exit"])) == (labels[k], exits[k]) or near, (k, r)
        assert int(r["truth"]) == items.labels[k]


@pytest.mark.parametrize("args, message", [
    (["train", "--model", "no_such_mod:build", "--dataset", "folder", "--data-dir", "images", "--out", "x"],
     "no module 'no_such_mod'"),
    (["train", "--model", "tests_mod:nothing", "--dataset", "folder", "--data-dir", "images", "--out", "x"],
     "has no function 'nothing'"),
    (["train", "--model", "tests_mod:build", "--dataset", "folder", "--data-dir", "images", "--out", "x",
      "--mean", "0.5"], "--mean and --std together"),
    (["train", "--model", "tests_mod:build", "--dataset", "folder", "--data-dir", "images", "--out", "x",
      "--exit-targets", "teacher"], "--freeze-backbone"),
    (["export", "missing.pt", "--out", "p"], "missing.pt not found"),
    (["evaluate", "pkg", "--items", "many"], "--items 'many'"),
    (["evaluate", "pkg", "--thresholds", "0.5,0"], "2 values for 3 exits"),
    (["compress", "--package", "pkg", "--checkpoint", "run/model.pt", "--ratios", "x"], "--ratios"),
])
def test_cli_errors_are_one_line_naming_the_fix(workdir, package, args, message):
    out = mdiexit(*args, cwd=workdir)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert lines[-1].startswith("mdiexit: error: ") and message in lines[-1], out.stderr
