"""Tests of stage 1 (noisyad.purification) on score tables whose answers are known.

Expected values are worked out by hand in the tests. ``purify`` runs against a toy detector
on 1-D embeddings, so that which images are outliers is known exactly.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from noisyad.detectors.base import Detector, ScoreResult
from noisyad.purification import (
    Aggregation,
    PurificationError,
    aggregate,
    check_settings,
    partition,
    purify,
    select_kept,
)

# ----------------------------------------------------------------------------- partition


@pytest.mark.parametrize(("n", "k"), [(10, 3), (38, 3), (7, 7), (100, 4), (5, 2)])
def test_partition_is_disjoint_and_balanced(n: int, k: int) -> None:
    subsets = partition(n, k, seed=0)

    assert subsets.shape == (n,)
    assert set(subsets.tolist()) == set(range(k))  # every image in exactly one subset
    sizes = np.bincount(subsets, minlength=k)
    assert sizes.sum() == n
    assert sizes.max() - sizes.min() <= 1


def test_partition_is_deterministic_per_seed_and_differs_between_seeds() -> None:
    first = partition(30, 3, seed=7)

    np.testing.assert_array_equal(first, partition(30, 3, seed=7))
    assert not np.array_equal(first, partition(30, 3, seed=8))


def test_partition_refuses_more_subsets_than_images() -> None:
    with pytest.raises(PurificationError, match="4 images into 5"):
        partition(4, 5, seed=0)


# ----------------------------------------------------------------------------- aggregate

# Three sub-models (rows) scoring four images (columns); image i was in subset SUBSETS[i].
TABLE = np.array(
    [
        [1.0, 2.0, 3.0, 4.0],
        [2.0, 2.0, 0.0, 8.0],
        [3.0, 5.0, 6.0, 0.0],
    ]
)
SUBSETS = np.array([0, 1, 2, 0])

# By hand, per column:
#   mean       (1+2+3)/3 = 2,  (2+2+5)/3 = 3,  (3+0+6)/3 = 3,  (4+8+0)/3 = 4
#   max        3, 5, 6, 8
#   variance   (population) 2/3, 2, 6, 32/3
#   max_var    3*2/3 = 2,  5*2 = 10,  6*6 = 36,  8*32/3 = 256/3
#   cross_mean leave out the own sub-model's row:
#              col 0 own row 0: (2+3)/2 = 2.5;  col 1 own row 1: (2+5)/2 = 3.5;
#              col 2 own row 2: (3+0)/2 = 1.5;  col 3 own row 0: (8+0)/2 = 4
EXPECTED = {
    "mean": [2.0, 3.0, 3.0, 4.0],
    "max": [3.0, 5.0, 6.0, 8.0],
    "max_var": [2.0, 10.0, 36.0, 256.0 / 3.0],
    "cross_mean": [2.5, 3.5, 1.5, 4.0],
}


@pytest.mark.parametrize("method", list(EXPECTED))
def test_aggregate_matches_hand_computed_values(method: str) -> None:
    result = aggregate(TABLE, SUBSETS, method)

    assert result.dtype == np.float64
    np.testing.assert_allclose(result, EXPECTED[method], rtol=1e-12)


def test_aggregate_accepts_the_enum_and_rejects_unknown_methods() -> None:
    np.testing.assert_allclose(aggregate(TABLE, SUBSETS, Aggregation.max), EXPECTED["max"])
    with pytest.raises(ValueError, match="median"):
        aggregate(TABLE, SUBSETS, "median")


def test_cross_mean_ignores_the_own_sub_model_entirely() -> None:
    """Changing the score an image gets from its own sub-model must not move cross_mean."""
    changed = TABLE.copy()
    changed[SUBSETS, np.arange(4)] = 1000.0

    np.testing.assert_allclose(aggregate(changed, SUBSETS, "cross_mean"), EXPECTED["cross_mean"])
    assert not np.allclose(aggregate(changed, SUBSETS, "mean"), EXPECTED["mean"])


# ----------------------------------------------------------------------------- select_kept


@pytest.mark.parametrize(
    ("n", "keep_fraction"),
    [(10, 0.8), (10, 0.7), (38, 0.8), (7, 0.5), (3, 0.2), (20, 0.35), (9, 1.0), (100, 0.01)],
)
def test_select_kept_keeps_ceil_of_fraction_lowest(n: int, keep_fraction: float) -> None:
    scores = np.random.default_rng(n).permutation(n).astype(float)  # distinct scores
    expected_count = math.ceil(Fraction(str(keep_fraction)) * n)  # exact decimal arithmetic

    kept = select_kept(scores, keep_fraction)

    assert kept.dtype == bool
    assert kept.sum() == expected_count
    np.testing.assert_array_equal(kept, scores < expected_count)  # ranks 0..count-1


def test_select_kept_breaks_ties_by_image_order() -> None:
    # 7 images, ceil(0.5 * 7) = 4 kept: image 1 (0.0), then the first three of the
    # images tied at 1.0 (0, 2, 3); image 5 is tied with them but comes later.
    scores = np.array([1.0, 0.0, 1.0, 1.0, 5.0, 1.0, 2.0])

    kept = select_kept(scores, 0.5)

    np.testing.assert_array_equal(np.flatnonzero(kept), [0, 1, 2, 3])


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("n_images", "k", "keep_fraction", "field_name"),
    [
        (30, 1, 0.8, "subsets (K) = 1"),
        (30, 0, 0.8, "subsets (K) = 0"),
        (30, 3, 0.0, "keep fraction = 0.0"),
        (30, 3, 1.5, "keep fraction = 1.5"),
        (30, 3, -0.2, "keep fraction = -0.2"),
        (5, 3, 0.8, "subsets (K) = 3 is too many for 5"),
        (30, 16, 0.8, "subsets (K) = 16 is too many for 30"),
    ],
)
def test_check_settings_rejects_and_names_the_field(
    n_images: int, k: int, keep_fraction: float, field_name: str
) -> None:
    with pytest.raises(PurificationError) as info:
        check_settings(n_images, k, keep_fraction)

    assert field_name in str(info.value)


@pytest.mark.parametrize(("n_images", "k", "keep_fraction"), [(6, 3, 1.0), (30, 15, 0.01)])
def test_check_settings_accepts_workable_settings(
    n_images: int, k: int, keep_fraction: float
) -> None:
    check_settings(n_images, k, keep_fraction)  # no exception


# ----------------------------------------------------------------------------- purify


class MeanDistanceDetector(Detector):
    """A toy detector: an image is one number; its score is the distance to the fit mean."""

    family = "toy"

    def __init__(self, spawned: list[MeanDistanceDetector] | None = None) -> None:
        self.spawned = [] if spawned is None else spawned
        self.center: float | None = None
        self.n_fit = 0
        self._threshold: float | None = None

    @property
    def input_size(self) -> int:
        return 1

    @property
    def threshold(self) -> float | None:
        return self._threshold

    def embed(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(images, dtype=np.float64).reshape(len(images), 1)

    def spawn(self) -> MeanDistanceDetector:
        child = MeanDistanceDetector(self.spawned)
        self.spawned.append(child)
        return child

    def fit(self, embeddings: np.ndarray) -> None:
        self.center = float(embeddings[:, 0].mean())
        self.n_fit = len(embeddings)

    def score(self, embeddings: np.ndarray) -> ScoreResult:
        scores = np.abs(embeddings[:, 0] - self.center).astype(np.float32)
        return ScoreResult(scores.reshape(-1, 1, 1), scores)

    def calibration_scores(self) -> np.ndarray:
        raise NotImplementedError

    def set_threshold(self, threshold: float) -> None:
        self._threshold = threshold

    def inference_module(self) -> nn.Module:
        raise NotImplementedError

    def save(self, directory: str | Path) -> None:
        raise NotImplementedError


def planted_embeddings(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """27 normal values near 0 and 3 diverse outliers; returns (embeddings, outlier mask)."""
    rng = np.random.default_rng(seed)
    values = rng.normal(0.0, 0.1, 30)
    outliers = np.array([4, 17, 25])
    values[outliers] = [5.0, -7.0, 11.0]
    is_outlier = np.zeros(30, dtype=bool)
    is_outlier[outliers] = True
    return values.reshape(30, 1), is_outlier


@pytest.mark.parametrize("method", ["mean", "max", "cross_mean"])
def test_purify_removes_the_planted_outliers(method: str) -> None:
    embeddings, is_outlier = planted_embeddings()
    detector = MeanDistanceDetector()

    result = purify(detector, embeddings, k=3, keep_fraction=0.9, method=method, seed=1)

    assert result.kept.sum() == 27
    np.testing.assert_array_equal(result.kept, ~is_outlier)
    assert result.method == method
    assert result.cut == pytest.approx(result.aggregated[result.kept].max())


def test_purify_fits_one_sub_model_per_subset_and_scores_every_image() -> None:
    embeddings, _ = planted_embeddings()
    detector = MeanDistanceDetector()

    result = purify(detector, embeddings, k=3, keep_fraction=0.9, seed=1)

    np.testing.assert_array_equal(result.subsets, partition(30, 3, seed=1))
    assert len(detector.spawned) == 3
    assert [sub.n_fit for sub in detector.spawned] == [10, 10, 10]
    assert result.score_table.shape == (3, 30)
    for k, sub in enumerate(detector.spawned):
        center = embeddings[result.subsets == k, 0].mean()
        assert sub.center == pytest.approx(center)
        np.testing.assert_allclose(
            result.score_table[k], np.abs(embeddings[:, 0] - center), rtol=1e-6
        )
    np.testing.assert_allclose(
        result.aggregated, aggregate(result.score_table, result.subsets, "cross_mean")
    )


def test_purify_checks_settings_before_fitting_anything() -> None:
    embeddings, _ = planted_embeddings()
    detector = MeanDistanceDetector()

    with pytest.raises(PurificationError, match="subsets"):
        purify(detector, embeddings, k=20, keep_fraction=0.9)

    assert detector.spawned == []
