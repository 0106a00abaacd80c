"""The quality benchmark: a contamination sweep of purification against its bounds.

For every (dataset, category, seed) group and every contamination level alpha it measures:

* ``clean``: the final model fitted on the normal training images only (upper bound);
* ``none``: fitted on the whole contaminated set (no purification);
* ``<aggregation>/<keep rule>``: stage 1 with K sub-models, then the final model on the
  kept images, for every aggregation method and keep rule. Keep rules: ``auto`` (the
  library's automatic rule), ``auto@<k>`` (the same rule with another multiplier), a fixed
  keep fraction such as ``0.8``, and ``oracle`` (keep fraction ``1 - alpha``, for reference:
  it needs the true contamination, which nobody knows in practice).

Everything that can be shared is computed once per group: backbone features of every image,
the K sub-models of each alpha (:func:`noisyad.purification.fit_submodels` returns the score
table; aggregations and keep rules only re-read it), and one final model per distinct set
of training images (the clean set is the same at every alpha, and rules often agree).
Final models are fitted on their images in pool order so that equal sets share one fit.

:mod:`noisyad.bench.runner` runs the groups (in parallel processes, resumable).

Example:
    >>> group = load_group(SweepConfig.quick(), "demo", "brick", 0)   # doctest: +SKIP
    >>> cells = run_group(group, SweepConfig.quick())["cells"]          # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from noisyad import metrics
from noisyad.backbones import FeatureExtractor
from noisyad.bench.data import DATASETS, BenchGroup, demo_group, one_class_group
from noisyad.data.demo import TEXTURES
from noisyad.detectors import PatchCore, PatchCoreConfig
from noisyad.purification import (
    Aggregation,
    aggregate,
    auto_keep,
    fit_submodels,
    partition,
    select_kept,
)

logger = logging.getLogger(__name__)

QUICK_DEMO = {"n_train_normal": 30, "n_test_normal": 8, "n_test_defective": 8}
FRACTIONS = ("0.2", "0.5", "0.8", "oracle")
# Every aggregation with the automatic rule and with the library's fixed fraction (0.8); the
# other fixed fractions with the library's aggregation only (final-model fits are the cost).
DEFAULT_METHODS = (
    *(f"{a.value}/{r}" for a in Aggregation for r in ("auto", "0.8")),
    *(f"{Aggregation.cross_mean.value}/{r}" for r in FRACTIONS if r != "0.8"),
)
# Keep rules measured by their purification figures only (no final model), for every
# aggregation: cheap, and enough to see which rule removes the defects.
SELECTION_RULES = ("auto@2", "auto@2.5", "auto", "auto@4", "auto@5", *FRACTIONS)


class SweepConfig(BaseModel):
    """What the sweep covers (saved with the results)."""

    model_config = ConfigDict(extra="forbid")

    datasets: tuple[str, ...] = DATASETS
    alphas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.4)
    seeds: tuple[int, ...] = (0, 1, 2)
    demo_categories: tuple[str, ...] = TEXTURES
    demo_sizes: dict[str, int] = Field(default_factory=dict)
    classes: tuple[int, ...] = (0, 4, 8)
    one_class_train: int = 200
    one_class_test: int = 200
    one_class_size: int = 64
    subsets: int = 3
    methods: tuple[str, ...] = DEFAULT_METHODS
    selection_rules: tuple[str, ...] = SELECTION_RULES
    threads: int = 1
    jobs: int = 1

    @field_validator("datasets")
    @classmethod
    def _datasets(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            if value not in DATASETS:
                raise ValueError(f"unknown benchmark dataset {value!r}; choose from {DATASETS}")
        return values

    @field_validator("methods", "selection_rules")
    @classmethod
    def _known(cls, values: tuple[str, ...], info) -> tuple[str, ...]:
        for value in values:
            if info.field_name == "methods":
                split_method(value)
            else:
                keep_for(value, np.zeros(3), 0.0)
        return values

    @classmethod
    def quick(cls, **overrides) -> SweepConfig:
        """A sweep small enough for a test (well under a minute on two cores)."""
        settings = {
            "datasets": ("demo", "mnist"),
            "alphas": (0.0, 0.2),
            "seeds": (0,),
            "demo_categories": ("brick",),
            "demo_sizes": QUICK_DEMO,
            "classes": (0,),
            "one_class_train": 40,
            "one_class_test": 40,
            "methods": ("mean/auto", "cross_mean/auto", "cross_mean/0.8"),
            "selection_rules": ("auto@2", "0.5"),
        }
        return cls(**{**settings, **overrides})

    def groups(self) -> list[tuple[str, str, int]]:
        """Every (dataset, category, seed), largest work first."""
        out = []
        for dataset in self.datasets:
            categories = self.demo_categories if dataset == "demo" else map(str, self.classes)
            out += [(dataset, c, s) for c in categories for s in self.seeds]
        return out


def split_method(method: str) -> tuple[Aggregation, str]:
    """``"cross_mean/auto"`` -> (aggregation, keep rule)."""
    name, _, rule = method.partition("/")
    keep_for(rule or "?", np.zeros(3), 0.0)  # rejects an unknown rule early
    return Aggregation(name), rule


def keep_for(rule: str, aggregated: np.ndarray, alpha: float) -> np.ndarray:
    """The kept images of a keep rule (see the module docstring for the rule names)."""
    if rule == "auto":
        return auto_keep(aggregated)
    if rule.startswith("auto@"):
        return auto_keep(aggregated, float(rule.removeprefix("auto@")))
    if rule == "oracle":
        return select_kept(aggregated, max(1.0 - alpha, 1e-9))
    try:
        fraction = float(rule)
    except ValueError:
        raise ValueError(
            f"unknown keep rule {rule!r}: auto, auto@K, oracle or a fraction"
        ) from None
    return select_kept(aggregated, fraction)


def load_group(config: SweepConfig, dataset: str, category: str, seed: int) -> BenchGroup:
    """Build one group's data."""
    if dataset == "demo":
        return demo_group(None, category, seed, config.alphas, **config.demo_sizes)
    return one_class_group(
        dataset,
        int(category),
        seed,
        config.alphas,
        config.one_class_train,
        config.one_class_test,
        config.one_class_size,
    )


