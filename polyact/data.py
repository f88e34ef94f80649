"""Data sets: scikit-learn's bundled ones (offline), ``digits32`` (a harder 3x32x32 task
generated from them), and readers for MNIST, Fashion-MNIST and CIFAR-10 in their original
formats from a local folder.

Every loader returns a :class:`Dataset` of float32 tensors: images as ``(N, C, H, W)`` scaled to
[0, 1] (or standardised features for tabular data) and int64 labels.
"""
from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class Dataset:
    """Train/test tensors of one data set."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    def calibration(self, size: int = 2048, seed: int = 0) -> torch.Tensor:
        """A random subset of the training inputs for calibrating activation ranges."""
        generator = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self.x_train), generator=generator)[:size]
        return self.x_train[idx]

    def save_npz(self, path: str | Path) -> None:
        """Write ``x_train, y_train, x_test, y_test`` to an ``.npz`` file (see :func:`load_npz`)."""
        np.savez_compressed(path, x_train=self.x_train.numpy(), y_train=self.y_train.numpy(),
                            x_test=self.x_test.numpy(), y_test=self.y_test.numpy())


def _split(name: str, x: np.ndarray, y: np.ndarray, test_size: float, seed: int) -> Dataset:
    from sklearn.model_selection import train_test_split  # scikit-learn takes a second to import: only when used

    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    as_x = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    as_y = lambda a: torch.tensor(a, dtype=torch.int64)  # noqa: E731
    return Dataset(name, as_x(x_tr), as_y(y_tr), as_x(x_te), as_y(y_te))


def digits(test_size: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), pixels scaled to [0, 1],
    as ``(N, 1, 8, 8)``; a stratified split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).reshape(-1, 1, 8, 8)
    return _split("digits", x, bunch.target, test_size, seed)


def _render_digits32(glyphs: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Place each 8x8 glyph (values in [0, 1]) on a 32x32 colour canvas: random scale and shift
    (bilinear resampling), random foreground and background colours, a smooth random background
    texture and pixel noise. Returns ``(N, 3, 32, 32)`` in [0, 1]."""
    import torch.nn.functional as F

    n = len(glyphs)
    size = rng.uniform(12.0, 28.0, n)  # glyph side in pixels
    room = np.maximum(32.0 - size, 0.0) / 32.0  # how far the centre may move (normalised units)
    centre = rng.uniform(-1.0, 1.0, (n, 2)) * room[:, None]
    scale = 32.0 / size  # output-to-glyph coordinate ratio
    theta = np.zeros((n, 2, 3))
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = -centre * scale[:, None]
    grid = F.affine_grid(torch.tensor(theta, dtype=torch.float32), [n, 1, 32, 32], align_corners=False)
    mask = F.grid_sample(torch.tensor(glyphs[:, None], dtype=torch.float32), grid, align_corners=False).numpy()
    foreground = rng.uniform(0.0, 1.0, (n, 3, 1, 1))
    background = rng.uniform(0.0, 1.0, (n, 3, 1, 1))
    faint = np.abs(foreground - background).mean(axis=1, keepdims=True) < 0.25
    foreground = np.where(faint, 1.0 - background, foreground)  # keep every digit visible
    texture = F.interpolate(torch.tensor(rng.uniform(-1.0, 1.0, (n, 3, 4, 4)), dtype=torch.float32),
                            size=(32, 32), mode="bilinear", align_corners=False).numpy()
    canvas = background + 0.3 * texture
    image = canvas * (1.0 - mask) + foreground * mask + noise * rng.standard_normal((n, 3, 32, 32))
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def digits32(copies: int = 4, noise: float = 0.12, test_size: float = 0.2, seed: int = 0) -> Dataset:
    """A harder, offline image task: scikit-learn's digits rendered as ``(N, 3, 32, 32)`` colour
    images with random scale (12-28 px), shift, foreground/background colour, a smooth
    background texture and Gaussian pixel noise (std ``noise``). The 1,797 digits are split
    first (stratified), then each is rendered ``copies`` times, so no digit is in both splits.
    Deterministic: the same arguments give the same tensors."""
    if copies < 1:
        raise ValueError(f"digits32 needs copies >= 1 renderings per digit, got {copies}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(bunch.images / 16.0, bunch.target, test_size=test_size,
                                              random_state=seed, stratify=bunch.target)
    rng = np.random.default_rng(seed)
    parts = []
    for glyphs, labels in ((x_tr, y_tr), (x_te, y_te)):
        glyphs, labels = np.repeat(glyphs, copies, axis=0), np.repeat(labels, copies)
        parts += [torch.tensor(_render_digits32(glyphs, rng, noise)), torch.tensor(labels, dtype=torch.int64)]
    return Dataset("digits32", *parts)


