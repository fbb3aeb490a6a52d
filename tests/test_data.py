import gzip
import pickle
import struct

import numpy as np
import pytest

from mdiexit.data import (
    DataError,
    Dataset,
    load,
    load_cifar10,
    load_fashion_mnist,
    load_image_folder,
    read_idx,
    split_train_val,
)


def write_idx(path, arr: np.ndarray, gz: bool = False) -> None:
    raw = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def fake_fmnist(root, n=20, gz=True):
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        sfx = ".gz" if gz else ""
        write_idx(root / f"{prefix}-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{sfx}", rng.integers(0, 10, (n,)), gz)


def test_real_fashion_mnist_shapes(fmnist):
    train, test = fmnist
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == np.uint8 and set(np.unique(test.labels)) == set(range(10))


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    fake_fmnist(tmp_path, gz=gz)
    train, test = load_fashion_mnist(tmp_path)
    assert train.images.shape == (20, 1, 28, 28) and len(test) == 20


def test_env_var_points_at_data(tmp_path, monkeypatch):
    fake_fmnist(tmp_path)
    monkeypatch.setenv("MDIEXIT_DATA", str(tmp_path))
    assert len(load_fashion_mnist()[0]) == 20


def test_missing_folder_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nope")


def test_missing_file_named(tmp_path):
    fake_fmnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_fashion_mnist(tmp_path)


@pytest.mark.parametrize("damage, message", [
    (lambda raw: b"\x01\x02" + raw[2:], "bad magic"),
    (lambda raw: raw[:-7], "truncated"),
    (lambda raw: raw[:5], "truncated"),
])
def test_malformed_idx(tmp_path, damage, message):
    fake_fmnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=message) as e:
        load_fashion_mnist(tmp_path)
    assert str(path) in str(e.value)


def test_corrupt_gzip(tmp_path):
    fake_fmnist(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(DataError, match="corrupt gzip"):
        read_idx(path)


def test_label_count_mismatch(tmp_path):
    fake_fmnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(7), gz=True)
    with pytest.raises(DataError, match="labels do not match"):
        load_fashion_mnist(tmp_path)


def fake_cifar(root, n=10):
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with (root / name).open("wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, n).tolist()}, f)
    with (root / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)


def test_cifar10_layout(tmp_path):
    fake_cifar(tmp_path)
    train, test = load_cifar10(tmp_path)
    assert train.images.shape == (50, 3, 32, 32) and test.images.shape == (10, 3, 32, 32)
    assert train.classes[3] == "c3"
    raw = pickle.loads((tmp_path / "test_batch").read_bytes())[b"data"]
    assert np.array_equal(test.images[0].reshape(-1), raw[0])  # channel-major layout kept


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(b"garbage"), "not a readable CIFAR-10 pickle"),
    (lambda p: p.write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]})),
     r"expected \(N, 3072\)"),
    (lambda p: p.write_bytes(pickle.dumps({b"labels": [0]})), "missing 'data'"),
    (lambda p: p.unlink(), "not found"),
])
def test_cifar10_malformed(tmp_path, damage, message):
    fake_cifar(tmp_path)
    damage(tmp_path / "data_batch_3")
    with pytest.raises(DataError, match=message) as e:
        load_cifar10(tmp_path)
    assert "data_batch_3" in str(e.value)


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    train, test = load_image_folder(tmp_path, test_fraction=0.2)
    assert train.classes == ["cat", "dog"] and train.images.shape == (8, 3, 12, 12) and len(test) == 2
    (tmp_path / "dog" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.png"):
        load_image_folder(tmp_path)


def test_split_is_deterministic_and_disjoint(fmnist):
    train = fmnist[0].subset(np.arange(1000))
    train = Dataset(train.images, np.arange(1000), train.classes)  # labels = item ids, to track items
    a_tr, a_val = split_train_val(train, 0.1, seed=0)
    b_tr, b_val = split_train_val(train, 0.1, seed=0)
    assert np.array_equal(a_val.labels, b_val.labels) and len(a_val) == 100 and len(a_tr) == 900
    assert not set(a_val.labels) & set(a_tr.labels)
    assert not np.array_equal(split_train_val(train, 0.1, seed=1)[1].labels, a_val.labels)


def test_upscaled_camera_frames(tmp_path):
    fake_fmnist(tmp_path)
    s = load("fashion-mnist", tmp_path, image_size=56, channels=3)
    assert s.train.images.shape[1:] == (3, 56, 56) and s.test.images.dtype == np.uint8


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset"):
        load("mnist-9000")


def _images(root, sizes, mode="RGB"):
    from PIL import Image

    rng = np.random.default_rng(3)
    root.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        shape = (h, w, 3) if mode == "RGB" else (h, w)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / f"{i:02d}.png")


def test_image_folder_resizes_as_it_decodes(tmp_path):
    from mdiexit.data import image_folder

    _images(tmp_path / "cat", [(40, 30), (64, 64)])
    _images(tmp_path / "dog", [(20, 20)], mode="L")
    ds = image_folder(tmp_path, image_size=16, channels=3)
    assert ds.images.shape == (3, 3, 16, 16) and ds.images.dtype == np.uint8
    assert ds.labels.tolist() == [0, 0, 1] and ds.classes == ["cat", "dog"]
    assert ds.paths == [str(tmp_path / "cat" / "00.png"), str(tmp_path / "cat" / "01.png"),
                        str(tmp_path / "dog" / "00.png")]
    assert image_folder(tmp_path, image_size=8, channels=1).images.shape == (3, 1, 8, 8)
    with pytest.raises(DataError, match="--image-size"):
        image_folder(tmp_path)  # mixed sizes and no size to resize to


def test_flat_folder_is_unlabelled_and_class_names_map_sub_folders(tmp_path):
    from mdiexit.data import image_folder, read_classes

    _images(tmp_path / "flat", [(8, 8)] * 3)
    flat = image_folder(tmp_path / "flat")
    assert flat.labels.tolist() == [-1, -1, -1] and not flat.labelled
    _images(tmp_path / "named" / "dog", [(8, 8)])
    _images(tmp_path / "named" / "ant", [(8, 8)])
    (tmp_path / "classes.txt").write_text("# the model's outputs\nant\nbee\ndog\n\n")
    names = read_classes(tmp_path / "classes.txt")
    ds = image_folder(tmp_path / "named", classes=names)
    assert names == ["ant", "bee", "dog"] and ds.labels.tolist() == [0, 2] and ds.labelled
    with pytest.raises(DataError, match="'dog' is not one of the 2 class names"):
        image_folder(tmp_path / "named", classes=["ant", "bee"])


def test_load_items_streams_a_whole_folder_in_order_at_the_package_input(tmp_path):
    from types import SimpleNamespace

    from mdiexit.data import load_items, parse_items

    _images(tmp_path / "Bag", [(30, 30), (12, 12)])
    _images(tmp_path / "Coat", [(28, 28)])
    pkg = SimpleNamespace(input_shape=(1, 28, 28), manifest={
        "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag"],
        "training": {"config": {"dataset": "fashion-mnist"}}})
    ds = load_items(pkg, "all", tmp_path)
    assert ds.images.shape == (3, 1, 28, 28) and ds.labels.tolist() == [8, 8, 4]
    assert [p.split("/")[-2:] for p in ds.paths] == [["Bag", "00.png"], ["Bag", "01.png"], ["Coat", "00.png"]]
    assert len(load_items(pkg, parse_items("2"), tmp_path)) == 2
    for bad in ("0", "some", "-3"):
        with pytest.raises(DataError, match="--items"):
            parse_items(bad)
