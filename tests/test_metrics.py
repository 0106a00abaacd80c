"""Tests for noisyad.metrics: each metric against an independent reference or a hand count."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage, stats
from sklearn.metrics import roc_auc_score, roc_curve

from noisyad.metrics import (
    aupro,
    classification_at,
    f1_at,
    f1_max,
    image_auroc,
    pixel_auroc,
    purification_figures,
    roc_curve_points,
)


def _hand_case() -> tuple[np.ndarray, np.ndarray]:
    """Two 2x2 images, two defect regions, a tie between a defect and a normal pixel.

    Image 0 has region A: the diagonal pair (0, 0) and (1, 1), one region under
    8-connectivity. Image 1 has region B: the single pixel (1, 1), which sits right behind
    A's (1, 1) in the stack, so B must not join A across images. The other 5 pixels are
    normal.
    """
    masks = np.array(
        [
            [[1, 0], [0, 1]],
            [[0, 0], [0, 1]],
        ],
        dtype=bool,
    )
    maps = np.array(
        [
            [[0.9, 0.2], [0.1, 0.5]],
            [[0.4, 0.6], [0.05, 0.4]],
        ]
    )
    return masks, maps


def _blob_masks(seed: int = 0, n: int = 4, size: int = 24) -> np.ndarray:
    """Masks with a few rectangular defects of different sizes, some images defect-free."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n - 1):
        for _ in range(2):
            top, left = rng.integers(0, size - 6, size=2)
            height, width = rng.integers(1, 6, size=2)
            masks[i, top : top + height, left : left + width] = True
    return masks


def _brute_force_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float) -> float:
    """AUPRO by an explicit loop over thresholds and regions, clipping each segment."""
    regions = [(i, component) for i in range(len(masks)) for component in _components(masks[i])]
    normal = ~masks
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        xs.append(above[normal].sum() / normal.sum())
        ys.append(np.mean([above[i][component].mean() for i, component in regions]))

    area = 0.0
    for x0, x1, y0, y1 in zip(xs[:-1], xs[1:], ys[:-1], ys[1:], strict=True):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """Boolean masks of the 8-connected components of one 2-D mask."""
    labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
    return [labelled == k for k in range(1, count + 1)]


# Image AUROC


def test_image_auroc_matches_sklearn_and_a_pair_count() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=200)
    scores = np.round(rng.normal(size=200) + labels, 1)  # rounding creates ties

    positives, negatives = scores[labels == 1], scores[labels == 0]
    wins = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    pair_count = (wins + ties / 2) / (positives.size * negatives.size)

    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert image_auroc(labels, scores) == pytest.approx(pair_count)


def test_image_auroc_accepts_booleans_and_lists() -> None:
    assert image_auroc([False, False, True, True], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert isinstance(image_auroc([0, 1], [0.0, 1.0]), float)


def test_image_auroc_rejects_a_single_class() -> None:
    with pytest.raises(ValueError, match="only one class"):
        image_auroc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="only one class"):
        image_auroc([1, 1], [0.1, 0.2])


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([0, 1, 1], [0.1, 0.2], "shape"),
        ([0, 1], [0.1, np.nan], "NaN"),
        ([0, 2], [0.1, 0.2], "only 0 and 1"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
    ],
)
def test_image_auroc_rejects_malformed_inputs(labels, scores, message) -> None:
    with pytest.raises(ValueError, match=message):
        image_auroc(labels, scores)


# Pixel AUROC


def test_pixel_auroc_matches_sklearn_on_flattened_pixels() -> None:
    masks = _blob_masks()
    maps = np.random.default_rng(2).random(masks.shape) + 0.5 * masks

    expected = roc_auc_score(masks.ravel(), maps.ravel())

    assert pixel_auroc(masks, maps) == pytest.approx(expected)
    assert pixel_auroc(masks.astype(np.uint8), maps) == pytest.approx(expected)


