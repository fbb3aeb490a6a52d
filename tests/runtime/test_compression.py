"""Features that cross the network travel as learned codes (and lossless frames); labels stay those of the
evaluator that applies encoder and decoder in one process."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from mdiexit.calibration import confidence
from mdiexit.config import write_cluster
from mdiexit.data import load_test_split
from mdiexit.evaluate import all_exit_logits
from mdiexit.exitprofile import outcome
from mdiexit.package import load_package
from mdiexit.runtime.launch import RunOptions, run_cluster
from mdiexit.runtime.ports import local_nodes

pytestmark = [pytest.mark.cluster, pytest.mark.training]

ITEMS = 200


@pytest.fixture(scope="module")
def compressed_package(tmp_path_factory, tiny_package, tiny_checkpoint, small_splits):
    from mdiexit.training.compress import compress_package

    dst = tmp_path_factory.mktemp("cpkg") / "tiny"
    shutil.copytree(tiny_package, dst)
    compress_package(dst, tiny_checkpoint, ratios=(4,), epochs=1, train_set=small_splits[0].subset(np.arange(300)),
                     val_set=small_splits[1], progress=False)
    return dst


def pipeline_cluster(path, package, compress: str, wire_codec: str = "raw"):
    """One task per node, so every boundary crosses the network."""
    return write_cluster(path, package=package, mode="mdi-exit",
                         nodes=local_nodes([{"tasks": [i + 1]} for i in range(4)], slowdown=2, bandwidth_mbps=100,
                                           compress=compress, wire_codec=wire_codec))


@pytest.mark.parametrize("compress, wire_codec", [("on", "raw"), ("on", "zstd"), ("off", "lz4")])
def test_runtime_labels_match_the_in_process_codec(compressed_package, tmp_path, compress, wire_codec):
    pkg = load_package(compressed_package, check_onnx=True)
    assert pkg.compression
    cluster = pipeline_cluster(tmp_path / "c.yaml", compressed_package, compress, wire_codec)
    result = run_cluster(cluster, RunOptions(rate=80, duration_s=2.0, warmup_s=0.5, live=False, limit_items=ITEMS))
    s = result.summary
    assert s["lost"] == 0 and s["duplicates"] == 0 and s["bad_messages"] == 0
    images = load_test_split(pkg, None).images[:ITEMS]
    logits = all_exit_logits(pkg, images, threads=1, progress=False, compressed=compress == "on")
    conf = np.stack([confidence(lg, t.temperature) for lg, t in zip(logits, pkg.tasks, strict=True)])
    exits = outcome(conf, np.array(pkg.default_thresholds))
    labels = logits[exits, np.arange(ITEMS)].argmax(1)
    for item_id, r in result.ledger.records.items():
        k = r.key  # the stream index of the item
        assert (r.label, r.exit) == (labels[k], exits[k] + 1), item_id



def test_codes_shrink_the_bytes_sent(compressed_package, tmp_path):
    runs = {}
    for compress in ("off", "on"):
        cluster = pipeline_cluster(tmp_path / f"{compress}.yaml", compressed_package, compress)
        runs[compress] = run_cluster(cluster, RunOptions(rate=60, duration_s=1.5, warmup_s=0.5, live=False,
                                                         limit_items=ITEMS)).summary
    assert runs["on"]["bytes_per_item"] < 0.5 * runs["off"]["bytes_per_item"]
