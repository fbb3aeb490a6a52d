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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mdiexit.inputs import IMAGE_SUFFIXES

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


class LazyImages:
    """uint8 NCHW images made when a slice or index array of them is asked for (decoded from files, or upscaled):
    evaluate, export, compress and train read such a dataset batch by batch, so their memory does not grow with
    the number of items. `np.asarray(lazy)` makes them all at once."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, count: int, item_shape: tuple[int, int, int], make: Callable[[np.ndarray], np.ndarray]):
        self.count, self.item_shape, self._make = count, tuple(item_shape), make

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.count, *self.item_shape)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, int | np.integer):
            return self._make(np.arange(self.count)[[key]])[0]
        return self._make(np.arange(self.count)[key])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def take(self, idx: np.ndarray) -> LazyImages:
        """The items `idx`, still lazy."""
        idx = np.asarray(idx, dtype=np.int64)
        return LazyImages(len(idx), self.item_shape, lambda j: self._make(idx[j]))


def batches(images: np.ndarray | LazyImages, batch: int) -> Iterator[np.ndarray]:
    """Consecutive batches of `images` as arrays (a lazy dataset is made one batch at a time)."""
    for i in range(0, len(images), batch):
        yield np.ascontiguousarray(images[i:i + batch])


@dataclass
class Dataset:
    images: np.ndarray | LazyImages  # uint8, (N, C, H, W); lazy: made batch by batch (see LazyImages)
    labels: np.ndarray  # int64, (N,); -1: unlabelled
    classes: list[str]
    paths: list[str] | None = None  # the file behind each item (image folders)

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

    def subset(self, idx) -> Dataset:
        idx = np.asarray(idx, dtype=np.int64)
        paths = None if self.paths is None else [self.paths[i] for i in idx]
        images = self.images.take(idx) if isinstance(self.images, LazyImages) else self.images[idx]
        return Dataset(images, self.labels[idx], self.classes, paths)

    @property
    def labelled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())


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



def read_classes(path: Path) -> list[str]:
    """Class names, one a line, in the order of the model's outputs (blank lines and # comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class file {path} not found; give a text file with one class name a line")
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not names:
        raise DataError(f"{path}: no class names; write one class name a line")
    return names


def _folder_files(root: Path, classes: list[str] | None) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, classes) of an image folder, sorted. ROOT/CLASS/IMAGE: labelled by the sub-folder's name
    (its index in `classes` when given, else in the sorted sub-folder names); images directly in ROOT: label -1."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")

    def images_in(d: Path) -> list[Path]:
        return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = list(classes) if classes else [d.name for d in subdirs]
    files, labels = [(p, -1) for p in images_in(root)], []
    for d in subdirs:
        if d.name not in names:
            raise DataError(f"{d}: {d.name!r} is not one of the {len(names)} class names; rename the folder or add "
                            "the name to the class file (--classes)")
        files += [(p, names.index(d.name)) for p in images_in(d)]
    if not files:
        raise DataError(f"{root}: no images with suffix {sorted(IMAGE_SUFFIXES)} in it or in class sub-folders")
    labels = [lab for _, lab in files]
    return [p for p, _ in files], labels, names


def image_folder(root: Path, image_size: int | None = None, channels: int | None = None,
                 classes: list[str] | None = None, lazy: bool = False) -> Dataset:
    """Every image of a folder, in order, resized to image_size x image_size as it is decoded (one uint8 array
    of that size is all that is held). channels: 1 (grey) or 3 (RGB); default: the first image's. lazy: decode
    batch by batch when asked (`LazyImages`), never all at once."""
    root = Path(root)
    files, labels, names = _folder_files(root, classes)
    with _open_image(files[0]) as im:
        w0, h0 = im.size
        c = channels or (1 if im.mode in ("L", "1", "P", "I;16", "I") else 3)
    if c not in (1, 3):
        raise DataError(f"--channels {c}: image folders hold grey (1) or RGB (3) images")
    h, w = (image_size, image_size) if image_size else (h0, w0)

    def decode(idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), c, h, w), dtype=np.uint8)
        for i, j in enumerate(idx):
            out[i] = _decode(files[j], c, (w, h), (w0, h0), resize=image_size is not None)
        return out

    images = LazyImages(len(files), (c, h, w), decode)
    return Dataset(images if lazy else images[:], np.asarray(labels, np.int64), names, [str(p) for p in files])


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: cannot decode image ({e}); delete or replace it") from None