def test_pixel_auroc_handles_a_hundred_128px_maps() -> None:
    rng = np.random.default_rng(3)
    masks = np.zeros((100, 128, 128), dtype=bool)
    masks[::2, 40:60, 30:90] = True
    maps = (rng.random(masks.shape) + 0.3 * masks).astype(np.float32)

    # Mann-Whitney U from average ranks: an exact reference that shares no code with sklearn.
    ranks = stats.rankdata(maps.ravel())
    n_pos, n_neg = int(masks.sum()), int((~masks).sum())
    expected = (ranks[masks.ravel()].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)

    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-9)


def test_pixel_auroc_rejects_bad_masks() -> None:
    maps = np.zeros((2, 4, 4))
    with pytest.raises(ValueError, match="only one class"):
        pixel_auroc(np.zeros((2, 4, 4), dtype=bool), maps)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        pixel_auroc(np.zeros((4, 4), dtype=bool), maps[0])
    with pytest.raises(ValueError, match="only 0 and 1"):
        pixel_auroc(np.full((2, 4, 4), 255, dtype=np.uint8), maps)
    with pytest.raises(ValueError, match="shape"):
        pixel_auroc(np.ones((2, 4, 5), dtype=bool), maps)


# AUPRO


def test_aupro_hand_computed_case() -> None:
    # Pixels by decreasing score (A: region A, 2 px; B: region B, 1 px; N: normal, 5 px):
    #   0.9 A | 0.6 N | 0.5 A | 0.4 B and N (tie) | 0.2 N | 0.1 N | 0.05 N
    # PRO = mean of (share of A above, share of B above); FPR = normals above / 5.
    # Curve (FPR, PRO): (0, 0) start, (0, 1/4) at 0.9, (0.2, 1/4) at 0.6, (0.2, 1/2) at 0.5,
    #   (0.4, 1) at 0.4 (the tie moves FPR and PRO together), then (0.6, 1), (0.8, 1), (1, 1).
    # Limit 0.3: PRO at 0.3 is halfway from 1/2 to 1, i.e. 3/4.
    #   Area = 0.2 * 1/4 + 0.1 * (1/2 + 3/4) / 2 = 0.05 + 0.0625 = 0.1125; / 0.3 = 0.375.
    # Limit 0.4: 0.05 + 0.2 * (1/2 + 1) / 2 = 0.2; / 0.4 = 0.5.
    # Limit 1.0: 0.2 + 0.6 * 1 = 0.8.
    # Limit 0.2 (ends on the vertical step): 0.05 / 0.2 = 0.25; limit 0.1: 0.025 / 0.1 = 0.25.
    masks, maps = _hand_case()

    assert aupro(masks, maps) == pytest.approx(0.375)
    assert aupro(masks, maps, fpr_limit=0.4) == pytest.approx(0.5)
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(0.8)
    assert aupro(masks, maps, fpr_limit=0.2) == pytest.approx(0.25)
    assert aupro(masks, maps, fpr_limit=0.1) == pytest.approx(0.25)


def test_aupro_joins_diagonal_pixels_into_one_region() -> None:
    # Region A is the diagonal pair (0, 0)-(1, 1), found; region B is (3, 3), missed.
    # 8-connectivity: 2 regions, PRO = (1 + 0) / 2 = 1/2 up to FPR 1, so AUPRO = 0.5.
    # 4-connectivity would count 3 regions and give 2/3.
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, [0, 1, 3], [0, 1, 3]] = True
    maps = masks.astype(float)
    maps[0, 3, 3] = -1.0

    assert aupro(masks, maps) == pytest.approx(0.5)


def test_aupro_keeps_regions_of_different_images_apart() -> None:
    # Image 0: region (0, 0)-(0, 1), found; image 1: region (0, 0), missed, directly behind.
    # Per image: 2 regions, PRO = (1 + 0) / 2, AUPRO = 0.5. Joined across images it would be
    # one 3-pixel region with overlap 2/3.
    masks = np.zeros((2, 3, 3), dtype=bool)
    masks[0, 0, :2] = True
    masks[1, 0, 0] = True
    maps = masks.astype(float)
    maps[1, 0, 0] = -1.0

    assert aupro(masks, maps) == pytest.approx(0.5)


