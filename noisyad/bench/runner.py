"""Running the quality sweep: worker processes, resumable storage of groups, machine facts.

:func:`run_sweep` runs every (dataset, category, seed) group of a
:class:`~noisyad.bench.quality.SweepConfig`, one process per job, each with its own backbone
and ``threads`` torch threads, and keeps every finished group on disk so that a stopped sweep
resumes where it stopped (only with the same measured settings).

Example:
    >>> results = run_sweep(SweepConfig.quick(), store_dir=Path("/tmp/groups"))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

import torch

from noisyad.backbones import FeatureExtractor, create_backbone
from noisyad.bench.data import check_available
from noisyad.bench.quality import SweepConfig, load_group, run_group
from noisyad.detectors import PatchCoreConfig

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, dict], None]

_WORKER_BACKBONE = None


def _worker_init(threads: int, level: int) -> None:
    global _WORKER_BACKBONE
    torch.set_num_threads(threads)
    logging.basicConfig(level=level, format="%(asctime)s %(processName)s %(message)s")
    for chatty in ("noisyad.data", "noisyad.purification"):  # per image set / sub-model lines
        logging.getLogger(chatty).setLevel(max(level, logging.WARNING))
    _WORKER_BACKBONE = None


def _worker_run(config: SweepConfig, spec: tuple[str, str, int]) -> dict:
    global _WORKER_BACKBONE
    if _WORKER_BACKBONE is None:
        _WORKER_BACKBONE = new_backbone()
    return run_group(load_group(config, *spec), config, _WORKER_BACKBONE)


def new_backbone() -> FeatureExtractor:
    """The default detector's backbone (ImageNet MobileNetV2), shared by every group."""
    default = PatchCoreConfig()
    return create_backbone(default.backbone, default.weights, default.layers)


def machine_info() -> dict:
    """What the numbers were measured on."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = platform.processor() or "unknown"
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as handle:
            names = [ln.split(":", 1)[1].strip() for ln in handle if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(memory, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def config_key(config: SweepConfig) -> str:
    """Identifies the measured settings (not how many processes ran them)."""
    settings = config.model_dump(mode="json", exclude={"jobs", "threads"})
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


class GroupStore:
    """Finished groups on disk, so an interrupted sweep resumes where it stopped."""

    def __init__(self, directory: Path | None, config: SweepConfig) -> None:
        self.directory = None if directory is None else Path(directory) / config_key(config)

    def path(self, spec: tuple[str, str, int]) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / f"{spec[0]}-{spec[1]}-seed{spec[2]}.json"

    def load(self, spec: tuple[str, str, int]) -> dict | None:
        path = self.path(spec)
        return json.loads(path.read_text()) if path and path.is_file() else None

    def save(self, spec: tuple[str, str, int], result: dict) -> None:
        path = self.path(spec)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result))


def run_sweep(
    config: SweepConfig, progress: Progress | None = None, store_dir: Path | None = None
) -> dict:
    """Run every group (in ``config.jobs`` processes) and return the raw results.

    Args:
        config: What to sweep.
        progress: Optional callable ``(done, total, timing)`` called after each group.
        store_dir: Keep each finished group here and reuse groups found there (same
            settings only), so that a stopped sweep resumes.

    Raises:
        DatasetUnavailableError: A requested dataset is not installed.
    """
    for dataset in config.datasets:
        check_available(dataset)
    specs = config.groups()
    store = GroupStore(store_dir, config)
    results: list[dict] = [r for r in map(store.load, specs) if r is not None]
    todo = [s for s in specs if store.load(s) is None]
    if results:
        logger.info("resuming: %d of %d groups already done", len(results), len(specs))
    start = time.perf_counter()
    level = logging.getLogger("noisyad").getEffectiveLevel()

    def finished(spec: tuple[str, str, int], result: dict) -> None:
        store.save(spec, result)
        results.append(result)
        if progress:
            progress(len(results), len(specs), result["timing"])

    if config.jobs <= 1:
        previous = torch.get_num_threads()
        torch.set_num_threads(config.threads)
        try:
            backbone = new_backbone()
            for spec in todo:
                finished(spec, run_group(load_group(config, *spec), config, backbone))
        finally:
            torch.set_num_threads(previous)
    elif todo:
        context = get_context("spawn")
        with ProcessPoolExecutor(
            config.jobs, context, initializer=_worker_init, initargs=(config.threads, level)
        ) as pool:
            futures = {pool.submit(_worker_run, config, spec): spec for spec in todo}
            for future in as_completed(futures):
                finished(futures[future], future.result())

    order = {spec: i for i, spec in enumerate(specs)}
    results.sort(
        key=lambda r: order[tuple(r["timing"][k] for k in ("dataset", "category", "seed"))]
    )
    return {
        "meta": {
            "config": config.model_dump(mode="json"),
            "machine": machine_info(),
            "seconds": round(time.perf_counter() - start, 1),
            "group_seconds": round(sum(r["timing"]["seconds"]["total"] for r in results), 1),
        },
        "cells": [c for r in results for c in r["cells"]],
        "selections": [c for r in results for c in r["selections"]],
        "tables": [t for r in results for t in r["tables"]],
        "timing": [r["timing"] for r in results],
    }