def breast_cancer(test_size: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's Wisconsin breast cancer set (569 x 30 features, 2 classes), features
    standardised with the training split's mean and standard deviation."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    data = _split("breast_cancer", bunch.data, bunch.target, test_size, seed)
    mean, std = data.x_train.mean(0), data.x_train.std(0).clamp_min(1e-12)
    data.x_train = (data.x_train - mean) / std
    data.x_test = (data.x_test - mean) / std
    return data


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format: big-endian magic ``0x00 0x00 dtype ndim``, the
    dimensions as uint32, then the data), optionally gzip-compressed."""
    path = Path(path)
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    with _open(path) as fh:
        header = fh.read(4)
        if len(header) != 4 or header[:2] != b"\x00\x00" or header[2] not in dtypes:
            raise ValueError(f"{path} is not an IDX file (bad magic number {header!r})")
        ndim = header[3]
        dims = fh.read(4 * ndim)
        if len(dims) != 4 * ndim:
            raise ValueError(f"{path} is truncated: its header announces {ndim} dimensions, the file ends first")
        shape = struct.unpack(f">{ndim}I", dims)
        data = np.frombuffer(fh.read(), dtype=dtypes[header[2]])
    if data.size != math.prod(shape):
        raise ValueError(f"{path}: header says shape {shape} but the file holds {data.size} values")
    return data.reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(f"{folder} has no {stem}[.gz]; expected the original MNIST file names")


def mnist(folder: str | Path, name: str = "mnist") -> Dataset:
    """MNIST or Fashion-MNIST (same format) from ``folder`` holding ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``
    (optionally ``.gz``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder with {name} files")
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{folder}: {prefix} images {images.shape} and labels {labels.shape} do not match")
        parts[split] = (
            torch.tensor(images[:, None].astype(np.float32) / 255.0),
            torch.tensor(labels.astype(np.int64)),
        )
    return Dataset(name, *parts["train"], *parts["test"])


try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer


def _latin1(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as pickle protocol 2 uses it for bytes (``latin1`` only)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"it encodes bytes with {encoding!r}, not latin1")
    return text.encode("latin1")


class _CifarUnpickler(pickle.Unpickler):
    """Reads CIFAR-10's Python batches without running code: the only globals it resolves are
    numpy's array reconstructors, ``ndarray``, ``dtype`` and protocol 2's latin-1 bytes; anything
    else a file names (a function to call, a class to build) is refused before it is looked up."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _reconstruct, ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
               ("numpy.core.numeric", "_frombuffer"): _frombuffer, ("numpy._core.numeric", "_frombuffer"): _frombuffer,
               ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR-10 batch never holds")
        return self.ALLOWED[module, name]


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(n, 3, 32, 32)`` uint8 and labels of one pickled CIFAR-10 batch, read with a
    restricted unpickler (dicts, lists, bytes, strings, numbers and plain numpy arrays only:
    nothing in the file can run code)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            batch = _CifarUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, RecursionError, struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a CIFAR-10 Python batch ({type(exc).__name__}: {exc}); use the original "
                         "files from the CIFAR-10 site, or the binary version (data_batch_*.bin)") from exc
    if not isinstance(batch, dict) or not {b"data", b"labels"} <= set(batch):
        found = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{path}: a CIFAR-10 batch is a dict with b'data' and b'labels', found {found}")
    data, labels = batch[b"data"], batch[b"labels"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        raise ValueError(f"{path}: field b'data' must be a uint8 array of shape (n, 3072), got "
                         f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
    if not (isinstance(labels, list) and len(labels) == len(data) and all(type(v) is int and 0 <= v < 256 for v in labels)):
        raise ValueError(f"{path}: field b'labels' must be a list of {len(data)} class numbers")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def cifar10(folder: str | Path) -> Dataset:
    """CIFAR-10 from ``folder``: the binary version (``data_batch_1.bin`` .. ``_5.bin``,
    ``test_batch.bin``; records of 1 label byte + 3072 pixel bytes) or the Python version
    (pickled ``data_batch_1`` .. ``_5``, ``test_batch``, read by :func:`read_cifar_batch`, which
    runs no code from the files)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder with CIFAR-10 batches")

    def binary(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        raw = np.concatenate([np.fromfile(p, dtype=np.uint8) for p in paths])
        if raw.size % 3073:
            raise ValueError(f"{folder}: CIFAR-10 binary batches must hold 3073-byte records")
        records = raw.reshape(-1, 3073)
        return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0]

    def python(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        batches = [read_cifar_batch(p) for p in paths]
        return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])

    train_bin = sorted(folder.glob("data_batch_*.bin"))
    if train_bin:
        train, test = binary(train_bin), binary([folder / "test_batch.bin"])
    else:
        train_py = sorted(p for p in folder.glob("data_batch_*") if p.suffix == "")
        if not train_py:
            raise FileNotFoundError(f"{folder} has no data_batch_* files (binary or Python CIFAR-10)")
        train, test = python(train_py), python([folder / "test_batch"])
    to_x = lambda a: torch.tensor(a.astype(np.float32) / 255.0)  # noqa: E731
    to_y = lambda a: torch.tensor(a.astype(np.int64))  # noqa: E731
    return Dataset("cifar10", to_x(train[0]), to_y(train[1]), to_x(test[0]), to_y(test[1]))