def test_aupro_matches_a_brute_force_loop() -> None:
    masks = _blob_masks(seed=4, n=3, size=12)
    rng = np.random.default_rng(5)
    maps = np.round(rng.random(masks.shape) + 0.4 * masks, 1)  # coarse values: many ties

    for limit in (0.05, 0.3, 1.0):
        expected = _brute_force_aupro(masks, maps, limit)
        assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(expected)


def test_aupro_perfect_detector_scores_one_and_inverted_scores_zero() -> None:
    masks = _blob_masks(seed=6)
    noise = np.random.default_rng(7).random(masks.shape) * 0.1
    perfect = masks + noise

    assert aupro(masks, perfect) == pytest.approx(1.0)
    assert aupro(masks, -perfect) == pytest.approx(0.0)


def test_aupro_weights_regions_not_pixels() -> None:
    # One large region found, one small region missed: half the regions are detected even
    # though almost all defect pixels are, so PRO stays at 1/2 until the small region's
    # pixel rises above the normal ones (FPR 1).
    masks = np.zeros((1, 10, 10), dtype=bool)
    masks[0, :5, :5] = True
    masks[0, 9, 9] = True
    maps = masks.astype(float)
    maps[0, 9, 9] = -1.0

    assert aupro(masks, maps) == pytest.approx(0.5)


def test_aupro_threshold_grid() -> None:
    # On the hand case, 2 thresholds (0.05 and 0.9) leave the points (0, 0), (0, 1/4), (1, 1).
    # PRO at FPR 0.3 = 1/4 + 3/4 * 0.3 = 0.475; area = 0.3 * (0.25 + 0.475) / 2 = 0.10875,
    # / 0.3 = 0.3625.
    masks, maps = _hand_case()
    assert aupro(masks, maps, num_thresholds=2) == pytest.approx(0.3625)

    # Maps whose values all lie on the grid give the exact sweep's result.
    grid = np.linspace(0.0, 1.0, 11)
    masks = _blob_masks(seed=8, n=3, size=12)
    on_grid = grid[np.random.default_rng(9).integers(0, 11, size=masks.shape)]
    assert aupro(masks, on_grid, num_thresholds=11) == pytest.approx(aupro(masks, on_grid))


def test_aupro_errors() -> None:
    masks, maps = _hand_case()
    with pytest.raises(ValueError, match="defect region"):
        aupro(np.zeros_like(masks), maps)
    with pytest.raises(ValueError, match="normal pixels"):
        aupro(np.ones_like(masks), maps)
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(masks, maps, fpr_limit=0.0)
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(masks, maps, fpr_limit=1.5)
    with pytest.raises(ValueError, match="num_thresholds"):
        aupro(masks, maps, num_thresholds=1)
    with pytest.raises(ValueError, match="NaN"):
        aupro(masks, np.full(maps.shape, np.nan))


# F1 and classification at a threshold


def test_f1_max_matches_a_brute_force_loop() -> None:
    rng = np.random.default_rng(10)
    labels = rng.integers(0, 2, size=60)
    scores = np.round(rng.normal(size=60) + labels, 1)

    def f1_flagging(threshold: float) -> float:
        flagged = scores >= threshold
        tp = np.sum(flagged & (labels == 1))
        fp = np.sum(flagged & (labels == 0))
        fn = np.sum(~flagged & (labels == 1))
        return 2 * tp / (2 * tp + fp + fn)

    candidates = np.unique(scores)
    f1s = np.array([f1_flagging(t) for t in candidates])

    best_f1, best_threshold = f1_max(labels, scores)

    assert best_f1 == pytest.approx(f1s.max())
    assert best_threshold == candidates[np.argmax(f1s)]  # the lowest threshold among ties
    assert f1_at(labels, scores, best_threshold) == pytest.approx(best_f1)