def _decode(path: Path, c: int, size: tuple[int, int], first: tuple[int, int], resize: bool) -> np.ndarray:
    """One image as uint8 CHW of `size` (w, h); a differently sized one is resized, or refused unless `resize`."""
    from PIL import Image

    with _open_image(path) as im:
        try:
            im = im.convert("L" if c == 1 else "RGB")
            if im.size != size:
                if not resize:
                    raise DataError(f"{path}: size {im.size[0]}x{im.size[1]} differs from {first[0]}x{first[1]}; "
                                    "pass --image-size N to resize every image to N x N")
                im = im.resize(size, Image.BILINEAR)
            arr = np.asarray(im)
        except OSError as e:
            raise DataError(f"{path}: cannot decode image ({e}); delete or replace it") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def load_image_folder(root: Path, test_fraction: float = 0.2, seed: int = 0, image_size: int | None = None,
                      channels: int | None = None, classes: list[str] | None = None,
                      lazy: bool = False) -> tuple[Dataset, Dataset]:
    """`image_folder`, split into (train, test) at random (seeded), each in folder order."""
    ds = image_folder(root, image_size, channels, classes, lazy)
    order = np.random.default_rng(seed).permutation(len(ds))
    n_test = int(round(len(ds) * test_fraction))
    return ds.subset(np.sort(order[n_test:])), ds.subset(np.sort(order[:n_test]))


# ---------------------------------------------------------------- splits

