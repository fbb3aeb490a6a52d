"""Turn what an application has (an image file, a Pillow image, a numpy array of any size and layout) into
a package's input: uint8, shape (1, C, H, W). Pillow does the decoding, colour conversion and resizing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


class InputError(ValueError):
    """An input cannot be converted. The message says what it is and what would work."""


def image_files(paths: list[str | Path]) -> list[Path]:
    """The image files among ``paths``; a folder stands for every image file under it, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def to_input(image: Any, input_shape: tuple[int, ...]) -> np.ndarray:
    """``image`` as the package's input. ``input_shape`` is (C, H, W). Arrays may be (H, W), (H, W, C),
    (C, H, W) or with a leading 1; floats are read as 0..1 when they stay within it, else as 0..255."""
    from PIL import Image

    c, h, w = input_shape
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape[-3:] == (c, h, w) \
            and image.ndim in (3, 4) and image.size == c * h * w:
        return np.ascontiguousarray(image.reshape(1, c, h, w))  # already the package's input
    if isinstance(image, str | Path):
        im = _open(Path(image))
    elif isinstance(image, Image.Image):
        im = image
    else:
        im = Image.fromarray(_hwc_uint8(np.asarray(image)))
    try:
        im = im.convert("L" if c == 1 else "RGB")
        if im.size != (w, h):
            im = im.resize((w, h), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    except OSError as e:
        raise InputError(f"cannot decode the image ({e}); give a PNG or JPEG file, or an array") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr[None])


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        im = Image.open(path)
        im.load()
        return im
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"{path}: cannot decode image ({e}); give a PNG or JPEG file") from None


def _hwc_uint8(a: np.ndarray) -> np.ndarray:
    """An array as (H, W) or (H, W, 3) uint8, the layouts Pillow takes."""
    if a.dtype == object or a.size == 0:
        raise InputError(f"an image array must be numeric and non-empty, got {a.dtype} of shape {list(a.shape)}")
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    elif a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]  # alpha dropped
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise InputError(f"cannot read an array of shape {list(a.shape)} as an image; give (H, W), (H, W, C) or "
                         "(C, H, W) with C = 1, 3 or 4")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    was_float = a.dtype.kind == "f"
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise InputError("the image array holds NaN or infinite values")
    if was_float and a.min() >= 0.0 and a.max() <= 1.0:
        a = a * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)