@dataclass
class FinalModels:
    """Fits, scores and measures one final model per distinct training set (memoised)."""

    detector: PatchCore
    pool_embeddings: np.ndarray
    test_embeddings: np.ndarray
    group: BenchGroup

    def __post_init__(self) -> None:
        self.cache: dict[bytes, dict] = {}
        self.fit_seconds = 0.0

    def measure(self, indices: np.ndarray) -> dict:
        """Test-set metrics of the final model fitted on pool images ``indices``."""
        chosen = np.unique(indices)
        key = chosen.tobytes()
        if key not in self.cache:
            start = time.perf_counter()
            model = self.detector.spawn()
            model.fit(self.pool_embeddings[chosen])
            result = model.score(self.test_embeddings)
            self.cache[key] = test_metrics(self.group, result.image_scores, result.anomaly_maps)
            self.fit_seconds += time.perf_counter() - start
        return self.cache[key]


def test_metrics(group: BenchGroup, scores: np.ndarray, maps: np.ndarray) -> dict:
    """Image AUROC, and pixel AUROC / AUPRO when the group has masks."""
    out = {"image_auroc": metrics.image_auroc(group.test_labels, scores)}
    if group.test_masks is not None:
        out["pixel_auroc"] = metrics.pixel_auroc(group.test_masks, maps)
        out["aupro"] = metrics.aupro(group.test_masks, maps, fpr_limit=0.3)
    return out


def run_group(
    group: BenchGroup, config: SweepConfig, backbone: FeatureExtractor | None = None
) -> dict:
    """Every cell of one group; see the module docstring."""
    start = time.perf_counter()
    detector_config = PatchCoreConfig(input_size=group.input_size)
    detector = PatchCore(detector_config, backbone=backbone)
    pool_embeddings = detector.embed(group.pool)
    models = FinalModels(detector, pool_embeddings, detector.embed(group.test_images), group)
    embed_seconds = time.perf_counter() - start
    where = {"dataset": group.dataset, "category": group.category, "seed": group.seed}

    cells, selections, tables = [], [], []
    stage1_seconds = 0.0
    for alpha in config.alphas:
        train = group.train[alpha]
        defective = group.pool_defective[train]
        base = {**where, "alpha": alpha, "n_train": len(train)}

        def cell(method: str, kept: np.ndarray, base=base, train=train, defective=defective):
            figures = metrics.purification_figures(defective, kept)
            return {**base, "method": method, **models.measure(train[kept]), **figures}

        cells.append(cell("clean", ~defective))
        cells.append(cell("none", np.ones(len(train), dtype=bool)))

        tick = time.perf_counter()
        subsets = partition(len(train), config.subsets, group.seed)
        table = fit_submodels(detector, pool_embeddings[train], subsets)
        stage1_seconds += time.perf_counter() - tick
        tables.append(
            {
                **base,
                "subsets": subsets.tolist(),
                "defective": defective.tolist(),
                "scores": np.round(table, 6).tolist(),
            }
        )

        aggregated = {a: aggregate(table, subsets, a) for a in Aggregation}
        for method in config.methods:
            name, rule = split_method(method)
            cells.append(cell(method, keep_for(rule, aggregated[name], alpha)))
        for name in Aggregation:
            for rule in config.selection_rules:
                kept = keep_for(rule, aggregated[name], alpha)
                figures = metrics.purification_figures(defective, kept)
                selections.append({**base, "method": f"{name.value}/{rule}", **figures})

    seconds = {
        "embed": embed_seconds,
        "stage1": stage1_seconds,
        "final_models": models.fit_seconds,
        "total": time.perf_counter() - start,
    }
    logger.info(
        "%s %s seed %d: %d cells, %d final models fitted, %.0f s",
        group.dataset,
        group.category,
        group.seed,
        len(cells),
        len(models.cache),
        seconds["total"],
    )
    seconds = {k: round(v, 2) for k, v in seconds.items()}
    n_fits = len(models.cache)
    timing = {**where, "n_final_models": n_fits, "n_pool": len(group.pool), "seconds": seconds}
    return {"cells": cells, "selections": selections, "tables": tables, "timing": timing}