def split_train_val(train: Dataset, val_fraction: float = 0.1, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Deterministic split. The validation part is held out for calibration and the exit profile."""
    order = np.random.default_rng(seed).permutation(len(train))
    n_val = int(round(len(train) * val_fraction))
    return train.subset(np.sort(order[n_val:])), train.subset(np.sort(order[:n_val]))


def upscale(ds: Dataset, size: int, channels: int, lazy: bool = False) -> Dataset:
    """Nearest-neighbour upscale to size×size and channel repeat (the 'camera' scenario); lazy: batch by batch."""
    n, c, h, w = ds.images.shape
    rows = (np.arange(size) * h // size)
    cols = (np.arange(size) * w // size)
    small = ds.images

    def make(idx: np.ndarray) -> np.ndarray:
        big = np.asarray(small[idx])[:, :, rows][:, :, :, cols]
        if channels != c:
            big = np.repeat(big[:, :1], channels, axis=1)
        return np.ascontiguousarray(big)

    images = LazyImages(n, (channels, size, size), make)
    return Dataset(images if lazy else images[:], ds.labels, ds.classes)


def load(name: str, data_dir: Path | None = None, val_fraction: float = 0.1, seed: int = 0,
         image_size: int | None = None, channels: int | None = None, classes: list[str] | None = None,
         lazy: bool = False) -> Splits:
    """Load a dataset by name and split off the validation part. `classes`: the model's class names (a folder's
    sub-folders are labelled by their index in it; other datasets keep their labels and take these names).
    lazy: folders are decoded, and upscaled images made, batch by batch when read (`LazyImages`)."""
    if name == "fashion-mnist":
        train, test = load_fashion_mnist(data_dir)
    elif name == "cifar10":
        if data_dir is None:
            raise DataError("cifar10 needs --data-dir pointing at the cifar-10-batches-py folder")
        train, test = load_cifar10(data_dir)
    elif name == "folder":
        if data_dir is None:
            raise DataError("folder needs --data-dir pointing at ROOT/CLASS_NAME/IMAGE files")
        train, test = load_image_folder(data_dir, seed=seed, image_size=image_size, channels=channels, classes=classes,
                                        lazy=lazy)
    else:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if classes and name != "folder":
        if len(classes) < len(train.classes):
            raise DataError(f"{len(classes)} class names for the {len(train.classes)} classes of {name}")
        train, test = (Dataset(d.images, d.labels, list(classes), d.paths) for d in (train, test))
    if image_size is not None and name != "folder":
        c = channels or train.shape[0]
        train, test = upscale(train, image_size, c, lazy), upscale(test, image_size, c, lazy)
    train, val = split_train_val(train, val_fraction, seed)
    return Splits(train, val, test)


def load_test_split(pkg, data_dir: Path | None = None, lazy: bool = False) -> Dataset:
    """The test split of the dataset a model package was trained on (its manifest's training config), as the
    source streams it. ``pkg`` is a :class:`mdiexit.package.Package` (only its ``manifest`` is read)."""
    cfg = pkg.manifest.get("training", {}).get("config", {})
    data_dir = data_dir or (Path(cfg["data_dir"]) if cfg.get("data_dir") else None)
    return load(cfg.get("dataset", "fashion-mnist"), data_dir, cfg.get("val_fraction", 0.1), cfg.get("seed", 0),
                cfg.get("image_size"), cfg.get("channels"), _folder_classes(pkg, cfg), lazy).test


def _folder_classes(pkg, cfg: dict) -> list[str] | None:
    """The class names an image folder is labelled against: the package's, when it was trained with a class file
    or a kept head (--classes, --num-classes); else None (the folder's own sub-folders)."""
    return list(pkg.manifest["classes"]) if cfg.get("classes_file") or cfg.get("num_classes") else None


def parse_items(spec: str) -> str | int:
    """`all`, `test`, a positive count N (the first N items of the folder), or `video:PATH_OR_URL`."""
    if spec in ("all", "test"):
        return spec
    if spec.startswith("video:"):
        if len(spec) == len("video:"):
            raise DataError("--items video:: name the video, e.g. video:cam.mp4, video:rtsp://HOST/stream or "
                            "video:/dev/video0")
        return spec
    try:
        n = int(spec)
    except ValueError:
        n = 0
    if n <= 0:
        raise DataError(f"--items {spec!r}: use all, test or a positive number N")
    return n


def load_items(pkg, items: str | int = "test", data_dir: Path | None = None, lazy: bool = False) -> Dataset:
    """What a run streams. `test`: the test split of the package's dataset. `all`: every item, in order: every
    image of the folder --data-dir (any image folder, resized to the package's input and labelled by sub-folders
    named after the package's classes), or else the test file of fashion-mnist / cifar10. N: the first N."""
    if items == "test":
        return load_test_split(pkg, data_dir, lazy)
    cfg = pkg.manifest.get("training", {}).get("config", {})
    name = cfg.get("dataset", "fashion-mnist")
    data_dir = data_dir or (Path(cfg["data_dir"]) if cfg.get("data_dir") else None)
    c, h, w = pkg.input_shape
    if name == "folder" or (data_dir is not None and _holds_images(Path(data_dir))):
        if data_dir is None:
            raise DataError("--items all|N streams an image folder: give it with --data-dir DIR")
        if h != w:
            raise DataError(f"the package's input is {h}x{w}; image folders are resized to square images only")
        ds = image_folder(Path(data_dir), h, c, list(pkg.manifest["classes"]), lazy)
    elif name == "fashion-mnist":
        ds = load_fashion_mnist(data_dir)[1]
    elif data_dir is None:
        raise DataError("cifar10 needs --data-dir pointing at the cifar-10-batches-py folder")
    else:
        ds = load_cifar10(data_dir)[1]
    if name != "folder" and cfg.get("image_size") and ds.paths is None:
        ds = upscale(ds, cfg["image_size"], cfg.get("channels") or ds.shape[0], lazy)
    if isinstance(items, int):
        ds = ds.subset(np.arange(min(items, len(ds))))
    if ds.shape != (c, h, w):
        raise DataError(f"items are {ds.shape}, the package takes {(c, h, w)}; pass the --data-dir it was trained on")
    return ds


def _holds_images(root: Path) -> bool:
    if not root.is_dir():
        return False
    for p in root.iterdir():
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            return True
        if p.is_dir() and any(q.suffix.lower() in IMAGE_SUFFIXES for q in p.iterdir()):
            return True
    return False
