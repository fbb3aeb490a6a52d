import numpy as np
import pytest
from PIL import Image

from mdiexit.inputs import InputError, image_files, to_input


def test_png_files_and_arrays_of_any_layout_become_the_package_input(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "a.png")
    x = to_input(tmp_path / "a.png", (1, 28, 28))
    assert x.dtype == np.uint8 and x.shape == (1, 1, 28, 28)
    assert np.array_equal(x[0, 0], grey)  # same size: the pixels are untouched
    assert np.array_equal(to_input(grey[None], (1, 28, 28)), x)  # (C, H, W)
    assert np.array_equal(to_input(grey / 255.0, (1, 28, 28)), x)  # floats in 0..1
    rgb = to_input(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8), (3, 32, 32))
    assert rgb.shape == (1, 3, 32, 32)
    assert to_input(np.stack([grey] * 3, axis=-1), (1, 28, 28)).shape == (1, 1, 28, 28)  # RGB -> grey
    assert to_input(rng.integers(0, 256, (4, 50, 50), dtype=np.uint8), (1, 28, 28)).shape == (1, 1, 28, 28)  # RGBA


@pytest.mark.parametrize("bad", [np.zeros(0), np.zeros((2, 3, 4, 5, 6)), np.full((8, 8), np.nan),
                                 np.zeros((8, 8, 7))])
def test_odd_arrays_get_clear_errors(bad):
    with pytest.raises(InputError):
        to_input(bad, (1, 28, 28))


def test_corrupt_and_missing_files_get_clear_errors(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match="cannot decode"):
        to_input(tmp_path / "bad.png", (1, 28, 28))
    with pytest.raises(InputError, match="no such file"):
        to_input(tmp_path / "none.png", (1, 28, 28))


def test_folders_expand_to_their_images(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("sub/b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in image_files([tmp_path])] == ["a.jpg", "b.png"]
