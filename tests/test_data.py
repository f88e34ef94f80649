"""Data loaders: built-in sets, and MNIST / CIFAR-10 / npz readers on small files in the real formats."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from polyact import data


def test_digits_is_scaled_split_and_stratified(digits):
    assert digits.x_train.shape == (1437, 1, 8, 8) and digits.x_test.shape == (360, 1, 8, 8)
    assert digits.x_train.min() >= 0 and digits.x_train.max() <= 1
    np.testing.assert_allclose(np.bincount(digits.y_test.numpy()) / 360, np.bincount(load_digits().target) / 1797, atol=0.01)
    assert digits.num_classes == 10 and digits.input_shape == (1, 8, 8)


def test_breast_cancer_is_standardised_on_the_training_split():
    bc = data.breast_cancer()
    assert bc.x_train.shape[1] == 30 and bc.num_classes == 2
    np.testing.assert_allclose(bc.x_train.mean(0).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(bc.x_train.std(0).numpy(), 1, atol=1e-3)


def write_idx(path, array, compress=False):
    codes = {np.uint8: 0x08}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as fh:
        fh.write(header + array.tobytes())


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_reader_reads_the_idx_format(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8) for s, n in (("train", 6), ("t10k", 3))}
    labels = {s: rng.integers(0, 10, size=len(images[s]), dtype=np.uint8) for s in images}
    suffix = ".gz" if compress else ""
    for s in images:
        write_idx(tmp_path / f"{s}-images-idx3-ubyte{suffix}", images[s], compress)
        write_idx(tmp_path / f"{s}-labels-idx1-ubyte{suffix}", labels[s], compress)
    ds = data.load_dataset(f"mnist:{tmp_path}")
    assert ds.x_train.shape == (6, 1, 28, 28) and ds.x_test.shape == (3, 1, 28, 28)
    np.testing.assert_allclose(ds.x_train[:, 0].numpy() * 255, images["train"], atol=1e-4)
    np.testing.assert_array_equal(ds.y_test.numpy(), labels["t10k"])


def test_idx_reader_rejects_other_files(tmp_path):
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(bad)
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((1, 2, 2), np.uint8))
        write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(1, np.uint8))
        data.mnist(tmp_path)


def test_cifar10_binary_and_python_formats(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1], dtype=np.uint8)
    binary = tmp_path / "bin"
    binary.mkdir()
    records = np.concatenate([labels[:, None], pixels.reshape(4, -1)], axis=1)
    records[:3].tofile(binary / "data_batch_1.bin")
    records[3:].tofile(binary / "test_batch.bin")
    ds = data.load_dataset(f"cifar10:{binary}")
    assert ds.x_train.shape == (3, 3, 32, 32)
    np.testing.assert_allclose(ds.x_train.numpy() * 255, pixels[:3], atol=1e-3)
    np.testing.assert_array_equal(ds.y_test.numpy(), [1])
    python = tmp_path / "py"
    python.mkdir()
    for name, sl in (("data_batch_1", slice(0, 3)), ("test_batch", slice(3, 4))):
        with open(python / name, "wb") as fh:
            pickle.dump({b"data": pixels[sl].reshape(-1, 3072), b"labels": labels[sl].tolist()}, fh)
    ds2 = data.cifar10(python)
    assert torch.equal(ds.x_train, ds2.x_train) and torch.equal(ds.y_train, ds2.y_train)


def test_npz_round_trip_and_spec_errors(tmp_path, digits):
    path = tmp_path / "digits.npz"
    digits.save_npz(path)
    again = data.load_dataset(str(path))
    assert torch.equal(again.x_test, digits.x_test) and torch.equal(again.y_train, digits.y_train)
    np.savez(tmp_path / "partial.npz", x_train=np.zeros(3))
    with pytest.raises(ValueError, match="lacks arrays"):
        data.load_npz(tmp_path / "partial.npz")
    with pytest.raises(ValueError, match="unknown data set"):
        data.load_dataset("imagenet")


def _write_images(folder, images, labels, mode):
    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels)):
        (folder / f"class_{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode).save(folder / f"class_{label}" / f"{i}.png")


def test_image_folder_reads_class_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(20, 6, 6), dtype=np.uint8)
    labels = np.arange(20) % 2
    _write_images(tmp_path / "gray", gray, labels, "L")
    ds = data.load_dataset(f"images:{tmp_path / 'gray'}")
    assert ds.input_shape == (1, 6, 6) and len(ds.x_train) + len(ds.x_test) == 20 and ds.num_classes == 2
    x = torch.cat([ds.x_train, ds.x_test]).reshape(20, -1)
    got = {np.round(row * 255).astype(np.uint8).tobytes() for row in x.numpy()}
    assert got == {g.tobytes() for g in gray}  # every image, every pixel

    rgb = rng.integers(0, 256, size=(8, 5, 5, 3), dtype=np.uint8)
    _write_images(tmp_path / "split" / "train", rgb[:6], labels[:6], "RGB")
    _write_images(tmp_path / "split" / "test", rgb[6:], labels[6:], "RGB")
    split = data.image_folder(tmp_path / "split")
    assert split.input_shape == (3, 5, 5) and len(split.x_test) == 2
    np.testing.assert_allclose(split.x_test[0].numpy(), rgb[6].transpose(2, 0, 1) / 255.0, rtol=1e-6)
    assert split.y_test.tolist() == [0, 1]

    (tmp_path / "empty" / "only").mkdir(parents=True)
    with pytest.raises(ValueError, match="at least two class subfolders"):
        data.image_folder(tmp_path / "empty")


def _ridge_accuracy(ds):
    from sklearn.linear_model import RidgeClassifier

    flat = lambda x: x.reshape(len(x), -1).numpy()  # noqa: E731
    return RidgeClassifier().fit(flat(ds.x_train), ds.y_train.numpy()).score(flat(ds.x_test), ds.y_test.numpy())


@pytest.mark.slow  # renders digits32 seven times (4 copies once): seconds
def test_digits32_is_deterministic_colour_32x32_and_split_before_rendering():
    a, b = data.digits32(copies=1), data.load_dataset("digits32")
    assert a.x_train.shape == (1437, 3, 32, 32) and a.x_test.shape == (360, 3, 32, 32)
    assert b.x_train.shape == (4 * 1437, 3, 32, 32) and b.name == "digits32"
    assert a.x_train.min() >= 0 and a.x_train.max() <= 1 and a.x_train.dtype == torch.float32
    again = data.digits32(copies=1)
    assert torch.equal(a.x_train, again.x_train) and torch.equal(a.y_test, again.y_test)
    other = data.digits32(copies=1, seed=1)
    assert not torch.allclose(a.x_train, other.x_train)
    # the labels are the plain digits split's, so no digit is in both splits
    np.testing.assert_array_equal(a.y_test.numpy(), data.digits().y_test.numpy())
    np.testing.assert_array_equal(np.repeat(a.y_train.numpy(), 4), b.y_train.numpy())
    # colours differ per image: channel means are not all equal
    assert a.x_train.mean(dim=(2, 3)).std(0).min() > 0.1


def test_digits32_is_much_harder_than_digits_for_a_plain_linear_model():
    easy, hard = _ridge_accuracy(data.digits()), _ridge_accuracy(data.digits32(copies=1))
    assert easy > 0.9
    assert hard < 0.5  # random colour, scale and shift defeat a linear read-out of the pixels
