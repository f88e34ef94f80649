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


class _RunsCode:
    """Pickles as a call of ``os.system``: what a crafted CIFAR-10 batch can hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["whole", "labels", "data"])
def test_a_crafted_cifar_batch_runs_no_code(tmp_path, where):
    # planted: pickle.load instead of the restricted unpickler -> the marker file appears
    marker = tmp_path / "pwned"
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}
    crafted = _RunsCode(marker) if where == "whole" else {**batch, where.encode(): _RunsCode(marker)}
    for name in ("data_batch_1", "test_batch"):
        with open(tmp_path / name, "wb") as fh:
            pickle.dump(crafted, fh, protocol=2)
    with pytest.raises(ValueError, match=r"data_batch_1.*posix.system|data_batch_1.*os.system"):
        data.cifar10(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_of_every_pickle_protocol_read(tmp_path, protocol):
    # planted: only numpy.core's _reconstruct allowed -> protocol 5 (numpy's _frombuffer) is refused
    pixels = np.arange(2 * 3072, dtype=np.uint64).astype(np.uint8).reshape(2, 3072)
    for name in ("data_batch_1", "test_batch"):
        with open(tmp_path / name, "wb") as fh:
            pickle.dump({b"data": pixels, b"labels": [7, 2], b"filenames": [b"a.png", b"b.png"]}, fh, protocol=protocol)
    ds = data.cifar10(tmp_path)
    np.testing.assert_array_equal(ds.x_train.numpy().reshape(2, 3072) * 255, pixels.astype(np.float32))
    np.testing.assert_array_equal(ds.y_test.numpy(), [7, 2])


@pytest.mark.parametrize("batch, field", [({b"data": np.zeros((1, 5), np.uint8), b"labels": [0]}, "b'data'"),
                                          ({b"data": np.zeros((1, 3072), np.float32), b"labels": [0]}, "b'data'"),
                                          ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "b'labels'"),
                                          ({b"data": np.zeros((1, 3072), np.uint8), b"labels": ["x"]}, "b'labels'"),
                                          ({b"labels": [0]}, "b'data'"), ([1, 2], "dict")])
def test_malformed_cifar_batches_name_the_field(tmp_path, batch, field):
    # planted: the field checks removed -> a reshape ValueError without the file, or wrong labels accepted
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as fh:
        pickle.dump(batch, fh)
    with pytest.raises(ValueError, match=f"data_batch_1.*{field}" if field != "dict" else "data_batch_1.*a dict"):
        data.read_cifar_batch(path)


def test_npz_sizes_are_checked_before_allocation(tmp_path):
    # planted: np.load -> a 2^48-byte array is allocated (MemoryError) from a 300-byte file
    import io
    import zipfile

    path = tmp_path / "bomb.npz"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in ("x_train", "y_train", "x_test", "y_test"):
            member = io.BytesIO()
            np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False, "shape": (1 << 45,)})
            archive.writestr(f"{name}.npy", member.getvalue() + bytes(32))
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match=r"bomb.npz: array 'x_train' declares shape \(35184372088832,\)"):
        data.load_npz(path)
    path.write_bytes(b"PK\x03\x04" + bytes(40))
    with pytest.raises(ValueError, match="bomb.npz is not a readable .npz"):
        data.load_npz(path)


def test_a_truncated_idx_header_names_the_file(tmp_path):
    # planted: no length check -> struct.error
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + bytes(5))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte is truncated"):
        data.read_idx(path)
