"""Learning-bias purification of a contaminated training set (stage 1 of two).

Zhang et al., "Leveraging Learning Bias for Noisy Anomaly Detection" (arXiv 2508.07441).
The training set is split into K disjoint seeded subsets and one sub-model is fitted on each.
Because normal images dominate every subset and resemble each other, every sub-model learns
the normal pattern and scores normal images low, while the rare and diverse defects get high
scores from the sub-models that did not see them. Every sub-model scores every training image;
the scores are aggregated per image and the lowest-scoring ``keep_fraction`` of the images is
the purified set, on which stage 2 fits the final detector.

Aggregation methods (over the score table ``S[k, i]`` of sub-model ``k`` on image ``i``):

* ``mean``: the paper's average over all K sub-models;
* ``max``: the largest score;
* ``max_var``: maximum times variance (the paper's third variant);
* ``cross_mean``: the average over the K-1 sub-models *not* fitted on the image's own subset.
  A memory-bank sub-model scores its own images near zero, which dilutes ``mean``.

Example:
    >>> subsets = partition(6, k=3, seed=0)
    >>> table = np.array([[0, 1, 9, 0, 1, 1], [1, 0, 9, 1, 0, 1], [1, 1, 9, 1, 1, 0.]])
    >>> kept = select_kept(aggregate(table, subsets, "mean"), keep_fraction=0.5)
    >>> bool(kept[2])
    False
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np

from noisyad.errors import PurificationError

if TYPE_CHECKING:
    from noisyad.detectors.base import Detector

logger = logging.getLogger(__name__)


class Aggregation(StrEnum):
    """How the K sub-model scores of one image become its aggregated score."""

    mean = "mean"
    max = "max"
    max_var = "max_var"
    cross_mean = "cross_mean"


AUTO = "auto"
AUTO_K = 3.0


def parse_keep_fraction(value: str | float) -> float | str:
    """Read a keep fraction given as a number or as ``"auto"`` (the automatic keep rule).

    Raises:
        PurificationError: Neither a number nor ``"auto"``.
    """
    if isinstance(value, str):
        if value.strip().lower() == AUTO:
            return AUTO
        try:
            value = float(value)
        except ValueError:
            raise PurificationError(
                f"keep fraction = {value!r}: give a number in (0, 1] or 'auto'"
            ) from None
    return float(value)


def check_settings(n_images: int, k: int, keep_fraction: float | str, min_subset: int = 2) -> None:
    """Reject K, keep fraction or subset sizes that cannot give a meaningful purification.

    Raises:
        PurificationError: With the offending field, its value and what to choose instead.
    """
    if k < 2:
        raise PurificationError(
            f"subsets (K) = {k}: purification needs at least 2 subsets so that each image is "
            "scored by a sub-model that did not see it; use --subsets 3 (the paper's choice) "
            "or --no-purify"
        )
    keep_fraction = parse_keep_fraction(keep_fraction)
    if keep_fraction != AUTO and not 0.0 < keep_fraction <= 1.0:
        raise PurificationError(
            f"keep fraction = {keep_fraction}: must be in (0, 1], the share of training images "
            "kept for the final model (e.g. 0.8)"
        )
    if n_images < k * min_subset:
        raise PurificationError(
            f"subsets (K) = {k} is too many for {n_images} training images: each subset needs "
            f"at least {min_subset} images; use K <= {max(n_images // min_subset, 1)} or add "
            "training images"
        )


def partition(n_images: int, k: int, seed: int) -> np.ndarray:
    """Assign each of ``n_images`` images to one of ``k`` disjoint, near-equal random subsets.

    Returns:
        ``(n_images,)`` int array of subset ids in ``[0, k)``; subset sizes differ by at most 1.
    """
    if k < 1 or n_images < k:
        raise PurificationError(f"cannot split {n_images} images into {k} non-empty subsets")
    order = np.random.default_rng(seed).permutation(n_images)
    subsets = np.empty(n_images, dtype=np.int64)
    subsets[order] = np.arange(n_images) % k
    return subsets


def aggregate(table: np.ndarray, subsets: np.ndarray, method: str | Aggregation) -> np.ndarray:
    """Aggregate a ``(K, N)`` score table into one score per image.

    Args:
        table: ``table[k, i]`` is sub-model ``k``'s image score of training image ``i``.
        subsets: ``(N,)`` subset id of each image (sub-model ``k`` was fitted on subset ``k``).
        method: One of :class:`Aggregation`.

    Returns:
        ``(N,)`` float64 aggregated scores; higher = more likely defective.
    """
    table = np.asarray(table, dtype=np.float64)
    method = Aggregation(method)
    if method is Aggregation.mean:
        return table.mean(axis=0)
    if method is Aggregation.max:
        return table.max(axis=0)
    if method is Aggregation.max_var:
        return table.max(axis=0) * table.var(axis=0)
    k, n = table.shape
    if k < 2:
        raise PurificationError("cross_mean needs at least 2 sub-models")
    own = np.zeros_like(table, dtype=bool)
    own[subsets, np.arange(n)] = True
    return np.where(own, 0.0, table).sum(axis=0) / (k - 1)


def select_kept(aggregated: np.ndarray, keep_fraction: float) -> np.ndarray:
    """Mark the ``ceil(keep_fraction * N)`` lowest aggregated scores as kept.

    Ties are broken by image order (a stable sort), so the result is deterministic.
    """
    n = len(aggregated)
    n_keep = min(n, max(1, math.ceil(keep_fraction * n - 1e-9)))
    kept = np.zeros(n, dtype=bool)
    kept[np.argsort(aggregated, kind="stable")[:n_keep]] = True
    return kept


def density_mode(values: np.ndarray, grid: int = 512) -> float:
    """The peak of a Gaussian kernel density estimate (Scott's bandwidth) of ``values``."""
    from scipy.stats import gaussian_kde

    values = np.asarray(values, dtype=np.float64)
    if len(values) < 3 or np.ptp(values) == 0:
        return float(np.median(values))
    points = np.linspace(values.min(), values.max(), grid)
    return float(points[np.argmax(gaussian_kde(values)(points))])


def auto_keep(aggregated: np.ndarray, k: float = AUTO_K) -> np.ndarray:
    """The automatic keep rule: keep images up to ``k`` left-side deviations above the mode.

    Works on log aggregated scores. Normal images form the main mode; defects spread out to
    the right. The mode (peak of a kernel density estimate) and the spread measured only on
    the left of the mode (root mean square distance of the lower scores to the mode) describe
    the normal images alone, so the cut does not move when contamination grows, unlike a
    median + MAD cut, whose spread the defects inflate. With no contamination it keeps nearly
    everything, unlike a fixed keep fraction.
    """
    x = np.log(np.maximum(np.asarray(aggregated, dtype=np.float64), 1e-12))
    mode = density_mode(x)
    left = x[x <= mode] - mode
    spread = float(np.sqrt(np.mean(left**2))) if len(left) > 1 else float(np.std(x))
    kept = x <= mode + k * spread
    if not kept.any():
        kept[np.argmin(x)] = True
    return kept


def keep_mask(aggregated: np.ndarray, keep_fraction: float | str) -> np.ndarray:
    """Kept images for a fixed keep fraction or for ``"auto"`` (see :func:`auto_keep`)."""
    keep_fraction = parse_keep_fraction(keep_fraction)
    if keep_fraction == AUTO:
        return auto_keep(aggregated)
    return select_kept(aggregated, keep_fraction)


@dataclass
class PurificationResult:
    """Everything stage 1 decided, per training image.

    Attributes:
        subsets: ``(N,)`` subset id of each image.
        score_table: ``(K, N)`` image scores of every sub-model on every image.
        aggregated: ``(N,)`` aggregated scores.
        kept: ``(N,)`` True for images in the purified set.
        method: Aggregation method used.
        keep_fraction: Requested share of images kept, or ``"auto"``.
        seconds: Wall time per phase (``fit``, ``score``).
    """

    subsets: np.ndarray
    score_table: np.ndarray
    aggregated: np.ndarray
    kept: np.ndarray
    method: str
    keep_fraction: float | str
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def cut(self) -> float:
        """The largest aggregated score that was kept."""
        return float(self.aggregated[self.kept].max())


def fit_submodels(detector: Detector, embeddings: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    """Fit one sub-model per subset and score every image with each; return the table.

    Sub-models are spawned from ``detector`` (shared backbone, embeddings computed once) and
    fitted and scored one at a time, so memory holds a single memory bank at any moment.
    """
    k = int(subsets.max()) + 1
    table = np.empty((k, len(embeddings)), dtype=np.float64)
    for index in range(k):
        start = time.perf_counter()
        sub = detector.spawn()
        sub.fit(embeddings[subsets == index])
        table[index] = sub.score(embeddings).image_scores
        logger.info(
            "sub-model %d/%d: fitted on %d images, scored %d in %.1f s",
            index + 1,
            k,
            int((subsets == index).sum()),
            len(embeddings),
            time.perf_counter() - start,
        )
    return table


def purify(
    detector: Detector,
    embeddings: np.ndarray,
    k: int = 3,
    keep_fraction: float | str = 0.8,
    method: str | Aggregation = Aggregation.cross_mean,
    seed: int = 0,
) -> PurificationResult:
    """Run stage 1 on precomputed embeddings and return who is kept.

    Args:
        detector: A configured detector; sub-models are spawned from it.
        embeddings: Output of ``detector.embed`` on all training images.
        k: Number of disjoint subsets (sub-models).
        keep_fraction: Share of images kept, lowest aggregated scores first, or ``"auto"``.
        method: Aggregation method.
        seed: Seed of the partition.

    Raises:
        PurificationError: K, keep fraction or subset sizes are not workable.
    """
    check_settings(len(embeddings), k, keep_fraction)
    start = time.perf_counter()
    subsets = partition(len(embeddings), k, seed)
    table = fit_submodels(detector, embeddings, subsets)
    aggregated = aggregate(table, subsets, method)
    kept = keep_mask(aggregated, keep_fraction)
    seconds = {"stage1": time.perf_counter() - start}
    logger.info(
        "purification (%s, K=%d): kept %d of %d images (cut at aggregated score %.4g)",
        Aggregation(method).value,
        k,
        int(kept.sum()),
        len(kept),
        float(aggregated[kept].max()),
    )
    return PurificationResult(
        subsets,
        table,
        aggregated,
        kept,
        Aggregation(method).value,
        parse_keep_fraction(keep_fraction),
        seconds,
    )
