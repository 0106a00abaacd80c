"""A run-time estimate of the quality sweep, printed before it starts.

The cost of the sweep is the memory-bank work: a greedy coreset over ``n`` patches costs
about ``a * n**2`` (``0.1 n`` passes over ``n`` rows), and scoring ``q`` patches against a bank
of ``m`` costs about ``b * q * m``. Both constants are measured here on this machine in a
second or two, at the sweep's thread count, then summed over the planned fits (every planned
method counted as its own fit, so sharing makes the real run shorter).

Example:
    >>> seconds = estimate_seconds(SweepConfig.quick())   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from noisyad.data.demo import n_defective_for
from noisyad.detectors.patchcore import greedy_coreset, nearest_sq_distance

logger = logging.getLogger(__name__)

DEMO_SIZE = 128
STRIDE = 8
FEATURES = 152
CORESET_RATIO = 0.1


def calibrate(threads: int, n: int = 32_000) -> tuple[float, float]:
    """Seconds per patch**2 of a coreset, and per patch x bank-row of a nearest-row search."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # n: about one demo training set (120 images of 256 patches) by default.
        features = torch.randn(n, FEATURES, generator=torch.Generator().manual_seed(0))
        start = time.perf_counter()
        greedy_coreset(features, n // 10, seed=0)
        a = (time.perf_counter() - start) / n**2
        bank = features[: n // 10]
        start = time.perf_counter()
        nearest_sq_distance(features, bank, (bank * bank).sum(1), 2048)
        b = (time.perf_counter() - start) / (n * (n // 10))
    finally:
        torch.set_num_threads(previous)
    return a, b


def fit_cost(n_images: float, n_test: int, patches: int, a: float, b: float) -> float:
    """One final model: coreset over its patches plus scoring the test set."""
    n = n_images * patches
    return a * n**2 + b * n_test * patches * CORESET_RATIO * n


def kept_images(rule: str, n: int, n_train: int) -> float:
    """Expected kept images of a rule (``n`` normal of ``n_train`` training images)."""
    if rule in ("oracle",) or rule.startswith("auto"):
        return n
    return float(rule) * n_train


def estimate_seconds(config, a: float | None = None, b: float | None = None) -> float:
    """Estimated wall time of ``config``'s sweep on this machine, in seconds."""
    if a is None or b is None:
        a, b = calibrate(config.threads, 32_000 if config.one_class_train > 50 else 8_000)
    total = 0.0
    for dataset, _, _ in config.groups():
        if dataset == "demo":
            n = config.demo_sizes.get("n_train_normal", 120)
            n_test = config.demo_sizes.get("n_test_normal", 30)
            n_test += config.demo_sizes.get("n_test_defective", 30)
            patches = (DEMO_SIZE // STRIDE) ** 2
        else:
            n, n_test = config.one_class_train, 2 * config.one_class_test
            patches = (config.one_class_size // STRIDE) ** 2
        total += fit_cost(n, n_test, patches, a, b)  # the clean model, shared by every alpha
        for alpha in config.alphas:
            n_train = n + n_defective_for(alpha, n)
            sizes = [n_train] + [
                kept_images(m.partition("/")[2], n, n_train) for m in config.methods
            ]
            total += sum(fit_cost(s, n_test, patches, a, b) for s in sizes)
            k = config.subsets
            stage1 = k * a * (n_train / k * patches) ** 2
            stage1 += b * n_train * patches * CORESET_RATIO * n_train * patches
            total += stage1
    # Limitation: the cost per patch**2 is measured at one size; larger banks run slower per
    # patch**2 (cache misses) and other jobs on the machine slow everything down, so the
    # estimate can be short by a factor of two. Measuring two sizes would give the exponent.
    jobs = max(1, config.jobs)
    estimate = float(total / jobs * 1.3)  # embedding, metrics and data: about 30 % on top
    logger.debug("estimate: a=%.3g s/patch^2, b=%.3g s/(patch*row)", a, b)
    return float(np.round(estimate, 1))
