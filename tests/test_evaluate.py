"""Evaluation streams its items: lazily decoded folders give the same logits as decoded ones, and the peak memory
of `mdiexit evaluate` does not grow with the number of images."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from mdiexit.data import LazyImages, load_items
from mdiexit.evaluate import all_exit_logits, points_vs_final
from mdiexit.package import load_package
from mdiexit.util import third_party_warnings_summarised

CAMERA = Path(__file__).resolve().parents[1] / "models" / "mobilenetv2-fmnist-camera"


def _png_folder(root: Path, images: np.ndarray) -> Path:
    from PIL import Image

    root.mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im[0]).save(root / f"{i:05d}.png")
    return root


def test_a_lazy_folder_gives_the_logits_of_a_decoded_one(tiny_package, fmnist, tmp_path):
    pkg = load_package(tiny_package)
    folder = _png_folder(tmp_path / "imgs", fmnist[1].images[:70])
    lazy, eager = load_items(pkg, "all", folder, lazy=True), load_items(pkg, "all", folder)
    assert isinstance(lazy.images, LazyImages) and isinstance(eager.images, np.ndarray)
    assert np.array_equal(np.asarray(lazy.images), eager.images)
    assert np.array_equal(lazy.subset([3, 1]).images[:], eager.images[[3, 1]])
    a = all_exit_logits(pkg, lazy.images, threads=1, batch=32, progress=False)
    b = all_exit_logits(pkg, eager.images, threads=1, batch=70, progress=False)
    assert a.shape == (4, 70, 10) and np.allclose(a, b, atol=1e-5)


def _peak_mb(package: Path, folder: Path) -> float:
    code = ("import resource, sys; from pathlib import Path; from mdiexit.evaluate import evaluate_package; "
            "evaluate_package(Path(sys.argv[1]), data_dir=Path(sys.argv[2]), items='all'); "
            "print('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(package), str(folder)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.split("peak")[-1])


@pytest.mark.slow
def test_evaluate_peaks_at_about_the_same_memory_on_ten_times_the_images(fmnist, tmp_path):
    """The camera model (3x112x112): 3,000 decoded images alone would take 113 MB on top of ~250 MB."""
    images = np.tile(fmnist[1].images[:300], (10, 1, 1, 1))
    small = _png_folder(tmp_path / "300", images[:300])
    large = _png_folder(tmp_path / "3000", images)
    peak_small, peak_large = _peak_mb(CAMERA, small), _peak_mb(CAMERA, large)
    assert peak_large <= 1.3 * peak_small, (peak_small, peak_large)


def test_the_accuracy_against_the_final_exit_reads_as_words():
    assert points_vs_final(1.49) == "1.49 points below the final exit"
    assert points_vs_final(-0.2) == "0.20 points above the final exit"
    assert points_vs_final(0.001) == "level with the final exit"


def test_library_warnings_are_summarised_once(capsys, monkeypatch):
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    with third_party_warnings_summarised("export"):
        for _ in range(5):
            warnings.warn("Constant folding not applied", UserWarning, stacklevel=1)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["[export] 5 warnings from libraries held back (UserWarning: about their internals, not your "
                   "model); PYTHONWARNINGS=default shows them"]
