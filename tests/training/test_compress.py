import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from mdiexit.engine import OrtEngine, ort_session
from mdiexit.evaluate import evaluate_logits
from mdiexit.export import check_codec_parity, export_codec
from mdiexit.models.autoencoder import MAX_MAC_FRACTION, build_autoencoder, code_geometry
from mdiexit.package import PackageError, load_package
from mdiexit.training.compress import Candidate, CompressConfig, compress_package, compressed_logits, select
from mdiexit.training.train import load_trained

pytestmark = pytest.mark.training

VAL_ITEMS = 300


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, tiny_package, tiny_checkpoint, small_splits):
    """A copy of the tiny package with autoencoders at ratios 4 and 8 (1 epoch on 300 items)."""
    pkg_dir = tmp_path_factory.mktemp("compress") / "pkg"
    shutil.copytree(tiny_package, pkg_dir)
    tr, val = small_splits
    result = compress_package(pkg_dir, tiny_checkpoint, ratios=(4, 8), epochs=1, max_train_items=300, seed=0,
                              threads=1, train_set=tr, val_set=val, progress=False)
    return pkg_dir, result


def test_manifest_gets_valid_compression_entries(compressed, tiny_package):
    pkg_dir, result = compressed
    pkg = load_package(pkg_dir, check_onnx=True)
    entries = pkg.manifest["compression"]
    assert [c.after_task for c in pkg.compression] == list(range(1, pkg.num_tasks))
    for spec, e in zip(pkg.compression, entries, strict=True):
        t = pkg.task(spec.after_task)
        assert spec.features_shape == t.features_shape and e["float_bytes"] == t.feature_bytes
        assert spec.code_bytes == e["code_bytes"] <= e["float_bytes"] / 4
        assert e["ratio"] == pytest.approx(e["float_bytes"] / e["code_bytes"], rel=1e-3) and e["ratio"] >= 4
        assert e["encoder"] == f"enc{spec.after_task}.onnx" and e["decoder"] == f"dec{spec.after_task}.onnx"
        assert set(e["val_accuracy_loss_per_ratio"]) == {"4", "8"} and isinstance(e["within_budget"], bool)
        assert e["accuracy_cost"] == e["val_accuracy_loss_per_ratio"][f"{e['requested_ratio']:g}"]
        if e["within_budget"]:
            assert e["accuracy_cost"] <= 0.005
        assert 0 < e["encoder_macs"] + e["decoder_macs"] <= MAX_MAC_FRACTION * t.macs
    # everything else in the manifest is kept as it was
    before = json.loads((tiny_package / "manifest.json").read_text())
    after = dict(pkg.manifest)
    assert before.pop("compression") == [] and after.pop("compression")
    assert after == before


def test_report_and_log(compressed):
    pkg_dir, result = compressed
    report = json.loads((pkg_dir / "compression_report.json").read_text())
    assert report == json.loads(json.dumps(result.report))
    rows = report["boundaries"]
    assert len(rows) == 3 * 2 and sum(r["chosen"] for r in rows) == 3
    for r in rows:
        assert r["code_bytes"] <= r["float_bytes"] / r["requested_ratio"]
        assert r["encoder_ms"] > 0 and r["decoder_ms"] > 0 and r["parity"]["code_max_abs_diff"] <= 1
    a = report["all_boundaries"]
    assert 0 <= a["compressed_val_accuracy"] <= 1 and a["uncompressed_val_accuracy"] == report[
        "uncompressed_val_accuracy"]
    assert "boundary 1 ratio 4" in (pkg_dir / "compress.log").read_text()


def test_onnx_round_trip_shapes_and_dtypes(compressed, small_splits):
    pkg_dir, _ = compressed
    pkg = load_package(pkg_dir)
    engine = OrtEngine(pkg, threads=1)
    x = small_splits[1].images[:32]
    for t in pkg.tasks[:-1]:
        feats, _ = engine.run(t.index, x)
        spec = pkg.compression_after(t.index)
        out = spec.outputs[0]
        enc, dec = ort_session(spec.encoder), ort_session(spec.decoder)
        assert [i.name for i in enc.get_inputs()] == ["x"] and [o.name for o in enc.get_outputs()] == [out.name]
        assert [i.name for i in dec.get_inputs()] == [out.name] and [o.name for o in dec.get_outputs()] == ["features"]
        code = enc.run([out.name], {"x": feats})[0]
        assert code.dtype == np.uint8 and out.dtype == "uint8" and code.shape == (len(x), *out.shape)
        assert code.nbytes == len(x) * spec.code_bytes
        rec = dec.run(["features"], {out.name: code})[0]
        assert rec.dtype == np.float32 and rec.shape == (len(x), *spec.features_shape)
        x = feats


