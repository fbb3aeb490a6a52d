"""Datasets as uint8 NCHW arrays: Fashion-MNIST (idx), CIFAR-10 (python pickles), image folders.

Every loader returns a `Dataset` of raw uint8 images exactly as a source device would hold them;
scaling and normalisation live inside task 1 of the model. Errors name the file and the fix.
Imports numpy only (Pillow lazily, for image folders).
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
DATASETS = ("fashion-mnist", "cifar10", "folder")
INSTALL_HINT = (
    "install it with `apt-get install -y dataset-fashion-mnist` (Debian), or point at a folder holding the "
    "idx files with --data-dir DIR or the MDIEXIT_DATA environment variable"
)


class DataError(Exception):
    """A dataset file is missing or malformed. The message names the file and the fix."""


@dataclass
class Dataset:
    images: np.ndarray  # uint8, (N, C, H, W)
    labels: np.ndarray  # int64, (N,)
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(f"images must be uint8 NCHW, got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, idx: np.ndarray) -> Dataset:
        return Dataset(self.images[idx], self.labels[idx], self.classes)


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset


# ---------------------------------------------------------------- Fashion-MNIST (idx)

def _open_maybe_gz(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: corrupt gzip ({e}); re-download or reinstall the dataset") from None
    return raw


def read_idx(path: Path) -> np.ndarray:
    """Read one idx file (optionally gzipped) into a numpy array, validating its header."""
    raw = _open_maybe_gz(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an idx file (bad magic number); replace it with a valid idx file")
    if raw[2] != 0x08:
        raise DataError(f"{path}: idx dtype code {raw[2]:#x} unsupported, expected 0x08 (uint8)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated idx header; the file is damaged, re-download it")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: idx header says {expected} bytes of data for shape {dims}, file holds "
            f"{len(raw) - header}; the file is truncated or damaged, re-download it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root / stem}[.gz] not found; {INSTALL_HINT}")


def load_fashion_mnist(root: Path | None = None) -> tuple[Dataset, Dataset]:
    """Return (train, test) Fashion-MNIST as (N, 1, 28, 28) uint8."""
    root = Path(root or os.environ.get("MDIEXIT_DATA") or FASHION_MNIST_DIR)
    if not root.is_dir():
        raise DataError(f"Fashion-MNIST folder {root} does not exist; {INSTALL_HINT}")
    out = []
    for prefix in ("train", "t10k"):
        img_path = _find(root, f"{prefix}-images-idx3-ubyte")
        lbl_path = _find(root, f"{prefix}-labels-idx1-ubyte")
        images, labels = read_idx(img_path), read_idx(lbl_path)
        if images.ndim != 3:
            raise DataError(f"{img_path}: expected a 3-d idx (N, H, W), got shape {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(f"{lbl_path}: {labels.shape} labels do not match {len(images)} images in {img_path}")
        if labels.max(initial=0) >= 10:
            raise DataError(f"{lbl_path}: label {labels.max()} out of range 0..9")
        out.append(Dataset(images[:, None].copy(), labels.astype(np.int64), list(FASHION_MNIST_CLASSES)))
    return out[0], out[1]


# ---------------------------------------------------------------- CIFAR-10 (python pickles)

def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path} not found; expected the CIFAR-10 python layout "
                        "(data_batch_1..5, test_batch, batches.meta) in one folder")
    try:
        with path.open("rb") as f:
            d = pickle.load(f, encoding="bytes")
    except Exception as e:  # pickle raises many types on garbage
        raise DataError(f"{path}: not a readable CIFAR-10 pickle ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a dict pickle, got {type(d).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    if "data" not in d or "labels" not in d:
        raise DataError(f"{path}: missing 'data' or 'labels' key; not a CIFAR-10 batch file")
    data = np.asarray(d["data"], dtype=np.uint8)
    labels = np.asarray(d["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' has shape {data.shape}, expected (N, 3072)")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(labels)} labels for {len(data)} images")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(root: Path) -> tuple[Dataset, Dataset]:
    """Return (train, test) CIFAR-10 as (N, 3, 32, 32) uint8 from the python-pickle folder."""
    root = Path(root)
    meta = _unpickle(root / "batches.meta")
    names = meta.get("label_names")
    if not names:
        raise DataError(f"{root / 'batches.meta'}: missing 'label_names'")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    parts = [_cifar_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = _cifar_batch(root / "test_batch")
    train = Dataset(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), classes)
    return train, Dataset(test_x, test_y, classes)


# ---------------------------------------------------------------- image folder

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


def load_image_folder(root: Path, test_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """One sub-folder per class. All images must share one size; grayscale stays 1 channel."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root}: no class sub-folders; expected ROOT/CLASS_NAME/IMAGE.png")
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as im:
                    arr = np.asarray(im.convert("L" if im.mode in ("L", "1", "P", "I;16") else "RGB"))
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"{path}: cannot decode image ({e}); delete or replace it") from None
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            if images and arr.shape != images[0].shape:
                raise DataError(f"{path}: shape {arr.shape} differs from {images[0].shape}; resize all images alike")
            images.append(arr)
            labels.append(label)
    if not images:
        raise DataError(f"{root}: no images with suffix {sorted(IMAGE_SUFFIXES)}")
    ds = Dataset(np.stack(images).astype(np.uint8), np.asarray(labels, np.int64), classes)
    order = np.random.default_rng(seed).permutation(len(ds))
    n_test = int(round(len(ds) * test_fraction))
    return ds.subset(np.sort(order[n_test:])), ds.subset(np.sort(order[:n_test]))


