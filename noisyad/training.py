"""Training: purify the training set (stage 1), fit the final detector on it (stage 2).

The backbone features of every training image are computed once; the K sub-models and the
final model differ only in which images' features they keep. The final model carries a label
threshold derived without labelled anomalies (see :func:`label_threshold`).

A trained model folder holds:

* ``config.json`` + ``model.safetensors``: the detector (no pickle);
* ``training.json``: settings, counts, threshold rule and timings;
* ``purification.json``: per training image its subset, sub-model scores, aggregated score
  and whether it was kept (absent with ``purify=False``).

Example:
    >>> report = train_category(manifest, "brick", TrainConfig(), "models/brick")  # doctest: +SKIP
    >>> report.n_kept, report.threshold                                           # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from noisyad.data import BadInputPolicy, Manifest, Sample, load_images
from noisyad.detectors import PatchCore, PatchCoreConfig
from noisyad.purification import (
    Aggregation,
    PurificationError,
    PurificationResult,
    check_settings,
    purify,
)

logger = logging.getLogger(__name__)


class TrainConfig(BaseModel):
    """Settings of one training run (saved in ``training.json``)."""

    model_config = ConfigDict(extra="forbid")

    detector: PatchCoreConfig = Field(default_factory=PatchCoreConfig)
    purify: bool = True
    subsets: int = Field(3, description="K, the number of disjoint subsets / sub-models")
    keep_fraction: float | Literal["auto"] = Field(
        0.5, description="share of training images kept, or 'auto' (the automatic keep rule)"
    )
    aggregate: Aggregation = Aggregation.cross_mean
    seed: int = 0
    threshold_quantile: float = Field(0.99, gt=0.0, le=1.0)
    threshold_margin: float = Field(
        0.1, ge=0.0, description="relative safety margin added to the threshold quantile"
    )
    bad_input: BadInputPolicy = BadInputPolicy.error


def label_threshold(calibration: np.ndarray, quantile: float, margin: float = 0.0) -> float:
    """The image-score threshold for the label, from scores of normal images only.

    Rule: ``(1 + margin)`` times the ``quantile`` of the final model's leave-one-image-out
    scores of its own (purified) training images. Those are the scores that new normal images
    get, so without a margin about ``1 - quantile`` of normal images would score above the
    threshold. The margin absorbs the drift between the training images and the images met
    later (lighting, position); no anomaly is needed to set it.
    """
    # Limitation: the default margin (0.1) was chosen on the demo textures, whose training
    # tiles are overlapping crops of one photograph, so their leave-one-out scores run low;
    # scoring a few held-out normal images would calibrate the threshold exactly.
    base = float(np.quantile(np.asarray(calibration, dtype=np.float64), quantile))
    return base * (1.0 + margin)


@dataclass
class TrainReport:
    """What a training run produced."""

    category: str
    model_dir: str
    n_train: int
    n_kept: int
    n_skipped: int
    threshold: float
    bank_size: int
    seconds: dict[str, float]


def purification_table(samples: list[Sample], result: PurificationResult) -> dict:
    """The per-image record of stage 1, JSON-ready."""
    return {
        "method": result.method,
        "keep_fraction": result.keep_fraction,
        "subsets": int(result.score_table.shape[0]),
        "cut": result.cut,
        "images": [
            {
                "path": s.path,
                "subset": int(result.subsets[i]),
                "scores": [float(v) for v in result.score_table[:, i]],
                "aggregated": float(result.aggregated[i]),
                "kept": bool(result.kept[i]),
            }
            for i, s in enumerate(samples)
        ],
    }


def train_category(
    manifest: Manifest, category: str, config: TrainConfig, out_dir: str | Path
) -> TrainReport:
    """Train the final (purified) detector of one category and save it to ``out_dir``.

    Raises:
        PurificationError: K, keep fraction or subset sizes do not fit the training set.
        ImageLoadError: A bad image under the ``error`` policy.
    """
    out_dir = Path(out_dir)
    seconds: dict[str, float] = {}
    samples = manifest.select(split="train", category=category)
    if not samples:
        raise ValueError(f"no training images for category {category!r} in {manifest.root}")
    if config.purify:
        check_settings(len(samples), config.subsets, config.keep_fraction)

    start = time.perf_counter()
    loaded = load_images(samples, config.detector.input_size, config.bad_input)
    samples = loaded.samples
    if config.purify:
        check_settings(len(samples), config.subsets, config.keep_fraction)
    seconds["load"] = time.perf_counter() - start
    logger.info("%s: %d training images (%d skipped)", category, len(samples), len(loaded.skipped))

    start = time.perf_counter()
    detector = PatchCore(config.detector)
    embeddings = detector.embed(loaded.images)
    seconds["embed"] = time.perf_counter() - start

    result = None
    kept = np.ones(len(samples), dtype=bool)
    if config.purify:
        start = time.perf_counter()
        result = purify(
            detector,
            embeddings,
            config.subsets,
            config.keep_fraction,
            config.aggregate,
            config.seed,
        )
        kept = result.kept
        seconds["stage1"] = time.perf_counter() - start

    if kept.sum() < 2:
        raise PurificationError(
            f"{category}: the final model needs at least 2 training images, and "
            f"{int(kept.sum())} of {len(samples)} were kept; raise --keep-fraction or add images"
        )
    start = time.perf_counter()
    detector.fit(embeddings[kept])
    threshold = label_threshold(
        detector.calibration_scores(), config.threshold_quantile, config.threshold_margin
    )
    detector.set_threshold(threshold)
    seconds["final_fit"] = time.perf_counter() - start
    logger.info(
        "%s: final model fitted on %d images, memory bank %d, threshold %.4f",
        category,
        int(kept.sum()),
        detector.bank_size,
        threshold,
    )

    detector.save(out_dir)
    manifest.subset([s for s, k in zip(samples, kept, strict=True) if k]).save(
        out_dir / "purified_manifest.json"
    )
    stale = out_dir / "purification.json"
    if result is not None:
        table = purification_table(samples, result)
        stale.write_text(json.dumps(table, indent=1))
    elif stale.exists():  # a model folder reused for a run without purification
        stale.unlink()
    report = TrainReport(
        category=category,
        model_dir=str(out_dir),
        n_train=len(samples),
        n_kept=int(kept.sum()),
        n_skipped=len(loaded.skipped),
        threshold=threshold,
        bank_size=detector.bank_size,
        seconds={k: round(v, 3) for k, v in seconds.items()},
    )
    record = {
        "category": category,
        "data_root": manifest.root,
        "config": config.model_dump(mode="json"),
        "threshold_rule": (
            f"(1 + {config.threshold_margin}) x quantile {config.threshold_quantile} "
            "of the final model's leave-one-image-out scores of its training images"
        ),
        "skipped": loaded.skipped,
        **asdict(report),
    }
    (out_dir / "training.json").write_text(json.dumps(record, indent=1))
    logger.info("%s: model written to %s", category, out_dir)
    return report
