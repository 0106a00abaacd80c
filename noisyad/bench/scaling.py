"""How the cost grows: coreset time and memory per bank size, training memory per image.

* :func:`coreset_scaling`: :func:`~noisyad.detectors.patchcore.greedy_coreset` time and peak
  extra memory as the patch count grows (each size in a fresh process);
* :func:`capacity`: peak memory and time of one training run against the training-set size,
  and the size that would fill the machine's memory (an extrapolation, said so in the output).

Memory is the resident set size of the measuring process, sampled every few milliseconds by
:class:`PeakMemory` (torch's CPU allocations are invisible to ``tracemalloc``).

Example:
    >>> report = coreset_scaling((10_000, 40_000), threads=1)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

MAIN_JOB_ALPHA = 0.2


def rss_mb() -> float:
    """Resident memory of this process now, in MB (Linux ``/proc``)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory:
    """Samples this process's resident memory in a thread; ``peak`` is the largest seen (MB)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.before = rss_mb()
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def _in_fresh_process(function: Callable, *args):
    """Run ``function(*args)`` in a new interpreter, so its memory peak is its own."""
    with ProcessPoolExecutor(1, get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def power_law(sizes: Sequence[float], values: Sequence[float]) -> float:
    """Exponent ``p`` of ``value ~ size**p`` (least squares on logs)."""
    return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


# ----------------------------------------------------------------------------- coreset


def _coreset_once(n: int, dim: int, ratio: float, threads: int) -> dict:
    from noisyad.detectors.patchcore import greedy_coreset

    torch.set_num_threads(threads)
    features = torch.randn(n, dim, generator=torch.Generator().manual_seed(0))
    with PeakMemory() as memory:
        start = time.perf_counter()
        greedy_coreset(features, max(1, int(ratio * n)), seed=0)
        seconds = time.perf_counter() - start
    return {
        "patches": n,
        "selected": max(1, int(ratio * n)),
        "threads": threads,
        "seconds": round(seconds, 2),
        "input_mb": round(features.numel() * 4 / 2**20, 1),
        "peak_extra_mb": round(memory.peak - memory.before, 1),
    }


def coreset_scaling(
    sizes: tuple[int, ...] = (10_000, 40_000, 160_000, 320_000),
    dim: int = 152,
    ratio: float = 0.1,
    threads: int = 1,
    thread_check: int | None = 40_000,
) -> dict:
    """Greedy coreset time and peak extra memory per patch count, each in a fresh process.

    ``thread_check``: one size also run at 2 threads, to show the effect of threading.
    """
    rows = []
    for n in sizes:
        rows.append(_in_fresh_process(_coreset_once, n, dim, ratio, threads))
        logger.info("coreset %d patches: %.1f s", n, rows[-1]["seconds"])
    out = {
        "dim": dim,
        "ratio": ratio,
        "rows": rows,
        "time_exponent": round(power_law(sizes, [r["seconds"] for r in rows]), 2),
        "memory_exponent": round(power_law(sizes, [max(r["peak_extra_mb"], 0.1) for r in rows]), 2),
    }
    if thread_check:
        out["threads_2"] = _in_fresh_process(_coreset_once, thread_check, dim, ratio, 2)
    return out


# ----------------------------------------------------------------------------- capacity


def _train_once(n_train_normal: int, threads: int) -> dict:
    from noisyad.data import open_source
    from noisyad.data.demo import make_demo_dataset
    from noisyad.training import TrainConfig, train_category

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="noisyad-capacity-") as tmp:
        root = Path(tmp) / "demo"
        make_demo_dataset(
            root, MAIN_JOB_ALPHA, 0, categories=("brick",), n_train_normal=n_train_normal
        )
        manifest = open_source(root)
        with PeakMemory(0.01) as memory:
            start = time.perf_counter()
            report = train_category(manifest, "brick", TrainConfig(), Path(tmp) / "model")
            seconds = time.perf_counter() - start
    return {
        "n_train": report.n_train,
        "patches": report.n_train * 256,
        "bank_size": report.bank_size,
        "seconds": round(seconds, 1),
        "stage_seconds": report.seconds,
        "baseline_mb": round(memory.before, 1),
        "peak_extra_mb": round(memory.peak - memory.before, 1),
    }


def capacity(
    n_normal: tuple[int, ...] = (60, 120, 240), threads: int = 1, memory_gb: float = 24.0
) -> dict:
    """Peak memory and time of training one category against its size, and an extrapolation.

    Each size trains in a fresh process (demo brick, alpha 0.2, default settings). Memory is
    fitted as a line in the number of training images, time as a power law; both are then
    extrapolated to the training set whose peak would fill ``memory_gb``.
    """
    # Limitation: memory and time are fitted on three small runs (75-300 images at the default
    # sizes); the largest size is an extrapolation, and a run near it would be needed to confirm.
    rows = [_in_fresh_process(_train_once, n, threads) for n in n_normal]
    n = np.array([r["n_train"] for r in rows], dtype=float)
    extra = np.array([r["peak_extra_mb"] for r in rows])
    slope, intercept = np.polyfit(n, extra, 1)
    baseline = float(np.mean([r["baseline_mb"] for r in rows]))
    budget = memory_gb * 1024 - baseline
    max_images = int((budget - intercept) / slope) if slope > 0 else None
    exponent = power_law(n, [r["seconds"] for r in rows])
    out = {
        "rows": rows,
        "threads": threads,
        "mb_per_training_image": round(float(slope), 3),
        "time_exponent": round(exponent, 2),
        "memory_gb": memory_gb,
        "extrapolated": True,
    }
    if max_images:
        hours = rows[-1]["seconds"] * (max_images / n[-1]) ** exponent / 3600
        out.update(
            {
                "max_training_images": max_images,
                "max_patches": max_images * 256,
                "max_bank_size": int(max_images * 256 * 0.1),
                "hours_at_max": round(float(hours), 1),
            }
        )
    return out