def test_onnx_codec_matches_torch_labels(compressed, tiny_checkpoint, small_splits):
    """ORT: task k -> enc -> dec -> task k+1, against the torch path with the same autoencoder."""
    pkg_dir, result = compressed
    pkg = load_package(pkg_dir)
    engine = OrtEngine(pkg, threads=1)
    model, _, _ = load_trained(tiny_checkpoint)
    x_np = small_splits[1].images[:VAL_ITEMS]
    x_t = torch.from_numpy(x_np)
    for t in pkg.tasks[:-1]:
        k = t.index
        spec = pkg.compression_after(k)
        feats, _ = engine.run(k, x_np)
        code = ort_session(spec.encoder).run(["code"], {"x": feats})[0]
        rec = ort_session(spec.decoder).run(["features"], {"code": code})[0]
        _, logits_ort = engine.run(k + 1, rec)
        with torch.no_grad():
            f_t, _ = model.tasks[k - 1](x_t)
            _, logits_t = model.tasks[k](result.chosen[k](f_t))
        agree = float((logits_ort.argmax(1) == logits_t.numpy().argmax(1)).mean())
        assert agree >= 0.95, (k, agree)
        x_np, x_t = feats, f_t


def test_rerun_resumes_training_and_rewrites_the_same_entries(compressed, tiny_checkpoint, small_splits, tmp_path):
    pkg_dir, result = compressed
    again = tmp_path / "pkg"
    shutil.copytree(pkg_dir, again)
    tr, val = small_splits
    r2 = compress_package(again, tiny_checkpoint, ratios=(4, 8), epochs=1, max_train_items=300, seed=0, threads=1,
                          train_set=tr, val_set=val, progress=False)
    assert "resumed autoencoder training" in (again / "compress.log").read_text()
    state = torch.load(pkg_dir / "compress_state.pt", weights_only=False)
    assert state["epoch"] == 1 and "opt" not in state  # a finished state is the autoencoders, no optimizer
    a, b = (json.loads((d / "manifest.json").read_text())["compression"] for d in (pkg_dir, again))
    assert [e["ratio"] for e in a] == [e["ratio"] for e in b]
    assert [e["accuracy_cost"] for e in a] == [e["accuracy_cost"] for e in b]
    assert r2.report["all_boundaries"] == result.report["all_boundaries"]


@pytest.mark.parametrize("change, field", [
    (lambda c: c["outputs"][0].update(dtype="float64"), r"manifest.compression\[0\].outputs\[0\].dtype"),
    (lambda c: c.update(features_shape=[3, 3, 3]), r"manifest.compression\[0\].features_shape"),
    (lambda c: c["outputs"][0].update(shape=[0, 2]), r"manifest.compression\[0\].outputs\[0\].shape"),
    (lambda c: c.update(outputs=[]), r"manifest.compression\[0\].outputs"),
    (lambda c: c.update(decoder="missing.onnx"), r"manifest.compression\[0\].decoder"),
    (lambda c: c.update(ratio="high"), r"manifest.compression\[0\].ratio"),
])
def test_malformed_compression_entry_is_rejected(compressed, tmp_path, change, field):
    pkg_dir, _ = compressed
    dst = tmp_path / "pkg"
    shutil.copytree(pkg_dir, dst)
    m = json.loads((dst / "manifest.json").read_text())
    change(m["compression"][0])
    (dst / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PackageError, match=field):
        load_package(dst)


def test_code_geometry():
    assert code_geometry((8, 14, 14), 4) == (8, 1)
    assert code_geometry((8, 14, 14), 16) == (2, 1)
    assert code_geometry((8, 14, 14), 64) == (2, 2)  # one channel at full size would be only 32x
    assert code_geometry((16, 7, 7), 128) == (1, 2)  # odd size: the code is 4x4


def test_strided_codec_exports_and_matches_torch(tmp_path):
    """The spatial-reduction path (stride 2 on an odd-sized map, pixel shuffle, crop), untrained."""
    torch.manual_seed(0)
    shape = (16, 7, 7)
    sample = torch.relu(torch.randn(64, *shape))
    ae = build_autoencoder(2, 128, shape, 10**6, sample.mean((0, 2, 3)), sample.std((0, 2, 3)), True, sample)
    assert ae.shape.stride == 2 and ae.shape.code_shape == (1, 4, 4) and ae.shape.code_bytes == 16
    export_codec(ae, tmp_path, "enc.onnx", "dec.onnx")
    parity = check_codec_parity(ae, tmp_path / "enc.onnx", tmp_path / "dec.onnx", sample.numpy())
    assert parity["code_max_abs_diff"] <= 1
    rec = ort_session(tmp_path / "dec.onnx").run(["features"], {"code": np.zeros((3, 1, 4, 4), np.uint8)})[0]
    assert rec.shape == (3, *shape) and rec.dtype == np.float32 and rec.min() >= 0