# ---------------------------------------------------------------- splits

def split_train_val(train: Dataset, val_fraction: float = 0.1, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Deterministic split. The validation part is held out for calibration and the exit profile."""
    order = np.random.default_rng(seed).permutation(len(train))
    n_val = int(round(len(train) * val_fraction))
    return train.subset(np.sort(order[n_val:])), train.subset(np.sort(order[:n_val]))


def upscale(ds: Dataset, size: int, channels: int) -> Dataset:
    """Nearest-neighbour upscale to size×size and channel repeat (the 'camera' scenario)."""
    n, c, h, w = ds.images.shape
    rows = (np.arange(size) * h // size)
    cols = (np.arange(size) * w // size)
    big = ds.images[:, :, rows][:, :, :, cols]
    if channels != c:
        big = np.repeat(big[:, :1], channels, axis=1)
    return Dataset(np.ascontiguousarray(big), ds.labels, ds.classes)


def load(name: str, data_dir: Path | None = None, val_fraction: float = 0.1, seed: int = 0,
         image_size: int | None = None, channels: int | None = None) -> Splits:
    """Load a dataset by name and split off the validation part."""
    if name == "fashion-mnist":
        train, test = load_fashion_mnist(data_dir)
    elif name == "cifar10":
        if data_dir is None:
            raise DataError("cifar10 needs --data-dir pointing at the cifar-10-batches-py folder")
        train, test = load_cifar10(data_dir)
    elif name == "folder":
        if data_dir is None:
            raise DataError("folder needs --data-dir pointing at ROOT/CLASS_NAME/IMAGE files")
        train, test = load_image_folder(data_dir, seed=seed)
    else:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if image_size is not None:
        c = channels or train.shape[0]
        train, test = upscale(train, image_size, c), upscale(test, image_size, c)
    train, val = split_train_val(train, val_fraction, seed)
    return Splits(train, val, test)


def load_test_split(pkg, data_dir: Path | None = None) -> Dataset:
    """The test split of the dataset a model package was trained on (its manifest's training config), as the
    source streams it. ``pkg`` is a :class:`mdiexit.package.Package` (only its ``manifest`` is read)."""
    cfg = pkg.manifest.get("training", {}).get("config", {})
    return load(cfg.get("dataset", "fashion-mnist"), data_dir, cfg.get("val_fraction", 0.1), cfg.get("seed", 0),
                cfg.get("image_size"), cfg.get("channels")).test
