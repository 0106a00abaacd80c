"""Benchmark datasets: the one-class protocol, the idx reader and the demo group."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from noisyad.bench.data import (
    DatasetUnavailableError,
    check_available,
    demo_group,
    one_class_group,
    read_idx,
)
from noisyad.bench.quality import QUICK_DEMO

ALPHAS = (0.0, 0.1, 0.2, 0.4)


def mnist_or_skip() -> None:
    try:
        check_available("mnist")
    except DatasetUnavailableError as exc:
        pytest.skip(str(exc))


def test_read_idx_round_trip(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in images.shape)
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header + images.tobytes()))
    np.testing.assert_array_equal(read_idx(path), images)


def test_read_idx_rejects_other_types(tmp_path):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 0x0D, 1]) + (1).to_bytes(4, "big") + b"\0\0\0\0")
    with pytest.raises(ValueError, match="unsigned-byte"):
        read_idx(path)


def test_unknown_dataset_is_refused():
    with pytest.raises(ValueError, match="unknown benchmark dataset"):
        check_available("imagenet")


def test_one_class_protocol():
    mnist_or_skip()
    group = one_class_group("mnist", 3, seed=1, alphas=ALPHAS, n_train=60, n_test=50)

    normals = set(group.train[0.0].tolist())
    assert len(normals) == 60 and not group.pool_defective[group.train[0.0]].any()
    for alpha in ALPHAS:
        train = group.train[alpha]
        share = group.pool_defective[train].mean()
        assert abs(share - alpha) < 1.5 / len(train)  # rounding of the defective count
        assert normals <= set(train.tolist())  # the normal images never change
    contaminants = [
        set(group.train[a][group.pool_defective[group.train[a]]].tolist()) for a in ALPHAS
    ]
    assert all(a <= b for a, b in zip(contaminants, contaminants[1:], strict=False))  # nested

    assert group.test_images.shape == (100, 64, 64, 3) and group.test_labels.sum() == 50
    assert group.test_masks is None
    assert group.pool.dtype == np.uint8 and group.pool.shape[1:] == (64, 64, 3)
    # Grey images become RGB with three equal channels.
    assert (group.pool[..., 0] == group.pool[..., 2]).all()


def test_one_class_seeds_and_classes_differ():
    mnist_or_skip()
    a = one_class_group("mnist", 3, seed=0, alphas=(0.2,), n_train=30, n_test=10)
    b = one_class_group("mnist", 3, seed=1, alphas=(0.2,), n_train=30, n_test=10)
    again = one_class_group("mnist", 3, seed=0, alphas=(0.2,), n_train=30, n_test=10)
    assert not np.array_equal(a.pool, b.pool)
    np.testing.assert_array_equal(a.pool, again.pool)
    np.testing.assert_array_equal(a.train[0.2], again.train[0.2])


def test_demo_group_shares_images_across_alpha():
    group = demo_group(None, "brick", seed=0, alphas=(0.0, 0.2), **QUICK_DEMO)
    n_normal = QUICK_DEMO["n_train_normal"]
    assert len(group.train[0.0]) == n_normal
    assert len(group.train[0.2]) == n_normal + round(0.2 * n_normal / 0.8)
    # The normal training tiles are byte-identical at every alpha: one pool entry each.
    normal = group.train[0.2][~group.pool_defective[group.train[0.2]]]
    assert set(normal.tolist()) == set(group.train[0.0].tolist())
    assert group.test_masks is not None and group.test_masks[group.test_labels].any()
    assert not group.test_masks[~group.test_labels].any()