def load_npz(path: str | Path) -> Dataset:
    """A data set saved as ``.npz`` with arrays ``x_train, y_train, x_test, y_test``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    arrays = read_npz(path.read_bytes(), str(path))
    missing = {"x_train", "y_train", "x_test", "y_test"} - set(arrays)
    if missing:
        raise ValueError(f"{path} lacks arrays {sorted(missing)}; save x_train, y_train, x_test, y_test")
    return Dataset(
        path.stem,
        torch.tensor(arrays["x_train"], dtype=torch.float32),
        torch.tensor(arrays["y_train"], dtype=torch.int64),
        torch.tensor(arrays["x_test"], dtype=torch.float32),
        torch.tensor(arrays["y_test"], dtype=torch.int64),
    )


def read_npz(data: bytes, what: str) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` archive held in ``data`` (no pickles), checked before any is
    allocated: every array's declared shape and dtype must match the bytes its zip member holds,
    and no member may declare more bytes than ``64 x len(data)`` (a compressed bomb). Anything
    else raises ``ValueError`` naming ``what`` and the array."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{what} is not a readable .npz archive ({exc}); write it again with numpy.savez") from exc
    arrays = {}
    for member in members:
        name = member.filename.removesuffix(".npy")
        try:
            if member.file_size > 64 * max(len(data), 1 << 20):
                raise ValueError(f"declares {member.file_size} bytes in a {len(data)}-byte file")
            with archive.open(member) as fh:
                readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                version = np.lib.format.read_magic(fh)
                if version not in readers:
                    raise ValueError(f"has .npy format version {version}, not 1.0 or 2.0")
                shape, fortran, dtype = readers[version](fh)
                if dtype.hasobject:
                    raise ValueError("holds Python objects (pickles), which are never loaded")
                body = member.file_size - fh.tell()
                if math.prod(shape) * dtype.itemsize != body:
                    raise ValueError(f"declares shape {shape} of {dtype} ({math.prod(shape) * dtype.itemsize} bytes) "
                                     f"but holds {body} bytes")
                raw = fh.read(body)
            if len(raw) != body:
                raise ValueError(f"is truncated ({len(raw)} of {body} bytes)")
            array = np.frombuffer(raw, dtype=dtype)
            arrays[name] = (array.reshape(shape[::-1]).T if fortran else array.reshape(shape)).copy()
        except (ValueError, TypeError, OverflowError, EOFError, OSError, zipfile.BadZipFile, SyntaxError,
                RecursionError, MemoryError, NotImplementedError, zlib.error) as exc:
            raise ValueError(f"{what}: array {name!r} {exc}; write the file again with numpy.savez") from exc
    return arrays


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"}


def _read_class_folders(folder: Path, classes: list[str], mode: str, size: tuple[int, int] | None):
    from PIL import Image  # Pillow comes with matplotlib

    xs, ys = [], []
    for label, name in enumerate(classes):
        for path in sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            with Image.open(path) as image:
                image = image.convert(mode)
                if size is not None:
                    image = image.resize(size)
                xs.append(np.asarray(image, dtype=np.float32) / 255.0)
            ys.append(label)
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise ValueError(f"{folder}: images have different sizes {sorted(shapes)}; resize them or pass size=(W, H)")
    x = np.stack(xs)
    return (x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)), np.array(ys)


def image_folder(folder: str | Path, *, grayscale: bool | None = None, size: tuple[int, int] | None = None,
                 test_size: float = 0.2, seed: int = 0) -> Dataset:
    """Images in one subfolder per class (``FOLDER/<class>/*.png``), or already split as
    ``FOLDER/train/<class>/`` and ``FOLDER/test/<class>/``. Classes are the sorted subfolder
    names; pixels are scaled to [0, 1]; ``grayscale`` defaults to whether the first image is
    single-channel."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of class subfolders")
    split = (folder / "train").is_dir() and (folder / "test").is_dir()
    root = folder / "train" if split else folder
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images = [p for c in classes for p in (root / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    if len(classes) < 2 or not images:
        raise ValueError(f"{root} needs at least two class subfolders with images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if grayscale is None:
        from PIL import Image

        with Image.open(images[0]) as first:
            grayscale = first.mode in ("1", "L", "I", "F", "LA")
    mode = "L" if grayscale else "RGB"
    if not split:
        x, y = _read_class_folders(folder, classes, mode, size)
        return _split(folder.name, x, y, test_size, seed)
    train, test = (_read_class_folders(folder / s, classes, mode, size) for s in ("train", "test"))
    to_x = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    to_y = lambda a: torch.tensor(a, dtype=torch.int64)  # noqa: E731
    return Dataset(folder.name, to_x(train[0]), to_y(train[1]), to_x(test[0]), to_y(test[1]))


BUILTIN = {"digits": digits, "digits32": digits32, "breast_cancer": breast_cancer}


def load_dataset(spec: str) -> Dataset:
    """Resolve a data set: a built-in name (``digits``, ``digits32``, ``breast_cancer``), an ``.npz`` file, or
    ``mnist:FOLDER``, ``fashion_mnist:FOLDER``, ``cifar10:FOLDER``, ``images:FOLDER`` (one
    subfolder per class, see :func:`image_folder`)."""
    if spec in BUILTIN:
        return BUILTIN[spec]()
    kind, _, folder = spec.partition(":")
    if folder and kind in ("mnist", "fashion_mnist"):
        return mnist(folder, kind)
    if folder and kind == "cifar10":
        return cifar10(folder)
    if folder and kind == "images":
        return image_folder(folder)
    if spec.endswith(".npz"):
        return load_npz(spec)
    raise ValueError(
        f"unknown data set {spec!r}; use digits, digits32, breast_cancer, a .npz file, "
        "mnist:FOLDER, fashion_mnist:FOLDER, cifar10:FOLDER or images:FOLDER"
    )