def test_cli_rejects_bad_ratios(tiny_package, tiny_checkpoint):
    out = subprocess.run([sys.executable, "-m", "mdiexit.cli", "compress", "--package", str(tiny_package),
                          "--checkpoint", str(tiny_checkpoint), "--ratios", "4,one"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "--ratios" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("budget", [0.0, 0.02])
def test_joint_selection_keeps_all_boundaries_within_budget_or_backs_off_fully(compressed, tiny_checkpoint,
                                                                            small_splits, tmp_path, budget):
    """Costs measured one boundary at a time add up; the joint check backs off until all-at-once fits. The joint
    cost is measured again here from the chosen autoencoders, not taken from the report."""
    pkg_dir, _ = compressed
    dst = tmp_path / "pkg"
    shutil.copytree(pkg_dir, dst)  # carries compress_state.pt: the autoencoders are reused, not retrained
    tr, val = small_splits
    r = compress_package(dst, tiny_checkpoint, ratios=(4, 8), epochs=1, max_train_items=300, seed=0, threads=1,
                         budget=budget, train_set=tr, val_set=val, progress=False)
    pkg = load_package(dst)
    model, _, _ = load_trained(tiny_checkpoint)
    base = evaluate_logits(pkg, compressed_logits(model, val.images, {}), val.labels)["accuracy"]
    joint = evaluate_logits(pkg, compressed_logits(model, val.images, r.chosen), val.labels)["accuracy"]
    cost = base - joint
    assert cost == pytest.approx(r.report["all_boundaries"]["accuracy_cost"], abs=1e-6)
    weakest = {k: ae.requested_ratio == 4 for k, ae in r.chosen.items()}
    if not all(weakest.values()):
        assert cost <= budget + 1e-9  # a stronger ratio than the weakest is kept only when all-at-once fits
    rows = {(row["after_task"], row["requested_ratio"]): row for row in r.report["boundaries"]}
    for k, ae in r.chosen.items():
        row = rows[k, ae.requested_ratio]
        assert row["chosen"] and row["within_budget"] == (row["accuracy_cost"] <= budget + 1e-12)
        if not weakest[k]:
            assert row["accuracy_cost"] <= budget + 1e-12  # alone within the budget, or it would not be picked
    entries = {e["after_task"]: e for e in pkg.manifest["compression"]}
    assert {k: e["requested_ratio"] for k, e in entries.items()} == {k: a.requested_ratio for k, a in r.chosen.items()}


def _additive(cands, extra=0.0, extra_if=lambda picks: False):
    """Joint accuracy of picks (base 0.9): the sum of their costs alone, plus `extra` when `extra_if(picks)`."""
    return lambda picks: 0.9 - sum(cands[i].cost for i in picks.values()) - (extra if extra_if(picks) else 0.0)


def test_select_at_budget_zero_keeps_free_ratios_and_backs_off_what_costs():
    cands = [Candidate(1, 4, 0.0), Candidate(1, 8, 0.0), Candidate(1, 16, 0.004),
             Candidate(2, 4, 0.0), Candidate(2, 8, 0.001)]
    picks, acc = select(cands, 0.0, _additive(cands), 0.9)
    assert picks == {1: 1, 2: 3} and acc == pytest.approx(0.9)  # the strongest free ratio of each boundary
    # together, boundary 1 at 8x costs a little: it steps down to 4x, boundary 2 (already weakest) stays
    picks, acc = select(cands, 0.0, _additive(cands, 0.002, lambda p: p[1] == 1), 0.9)
    assert picks == {1: 0, 2: 3} and acc == pytest.approx(0.9)


def test_select_backs_off_the_costliest_pick_first_and_stops_once_within_budget():
    cands = [Candidate(1, 4, 0.001), Candidate(1, 8, 0.004), Candidate(2, 4, 0.0), Candidate(2, 8, 0.003)]
    picks, acc = select(cands, 0.005, _additive(cands), 0.9)  # alone: 8x and 8x; together 0.007 > 0.005
    assert picks == {1: 0, 2: 3} and 0.9 - acc == pytest.approx(0.004)  # boundary 1 (cost 0.004) backs off; done
    picks, acc = select(cands, 0.0, _additive(cands, 0.01, lambda p: True), 0.9)
    assert picks == {1: 0, 2: 2} and 0.9 - acc > 0.0  # nothing fits: every boundary ends at its weakest ratio


def test_compress_config_sorts_and_checks_ratios():
    assert CompressConfig(ratios=(16, 4, 4)).ratios == (4.0, 16.0)
    with pytest.raises(ValueError, match="ratios"):
        CompressConfig(ratios=(1,))
