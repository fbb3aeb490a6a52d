import json

import numpy as np
import pytest
import torch

from mdiexit.engine import OrtEngine
from mdiexit.evaluate import all_exit_logits, evaluate_logits
from mdiexit.exitprofile import ExitProfile
from mdiexit.export import build_manifest, calibrate, check_parity, export_onnx
from mdiexit.package import PackageError, load_package
from mdiexit.training.inference import predict_logits
from mdiexit.training.torch_engine import TorchEngine
from mdiexit.training.train import load_trained

pytestmark = pytest.mark.training


def test_package_matches_torch_on_real_inputs(tiny_package, tiny_checkpoint, small_splits):
    pkg = load_package(tiny_package, check_onnx=True)
    images = small_splits[1].images[:200]
    ort_logits = all_exit_logits(pkg, images, threads=1, progress=False)
    model, _, _ = load_trained(tiny_checkpoint)
    torch_logits = predict_logits(model, images)
    assert np.abs(ort_logits - torch_logits).max() < 1e-3
    assert (ort_logits.argmax(2) == torch_logits.argmax(2)).all()


def test_manifest_records_profile_and_bytes(tiny_package):
    m = json.loads((tiny_package / "manifest.json").read_text())
    assert m["format"] == "mdiexit-model/1"
    assert [t["feature_bytes"] for t in m["tasks"]] == [8 * 14 * 14 * 4, 16 * 7 * 7 * 4, 16 * 7 * 7 * 4, 32 * 4 * 4 * 4]
    assert max(m["training"]["parity_max_rel_error"]) < 1e-3
    assert len(m["exit_profile"]["per_exit"]) == 4 and m["exit_profile"]["frontier"]


def test_default_thresholds_meet_their_validation_target(tiny_package, small_splits):
    pkg = load_package(tiny_package)
    val = small_splits[1]
    r = evaluate_logits(pkg, all_exit_logits(pkg, val.images, threads=1, progress=False), val.labels)
    assert r["accuracy"] >= r["final_exit_accuracy"] - 0.005 - 1e-9
    assert r["thresholds"] == pkg.default_thresholds and sum(r["exit_fraction"]) == pytest.approx(1.0)


def test_export_refuses_a_disagreeing_package(tiny_checkpoint, small_splits, tmp_path):
    model, _, _ = load_trained(tiny_checkpoint)
    files = export_onnx(model, tmp_path)
    val = small_splits[1]
    logits = predict_logits(model, val.images)
    calib = calibrate(logits, val.labels)
    conf = np.ones((4, 10))
    profile = ExitProfile.build(conf, np.ones((4, 10), bool), np.ones(4), 4.0, (0.5, 1.0))
    _, cfg, classes = load_trained(tiny_checkpoint)
    m = build_manifest(model, cfg, classes, files, calib, profile, profile.frontier[0], "t", [0.5] * 4)
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    check_parity(model, tmp_path, val.images[:64])  # agrees
    with torch.no_grad():
        model.tasks[2].head.body[-1].weight.mul_(-1.0)  # torch model now differs from the ONNX files
    with pytest.raises(PackageError, match="task 3: ONNX Runtime disagrees"):
        check_parity(model, tmp_path, val.images[:64])


def test_torch_engine_matches_ort_engine(tiny_package, tiny_checkpoint, small_splits):
    pkg = load_package(tiny_package)
    ort, tch = OrtEngine(pkg, threads=1), TorchEngine(tiny_checkpoint, threads=1)
    x = small_splits[1].images[:16]
    for t in pkg.tasks:
        f_o, l_o = ort.run(t.index, x)
        f_t, l_t = tch.run(t.index, x)
        assert np.allclose(l_o, l_t, atol=1e-4)
        if t.index < pkg.num_tasks:
            assert f_o.shape == (16, *t.features_shape) and np.allclose(f_o, f_t, atol=1e-4)
        else:
            assert f_o is None and f_t is None
        x = f_o


def test_large_weights_go_to_side_files_that_onnx_runtime_reads(tmp_path):
    """A file over the size cap keeps its graph and moves its weights into side files of at most the cap each."""
    import onnxruntime as ort

    from mdiexit.export import onnx_export, split_weights

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512)).eval()
    x = torch.randn(3, 256)
    path = tmp_path / "big.onnx"
    onnx_export(net, x, path, "x", ["y"])  # ~1.5 MB: under the default cap, one file
    assert not list(tmp_path.glob("big.onnx.weights-*"))
    cap = 1_200_000  # the two weight matrices, 0.5 and 1 MB, cannot share a side file
    names = split_weights(path, max_bytes=cap)
    assert len(names) >= 2 and path.stat().st_size < 100_000
    assert all((tmp_path / n).stat().st_size <= cap for n in names)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(y, net(x).detach().numpy(), rtol=1e-5, atol=1e-5)
