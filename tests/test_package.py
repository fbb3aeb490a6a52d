import json
import shutil

import pytest

from mdiexit.package import PackageError, load_package


@pytest.fixture
def pkg_copy(tiny_package, tmp_path):
    dst = tmp_path / "pkg"
    shutil.copytree(tiny_package, dst)
    return dst


def edit_manifest(root, change):
    m = json.loads((root / "manifest.json").read_text())
    change(m)
    (root / "manifest.json").write_text(json.dumps(m))


def test_valid_package_loads(tiny_package):
    pkg = load_package(tiny_package, check_onnx=True)
    assert pkg.num_tasks == 4 and pkg.default_thresholds[-1] == 0.0
    assert pkg.input_shape == (1, 28, 28) and pkg.tasks[1].input_shape == pkg.tasks[0].features_shape


def test_missing_manifest(tmp_path):
    with pytest.raises(PackageError, match="manifest.json not found"):
        load_package(tmp_path)


def test_bad_json(pkg_copy):
    (pkg_copy / "manifest.json").write_text("{not json")
    with pytest.raises(PackageError, match="not valid JSON"):
        load_package(pkg_copy)


@pytest.mark.parametrize("change, field", [
    (lambda m: m.update(format="other/9"), "manifest.format"),
    (lambda m: m.pop("classes"), "manifest.classes"),
    (lambda m: m["input"].update(dtype="float32"), "manifest.input.dtype"),
    (lambda m: m["tasks"][1].update(input_shape=[3, 3, 3]), r"manifest.tasks\[1\].input_shape"),
    (lambda m: m["tasks"][2].update(features_shape=[0, 4]), r"manifest.tasks\[2\].features_shape"),
    (lambda m: m["tasks"][0].update(index=2), r"manifest.tasks\[0\].index"),
    (lambda m: m["tasks"][0].update(temperature="hot"), r"manifest.tasks\[0\].temperature"),
    (lambda m: m["tasks"][3].pop("macs"), r"manifest.tasks\[3\].macs: missing"),
    (lambda m: m["tasks"][0].update(file="../../etc/passwd"), r"manifest.tasks\[0\].file"),
    (lambda m: m.update(default_thresholds=[0.9, 0.9, 0.9, 0.5]), "last threshold must be 0"),
    (lambda m: m.update(default_thresholds=[0.9, 0.9]), "manifest.default_thresholds"),
    (lambda m: m["exit_profile"]["per_exit"].pop(), "manifest.exit_profile.per_exit"),
    (lambda m: m.update(compression=[{"after_task": 4}]), r"manifest.compression\[0\].after_task"),
])
def test_bad_field_is_named(pkg_copy, change, field):
    edit_manifest(pkg_copy, change)
    with pytest.raises(PackageError, match=field):
        load_package(pkg_copy)


def test_missing_onnx_file(pkg_copy):
    (pkg_copy / "task3.onnx").unlink()
    with pytest.raises(PackageError, match=r"tasks\[2\].file: file .*task3.onnx is missing"):
        load_package(pkg_copy)


def test_corrupt_onnx_file(pkg_copy):
    (pkg_copy / "task2.onnx").write_bytes(b"\x00garbage" * 100)
    load_package(pkg_copy)  # the manifest alone is fine
    with pytest.raises(PackageError, match="task2.onnx: ONNX Runtime cannot load it"):
        load_package(pkg_copy, check_onnx=True)


def test_onnx_swapped_with_another_task(pkg_copy):
    shutil.copy(pkg_copy / "task1.onnx", pkg_copy / "task2.onnx")
    with pytest.raises(PackageError, match="task2.onnx: input shape"):
        load_package(pkg_copy, check_onnx=True)


def test_reader_and_worker_path_import_no_torch():
    import subprocess
    import sys

    code = ("import sys, mdiexit.package, mdiexit.engine, mdiexit.exitprofile, mdiexit.runtime.launch, "
            "mdiexit.policies.admission, mdiexit.protocol.codec; print([m for m in ('torch', 'tqdm') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
