"""Evaluation metrics: image and pixel AUROC, AUPRO, F1 and purification figures.

Every evaluation step reads its numbers from here, so that a score means the same thing in
a notebook, in the pipeline's metrics artifact and in MLflow. Conventions shared by all
functions:

- Label ``1`` (or ``True``) is anomalous / defective and is the positive class; a mask
  pixel that is ``True`` belongs to a defect.
- A higher image score or anomaly map value means "more anomalous", and a sample is
  flagged when ``score >= threshold`` (the rule scikit-learn's curves use, so a threshold
  returned by :func:`f1_max` reproduces its F1 in :func:`f1_at`).
- Ranking metrics come from scikit-learn; AUPRO (per-region overlap, Bergmann et al.,
  "The MVTec Anomaly Detection Dataset", IJCV 2021) is built on its weighted ROC curve.
- Functions return plain Python numbers, so results can be written as JSON directly.

Example:
    >>> import numpy as np
    >>> image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    >>> masks = np.zeros((1, 4, 4), dtype=bool)
    >>> masks[0, 1:3, 1:3] = True
    >>> aupro(masks, masks.astype(float))
    1.0
    >>> purification_figures([True, False, False], [False, True, True])["defects_removed"]
    1.0
"""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage
from scipy.integrate import trapezoid
from sklearn.metrics import (
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

logger = logging.getLogger(__name__)

# Two defect pixels that touch at an edge or a corner belong to the same region: the
# 8-connectivity used by the MVTec AD reference evaluation. Only the middle plane of the 3-D
# structure is set, so regions never join across images when a whole stack is labelled.
_REGION_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_REGION_STRUCTURE[1] = True


def image_auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve of image scores.

    Args:
        labels: Shape ``(N,)``; ``1``/``True`` anomalous, ``0``/``False`` normal.
        scores: Shape ``(N,)``; image scores, higher means more anomalous.

    Returns:
        The ROC AUC in ``[0, 1]``; ``0.5`` is chance.

    Raises:
        ValueError: If the inputs do not match, are not binary/finite, or only one class
            is present (the ROC curve is then undefined).
    """
    y = _binary_labels(labels, "labels")
    s = _finite_scores(scores, y.shape, "scores")
    _require_both_classes(y, "image labels")
    return float(roc_auc_score(y, s))


def pixel_auroc(masks: ArrayLike, maps: ArrayLike) -> float:
    """Area under the ROC curve of all pixels of all images, pooled.

    The arrays are flattened as views and handed to scikit-learn once, so the result is
    exact (no threshold grid, no subsampling) and no copy beyond scikit-learn's own
    working arrays is made.

    Args:
        masks: Shape ``(N, H, W)``; ``True`` (or ``1``) where a pixel is defective.
        maps: Shape ``(N, H, W)``; anomaly maps, higher means more anomalous.

    Returns:
        The pixel-level ROC AUC in ``[0, 1]``.

    Raises:
        ValueError: If the shapes differ or are not 3-D, masks are not binary, maps are
            not finite, or the pixels are all defective or all normal.
    """
    # Limitation: scikit-learn sorts the pooled pixels with ~70 bytes of working memory per
    # pixel (≈115 MB for 100 maps of 128x128); a streaming histogram AUROC would lift it.
    defect, values = _pixel_arrays(masks, maps)
    _require_both_classes(defect, "mask pixels")
    return float(roc_auc_score(defect.reshape(-1), values.reshape(-1)))


def aupro(
    masks: ArrayLike,
    maps: ArrayLike,
    fpr_limit: float = 0.3,
    num_thresholds: int | None = None,
) -> float:
    """Normalised area under the per-region-overlap (PRO) curve, up to an FPR limit.

    Each defect region is a connected component (8-connectivity) of one image's mask.
    At a threshold ``t``, a region's overlap is the share of its pixels with
    ``map >= t``; PRO is the mean overlap over all regions of all images, so a small
    defect counts as much as a large one. The FPR is the share of normal pixels (every
    pixel outside the masks, in all images) with ``map >= t``. PRO is integrated over
    FPR from 0 to ``fpr_limit`` with the trapezoidal rule, the curve being linearly
    interpolated at exactly ``fpr_limit``, and divided by ``fpr_limit``: a perfect
    detector scores 1.0, one that ranks all defect pixels below all normal ones 0.0.

    Args:
        masks: Shape ``(N, H, W)``; ``True`` (or ``1``) where a pixel is defective.
        maps: Shape ``(N, H, W)``; anomaly maps, higher means more anomalous.
        fpr_limit: Upper end of the integration, in ``(0, 1]``.
        num_thresholds: ``None`` (default) sweeps every distinct map value, which is
            exact. An integer ``n >= 2`` uses only ``n`` evenly spaced thresholds from the
            lowest to the highest map value instead, as some published evaluations do.

    Returns:
        The normalised AUPRO in ``[0, 1]``.

    Raises:
        ValueError: If there is no defect region or no normal pixel, the inputs are
            malformed, or ``fpr_limit``/``num_thresholds`` is out of range.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must lie in (0, 1], got {fpr_limit}")
    if num_thresholds is not None and num_thresholds < 2:
        raise ValueError(f"num_thresholds must be None or at least 2, got {num_thresholds}")
    defect_stack, map_stack = _pixel_arrays(masks, maps)

    regions, num_regions = ndimage.label(defect_stack, _REGION_STRUCTURE)
    if num_regions == 0:
        raise ValueError("AUPRO needs at least one defect region; every mask is empty")
    if defect_stack.all():
        raise ValueError("AUPRO needs normal pixels for the FPR; every pixel is defective")
    defect, values, regions = defect_stack.reshape(-1), map_stack.reshape(-1), regions.reshape(-1)
    region_sizes = np.bincount(regions)

    # Weighting each defect pixel by 1 / (size of its region) turns the weighted true-positive
    # rate (weighted defect pixels flagged / number of regions) into the mean region overlap,
    # while normal pixels keep weight 1, so the weighted ROC curve is exactly the PRO curve.
    weights = np.ones(defect.shape, dtype=np.float64)
    weights[defect] = 1.0 / region_sizes[regions[defect]]

    if num_thresholds is not None:
        # Replacing each value by the index of the highest grid threshold at or below it
        # leaves "value >= threshold" unchanged at every grid threshold.
        grid = np.linspace(values.min(), values.max(), num_thresholds)
        values = np.searchsorted(grid, values, side="right") - 1

    fpr, pro, _ = roc_curve(defect, values, sample_weight=weights, drop_intermediate=False)
    logger.debug("AUPRO: %d regions, %d curve points", num_regions, fpr.size)
    return _normalised_partial_area(fpr, pro, fpr_limit)


def f1_max(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """Best F1 over all thresholds of the image scores, and the threshold reaching it.

    Args:
        labels: Shape ``(N,)``; ``1``/``True`` anomalous, ``0``/``False`` normal.
        scores: Shape ``(N,)``; image scores, higher means more anomalous.

    Returns:
        ``(f1, threshold)``: flagging ``score >= threshold`` gives this F1. When several
        thresholds tie, the lowest is returned.

    Raises:
        ValueError: If there is no anomalous sample (F1 is then undefined) or the inputs
            are malformed.
    """
    y = _binary_labels(labels, "labels")
    s = _finite_scores(scores, y.shape, "scores")
    _require_positives(y, "F1")

    precision, recall, thresholds = precision_recall_curve(y, s)
    # The curve's last point (precision 1, recall 0) has no threshold; 0/0 counts as F1 0.
    precision, recall = precision[:-1], recall[:-1]
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def f1_at(labels: ArrayLike, scores: ArrayLike, threshold: float) -> float:
    """F1 of flagging ``score >= threshold`` as anomalous.

    Args:
        labels: Shape ``(N,)``; ``1``/``True`` anomalous, ``0``/``False`` normal.
        scores: Shape ``(N,)``; image scores, higher means more anomalous.
        threshold: Scores at or above it are flagged.

    Returns:
        The F1 score; ``0.0`` when nothing is flagged.

    Raises:
        ValueError: If there is no anomalous sample or the inputs are malformed.
    """
    y = _binary_labels(labels, "labels")
    s = _finite_scores(scores, y.shape, "scores")
    _require_positives(y, "F1")
    return float(f1_score(y, s >= threshold, zero_division=0.0))


def classification_at(
    labels: ArrayLike, scores: ArrayLike, threshold: float
) -> dict[str, float | int]:
    """Confusion counts and rates of flagging ``score >= threshold`` as anomalous.

    Args:
        labels: Shape ``(N,)``; ``1``/``True`` anomalous, ``0``/``False`` normal.
        scores: Shape ``(N,)``; image scores, higher means more anomalous.
        threshold: Scores at or above it are flagged.

    Returns:
        ``precision``, ``recall``, ``f1``, ``fpr``, ``tpr`` (``tpr == recall``) as floats,
        and the counts ``tp``, ``fp``, ``tn``, ``fn``. Precision and F1 are ``0.0`` when
        nothing is flagged.

    Raises:
        ValueError: If only one class is present (recall or FPR would be undefined) or
            the inputs are malformed.
    """
    y = _binary_labels(labels, "labels")
    s = _finite_scores(scores, y.shape, "scores")
    _require_both_classes(y, "labels")

    flagged = s >= threshold
    tn, fp, fn, tp = (int(c) for c in confusion_matrix(y, flagged, labels=[False, True]).ravel())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "fpr": fp / (fp + tn),
        "tpr": recall,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def purification_figures(is_defective: ArrayLike, kept: ArrayLike) -> dict[str, float | int | None]:
    """How well a purification step removed the defective images from a training set.

    Args:
        is_defective: Shape ``(N,)``; ``True`` for each training image that is defective
            (known only in experiments where the contamination was injected).
        kept: Shape ``(N,)``; ``True`` for each image that is in the purified set.

    Returns:
        A JSON-writable dict:

        - ``defects_removed``: share of defective images that were removed;
        - ``defect_rate_kept``: share of defective images in the purified set;
        - ``normals_kept``: share of normal images that were kept;
        - ``n_train``, ``n_defective``, ``n_kept``, ``n_defective_kept``: counts.

        A share whose denominator is zero (no defective image, nothing kept, no normal
        image) is ``None``, never NaN, so that the dict stays valid JSON.

    Raises:
        ValueError: If the arrays differ in length or are not boolean (0/1).
    """
    defective = _binary_labels(is_defective, "is_defective")
    in_purified = _binary_labels(kept, "kept")
    if in_purified.shape != defective.shape:
        raise ValueError(
            f"is_defective and kept differ in shape: {defective.shape} vs {in_purified.shape}"
        )

    n_train = int(defective.size)
    n_defective = int(defective.sum())
    n_kept = int(in_purified.sum())
    n_defective_kept = int((defective & in_purified).sum())
    n_normal = n_train - n_defective
    n_normal_kept = n_kept - n_defective_kept
    return {
        "defects_removed": _share(n_defective - n_defective_kept, n_defective),
        "defect_rate_kept": _share(n_defective_kept, n_kept),
        "normals_kept": _share(n_normal_kept, n_normal),
        "n_train": n_train,
        "n_defective": n_defective,
        "n_kept": n_kept,
        "n_defective_kept": n_defective_kept,
    }


def roc_curve_points(
    labels: ArrayLike, scores: ArrayLike, drop_intermediate: bool = True
) -> tuple[list[float], list[float], list[float]]:
    """ROC curve of image scores as plain lists, for plots and metrics artifacts.

    Args:
        labels: Shape ``(N,)``; ``1``/``True`` anomalous, ``0``/``False`` normal.
        scores: Shape ``(N,)``; image scores, higher means more anomalous.
        drop_intermediate: Leave out points that do not change the curve's shape.

    Returns:
        ``(fpr, tpr, thresholds)`` from scikit-learn's ``roc_curve``, thresholds
        decreasing. The first point (nothing flagged) gets the smallest float above the
        highest score as its threshold instead of scikit-learn's ``inf``, so every value
        is finite and JSON-writable while ``score >= threshold`` still flags nothing.

    Raises:
        ValueError: If only one class is present or the inputs are malformed.
    """
    y = _binary_labels(labels, "labels")
    s = _finite_scores(scores, y.shape, "scores").astype(np.float64)
    _require_both_classes(y, "labels")

    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=drop_intermediate)
    thresholds = thresholds.astype(np.float64)
    thresholds[0] = np.nextafter(s.max(), np.inf)
    return fpr.tolist(), tpr.tolist(), thresholds.tolist()


def _normalised_partial_area(fpr: NDArray, pro: NDArray, fpr_limit: float) -> float:
    """Trapezoidal area under ``pro(fpr)`` on ``[0, fpr_limit]``, divided by ``fpr_limit``.

    ``fpr`` is non-decreasing, starts at 0 and ends at 1 (as from ``roc_curve``). Points
    sharing an FPR form vertical steps, which add no area.
    """
    inside = int(np.searchsorted(fpr, fpr_limit, side="right"))
    x, y = fpr[:inside], pro[:inside]
    if x[-1] < fpr_limit:
        # Interpolate on the segment that crosses the limit; its right end exists because
        # the curve ends at FPR 1 >= fpr_limit, and its x-span is positive.
        x0, x1, y0, y1 = fpr[inside - 1], fpr[inside], pro[inside - 1], pro[inside]
        y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        x, y = np.append(x, fpr_limit), np.append(y, y_limit)
    return float(trapezoid(y, x) / fpr_limit)


def _binary_labels(values: ArrayLike, name: str) -> NDArray[np.bool_]:
    """Return ``values`` as a 1-D boolean array, rejecting anything other than 0/1."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return _as_bool(array, name)


def _as_bool(array: NDArray, name: str) -> NDArray[np.bool_]:
    """Return ``array`` as booleans if it is boolean or holds only 0 and 1."""
    if array.dtype == np.bool_:
        return array
    if not np.issubdtype(array.dtype, np.number) or not np.all((array == 0) | (array == 1)):
        raise ValueError(f"{name} must be boolean or hold only 0 and 1")
    return array.astype(bool)


def _finite_scores(values: ArrayLike, shape: tuple[int, ...], name: str) -> NDArray:
    """Return ``values`` as a numeric array of ``shape`` with only finite entries."""
    array = np.asarray(values)
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape} like the labels, got {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise ValueError(f"{name} must be numbers without NaN or infinity")
    return array


def _pixel_arrays(masks: ArrayLike, maps: ArrayLike) -> tuple[NDArray[np.bool_], NDArray]:
    """Validate ``(N, H, W)`` masks and maps; return boolean masks and the maps, uncopied."""
    mask_array = np.asarray(masks)
    if mask_array.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {mask_array.shape}")
    map_array = _finite_scores(maps, mask_array.shape, "maps")
    return _as_bool(mask_array, "masks"), map_array


def _require_both_classes(labels: NDArray[np.bool_], what: str) -> None:
    """Raise unless ``labels`` contains both positives and negatives."""
    positives = int(labels.sum())
    if positives in (0, labels.size):
        raise ValueError(
            f"only one class is present in the {what} ({positives} anomalous of "
            f"{labels.size}); the metric needs both normal and anomalous samples"
        )


def _require_positives(labels: NDArray[np.bool_], metric: str) -> None:
    """Raise unless ``labels`` contains at least one positive."""
    if not labels.any():
        raise ValueError(f"{metric} needs at least one anomalous sample; all labels are normal")


def _share(part: int, whole: int) -> float | None:
    """``part / whole``, or ``None`` when ``whole`` is zero."""
    return part / whole if whole else None