def test_f1_max_perfect_separation() -> None:
    assert f1_max([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == (1.0, 0.8)


def test_f1_requires_an_anomalous_sample() -> None:
    with pytest.raises(ValueError, match="anomalous"):
        f1_max([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="anomalous"):
        f1_at([0, 0], [0.1, 0.2], 0.15)


def test_classification_at_hand_case() -> None:
    labels = [0, 0, 1, 1, 1]
    scores = [0.1, 0.6, 0.4, 0.7, 0.9]

    # At 0.6 (inclusive) the flags are 0, 1, 0, 1, 1: tp 2, fp 1, tn 1, fn 1.
    result = classification_at(labels, scores, 0.6)
    assert result == pytest.approx(
        {
            "precision": 2 / 3,
            "recall": 2 / 3,
            "f1": 2 / 3,
            "fpr": 0.5,
            "tpr": 2 / 3,
            "tp": 2,
            "fp": 1,
            "tn": 1,
            "fn": 1,
        }
    )
    assert f1_at(labels, scores, 0.6) == pytest.approx(2 / 3)

    # Just above 0.6 the normal image is no longer flagged: precision 1, F1 0.8.
    above = classification_at(labels, scores, 0.61)
    assert (above["precision"], above["f1"], above["fpr"]) == pytest.approx((1.0, 0.8, 0.0))

    # Nothing flagged: precision and F1 are 0 by convention.
    nothing = classification_at(labels, scores, 1.0)
    assert (nothing["precision"], nothing["f1"], nothing["tpr"]) == (0.0, 0.0, 0.0)
    json.dumps(nothing)


def test_classification_at_requires_both_classes() -> None:
    with pytest.raises(ValueError, match="only one class"):
        classification_at([1, 1], [0.1, 0.2], 0.15)


# Purification figures


def test_purification_figures_hand_case() -> None:
    # 10 images, the first 3 defective; 6 kept, of which 1 defective (index 2).
    is_defective = [True] * 3 + [False] * 7
    kept = [False, False, True, True, True, True, True, True, False, False]

    figures = purification_figures(is_defective, kept)

    assert figures == pytest.approx(
        {
            "defects_removed": 2 / 3,
            "defect_rate_kept": 1 / 6,
            "normals_kept": 5 / 7,
            "n_train": 10,
            "n_defective": 3,
            "n_kept": 6,
            "n_defective_kept": 1,
        }
    )
    json.loads(json.dumps(figures, allow_nan=False))


def test_purification_figures_undefined_shares_are_none() -> None:
    no_defects = purification_figures([False, False, False], [True, False, True])
    assert no_defects["defects_removed"] is None
    assert no_defects["defect_rate_kept"] == 0.0
    assert no_defects["normals_kept"] == pytest.approx(2 / 3)

    nothing_kept = purification_figures([True, False], [False, False])
    assert nothing_kept["defect_rate_kept"] is None
    assert nothing_kept["defects_removed"] == 1.0

    only_defects = purification_figures([True, True], [True, False])
    assert only_defects["normals_kept"] is None

    json.dumps([no_defects, nothing_kept, only_defects], allow_nan=False)


def test_purification_figures_rejects_malformed_inputs() -> None:
    with pytest.raises(ValueError, match="shape"):
        purification_figures([True, False], [True])
    with pytest.raises(ValueError, match="only 0 and 1"):
        purification_figures([0, 2], [1, 1])


# ROC curve points


def test_roc_curve_points_match_sklearn_with_a_finite_first_threshold() -> None:
    labels = [0, 0, 1, 1, 0, 1]
    scores = [0.1, 0.4, 0.35, 0.8, 0.8, 0.9]

    fpr, tpr, thresholds = roc_curve_points(labels, scores)
    ref_fpr, ref_tpr, ref_thresholds = roc_curve(labels, scores)

    assert fpr == pytest.approx(ref_fpr.tolist())
    assert tpr == pytest.approx(ref_tpr.tolist())
    assert thresholds[1:] == pytest.approx(ref_thresholds[1:].tolist())
    assert 0.9 < thresholds[0] < 0.9 + 1e-12  # flags nothing, yet finite
    assert all(isinstance(v, float) for v in fpr + tpr + thresholds)
    json.dumps([fpr, tpr, thresholds], allow_nan=False)


def test_roc_curve_points_requires_both_classes() -> None:
    with pytest.raises(ValueError, match="only one class"):
        roc_curve_points([0, 0], [0.1, 0.2])
