"""Evaluation: image and pixel metrics of a trained model on the test split.

Scores every test image of the model's category, then reports image AUROC, pixel AUROC and
AUPRO (on images with a known mask), image F1-max and the F1 at the model's own threshold.
When the dataset carries the demo's evaluation-only sidecar (which training files were
defective), the purification figures are added: share of defects removed, defect rate of
the purified set and share of normal images kept.

Example:
    >>> metrics = evaluate_model("models/brick", open_source("demo"), "brick")  # doctest: +SKIP
    >>> metrics["image_auroc"]                                                 # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from noisyad import metrics
from noisyad.data import BadInputPolicy, LoadedImages, Manifest, load_images
from noisyad.data.demo import read_contamination_sidecar
from noisyad.detectors import Detector, ScoreResult, load_detector

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Metrics plus the raw material for plots."""

    metrics: dict
    loaded: LoadedImages
    result: ScoreResult


def purification_metrics(model_dir: Path, category_dir: Path | None) -> dict | None:
    """Purification figures from ``purification.json`` and the dataset's sidecar, if both exist."""
    table_path = model_dir / "purification.json"
    if category_dir is None or not table_path.is_file():
        return None
    hidden = read_contamination_sidecar(category_dir)
    if hidden is None:
        return None
    images = json.loads(table_path.read_text())["images"]
    hidden_paths = {str(Path(p).resolve()) for p in hidden}
    is_defective = np.array([str(Path(r["path"]).resolve()) in hidden_paths for r in images])
    kept = np.array([r["kept"] for r in images])
    return metrics.purification_figures(is_defective, kept)


def category_dir_of(manifest: Manifest, category: str) -> Path | None:
    """The folder of ``category`` in an MVTec-layout dataset (where the sidecar lives)."""
    root = Path(manifest.root)
    for candidate in (root / category, root):
        if (candidate / "train").is_dir() and (candidate.name == category or candidate == root):
            return candidate
    return None


def score_test_set(
    detector: Detector, manifest: Manifest, category: str, policy: BadInputPolicy
) -> tuple[LoadedImages, ScoreResult]:
    """Load and score the labelled test images of one category."""
    samples = [s for s in manifest.select(split="test", category=category) if s.label is not None]
    if not samples:
        raise ValueError(f"no labelled test images for category {category!r} in {manifest.root}")
    loaded = load_images(samples, detector.input_size, policy, with_masks=True)
    return loaded, detector.score(detector.embed(loaded.images))


def compute_metrics(loaded: LoadedImages, result: ScoreResult, threshold: float | None) -> dict:
    """Image and pixel metrics of scored test images."""
    labels = np.array([s.label for s in loaded.samples])
    scores = result.image_scores
    out: dict = {"n_test": len(labels), "n_test_anomalous": int(labels.sum())}
    out["image_auroc"] = metrics.image_auroc(labels, scores)
    out["image_f1_max"], out["f1_max_threshold"] = metrics.f1_max(labels, scores)
    with_mask = loaded.has_mask
    masks = loaded.masks[with_mask]
    maps = result.anomaly_maps[with_mask]
    has_regions = masks.any() and not masks.all()
    out["pixel_auroc"] = metrics.pixel_auroc(masks, maps) if has_regions else None
    out["aupro"] = metrics.aupro(masks, maps, fpr_limit=0.3) if has_regions else None
    if threshold is not None:
        at = metrics.classification_at(labels, scores, threshold)
        out["threshold"] = threshold
        out.update({f"{k}_at_threshold": v for k, v in at.items()})
    return out


def evaluate_model(
    model_dir: str | Path,
    manifest: Manifest,
    category: str | None = None,
    policy: BadInputPolicy = BadInputPolicy.error,
) -> Evaluation:
    """Evaluate the model in ``model_dir`` on the test split of its category.

    Args:
        model_dir: A folder written by training.
        manifest: The dataset (its test split is used).
        category: Defaults to the category the model was trained on.
        policy: What to do with unreadable test images.
    """
    model_dir = Path(model_dir)
    training = json.loads((model_dir / "training.json").read_text())
    category = category or training["category"]
    detector = load_detector(str(model_dir))

    start = time.perf_counter()
    loaded, result = score_test_set(detector, manifest, category, policy)
    out = compute_metrics(loaded, result, detector.threshold)
    out["category"] = category
    out["seconds_scoring"] = round(time.perf_counter() - start, 3)
    out["n_train"] = training["n_train"]
    out["n_kept"] = training["n_kept"]
    figures = purification_metrics(model_dir, category_dir_of(manifest, category))
    if figures is not None:
        out["purification"] = figures
    logger.info(
        "%s: image AUROC %.4f, pixel AUROC %s on %d test images",
        category,
        out["image_auroc"],
        "n/a" if out["pixel_auroc"] is None else f"{out['pixel_auroc']:.4f}",
        out["n_test"],
    )
    return Evaluation(out, loaded, result)
