"""The speed benchmark: where the main job spends its time and how the cost grows.

Sections (each returns a JSON-ready dict; :func:`speed_markdown` turns them into tables):

* :func:`stage_times`: wall time of every stage of the main job (demo data at alpha 0.2,
  load, embed, stage 1, final fit, evaluate, export) per demo category, run exactly as
  ``scripts/main.sh`` runs it (torch's default thread count);
* :func:`extractor_throughput`: images/s of the feature extractor (backbone + local
  aggregation, i.e. :class:`~noisyad.detectors.patchcore.PatchEmbedder`, exported alone to
  ONNX) in PyTorch eager mode and in ONNX Runtime at batch 1 and 16;
* :func:`stage1_vs_k`: stage-1 wall time for several K on one demo category.

:mod:`noisyad.bench.scaling` measures how the coreset and training costs grow.

Example:
    >>> report = extractor_throughput(Path("/tmp"), threads=1)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

MAIN_JOB_ALPHA = 0.2


# ----------------------------------------------------------------------------- stages


def stage_times(
    work_dir: Path, categories: tuple[str, ...] = ("brick", "grass", "gravel"), **demo_sizes
) -> dict:
    """Per-stage wall time of the main job, per category (see the module docstring)."""
    from noisyad.data import open_source
    from noisyad.data.demo import make_demo_dataset
    from noisyad.evaluation import evaluate_model
    from noisyad.export import export_onnx
    from noisyad.training import TrainConfig, train_category

    start = time.perf_counter()
    make_demo_dataset(
        work_dir / "demo", MAIN_JOB_ALPHA, 0, categories=categories, overwrite=True, **demo_sizes
    )
    demo_seconds = time.perf_counter() - start
    manifest = open_source(work_dir / "demo")
    per_category = {}
    for category in categories:
        model_dir = work_dir / "models" / category
        report = train_category(manifest, category, TrainConfig(), model_dir)
        seconds = dict(report.seconds)
        start = time.perf_counter()
        evaluate_model(model_dir, manifest, category)
        seconds["evaluate"] = time.perf_counter() - start
        start = time.perf_counter()
        export_onnx(model_dir, work_dir / f"{category}.onnx")
        seconds["export"] = time.perf_counter() - start
        seconds["total"] = sum(seconds.values())
        per_category[category] = {k: round(v, 2) for k, v in seconds.items()}
        per_category[category]["n_train"] = report.n_train
        per_category[category]["bank_size"] = report.bank_size
    return {
        "threads": torch.get_num_threads(),
        "demo_data_seconds": round(demo_seconds, 2),
        "categories": per_category,
    }


# ----------------------------------------------------------------------------- extractor


def _images_per_second(run: Callable, images: np.ndarray, batch: int, min_seconds: float) -> float:
    """Throughput of ``run(batch_images)`` after one warm-up call."""
    chunk = images[:batch]
    run(chunk)
    done, start = 0, time.perf_counter()
    while True:
        run(chunk)
        done += batch
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and done >= 4 * batch:
            return done / elapsed


def extractor_throughput(
    work_dir: Path,
    batches: tuple[int, ...] = (1, 16),
    threads: int = 1,
    min_seconds: float = 3.0,
    input_size: int = 128,
) -> dict:
    """PyTorch eager vs ONNX Runtime images/s of the feature extractor (one run each)."""
    import onnxruntime as ort

    from noisyad.detectors import PatchCore, PatchCoreConfig

    torch.set_num_threads(threads)
    embedder = PatchCore(PatchCoreConfig(input_size=input_size)).embedder.eval()
    path = work_dir / "embedder.onnx"
    example = torch.zeros(2, input_size, input_size, 3, dtype=torch.uint8)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its age
        torch.onnx.export(
            embedder,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["features"],
            dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (max(batches), input_size, input_size, 3), dtype=np.uint8)

    @torch.inference_mode()
    def eager(batch: np.ndarray) -> np.ndarray:
        return embedder(torch.from_numpy(batch)).numpy()

    def onnx(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {"image": batch})[0]

    difference = float(np.abs(eager(images[:2]) - onnx(images[:2])).max())
    rows = []
    for batch in batches:
        torch_ips = _images_per_second(eager, images, batch, min_seconds)
        onnx_ips = _images_per_second(onnx, images, batch, min_seconds)
        rows.append(
            {
                "batch": batch,
                "pytorch_images_per_s": round(torch_ips, 1),
                "onnxruntime_images_per_s": round(onnx_ips, 1),
                "onnx_over_pytorch": round(onnx_ips / torch_ips, 2),
            }
        )
    return {
        "module": "PatchEmbedder (backbone + local aggregation), exported alone",
        "input_size": input_size,
        "threads": threads,
        "max_abs_difference": difference,
        "rows": rows,
    }


# ----------------------------------------------------------------------------- stage 1


def stage1_vs_k(
    work_dir: Path,
    ks: tuple[int, ...] = (2, 3, 5),
    category: str = "brick",
    threads: int = 1,
    **demo_sizes,
) -> dict:
    """Stage-1 wall time (fit K sub-models, score every image) on one demo category."""
    from noisyad.data import load_images, open_source
    from noisyad.data.demo import make_demo_dataset
    from noisyad.detectors import PatchCore, PatchCoreConfig
    from noisyad.purification import purify

    torch.set_num_threads(threads)
    make_demo_dataset(
        work_dir / "demo-k",
        MAIN_JOB_ALPHA,
        0,
        categories=(category,),
        overwrite=True,
        **demo_sizes,
    )
    samples = open_source(work_dir / "demo-k").select(split="train", category=category)
    detector = PatchCore(PatchCoreConfig())
    embeddings = detector.embed(load_images(samples, 128).images)
    rows = []
    for k in ks:
        start = time.perf_counter()
        purify(detector, embeddings, k=k, keep_fraction=0.8, seed=0)
        rows.append({"k": k, "seconds": round(time.perf_counter() - start, 2)})
    return {"category": category, "n_train": len(samples), "threads": threads, "rows": rows}


# ----------------------------------------------------------------------------- tables


def speed_markdown(report: dict) -> str:
    """The speed report as markdown tables."""
    parts = []
    if "stages" in report:
        stages = report["stages"]
        names = ["load", "embed", "stage1", "final_fit", "evaluate", "export", "total"]
        lines = [
            f"| category | n train | {' | '.join(names)} |",
            "|---|---:|" + "---:|" * len(names),
        ]
        for category, s in stages["categories"].items():
            cells = " | ".join(f"{s.get(n, 0):.1f}" for n in names)
            lines.append(f"| {category} | {s['n_train']} | {cells} |")
        parts.append(
            f"### Main job stages (s; {stages['threads']} threads; demo data written in "
            f"{stages['demo_data_seconds']:.1f} s)\n\n" + "\n".join(lines)
        )
    if "extractor" in report:
        ex = report["extractor"]
        lines = [
            "| batch | PyTorch eager (img/s) | ONNX Runtime (img/s) | ONNX / PyTorch |",
            "|---:|---:|---:|---:|",
        ]
        for r in ex["rows"]:
            lines.append(
                f"| {r['batch']} | {r['pytorch_images_per_s']:.1f} | "
                f"{r['onnxruntime_images_per_s']:.1f} | {r['onnx_over_pytorch']:.2f} |"
            )
        parts.append(
            f"### Feature extraction ({ex['module']}; {ex['input_size']} px; {ex['threads']} "
            f"thread(s); max |difference| {ex['max_abs_difference']:.1e})\n\n" + "\n".join(lines)
        )
    if "coreset" in report:
        co = report["coreset"]
        lines = [
            "| patches | selected | seconds | input MB | peak extra MB |",
            "|---:|---:|---:|---:|---:|",
        ]
        rows = co["rows"] + ([co["threads_2"]] if co.get("threads_2") else [])
        for r in rows:
            label = f"{r['patches']:,}" + (" (2 threads)" if r["threads"] == 2 else "")
            lines.append(
                f"| {label} | {r['selected']:,} | {r['seconds']:.2f} | {r['input_mb']:.0f} | "
                f"{r['peak_extra_mb']:.0f} |"
            )
        parts.append(
            f"### Greedy coreset ({co['dim']} dims, {co['ratio']:.0%} selected; time ~ "
            f"n^{co['time_exponent']}, memory ~ n^{co['memory_exponent']})\n\n" + "\n".join(lines)
        )
    if "stage1" in report:
        st = report["stage1"]
        lines = ["| K | stage-1 seconds |", "|---:|---:|"]
        lines += [f"| {r['k']} | {r['seconds']:.1f} |" for r in st["rows"]]
        parts.append(
            f"### Stage 1 vs K ({st['category']}, {st['n_train']} training images, "
            f"{st['threads']} thread(s))\n\n" + "\n".join(lines)
        )
    if "capacity" in report:
        ca = report["capacity"]
        lines = [
            "| training images | patches | memory bank | seconds | peak extra MB |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in ca["rows"]:
            lines.append(
                f"| {r['n_train']} | {r['patches']:,} | {r['bank_size']:,} | {r['seconds']:.1f} "
                f"| {r['peak_extra_mb']:.0f} |"
            )
        text = "\n".join(lines)
        if ca.get("max_training_images"):
            text += (
                f"\n\nExtrapolation (not measured): {ca['mb_per_training_image']:.2f} MB per "
                f"training image -> about {ca['max_training_images']:,} images "
                f"({ca['max_patches']:,} patches, memory bank {ca['max_bank_size']:,}) fill "
                f"{ca['memory_gb']:g} GB; training time grows as n^{ca['time_exponent']}, "
                f"so that run would take about {ca['hours_at_max']:,} h."
            )
        parts.append(f"### Training one category: memory and time vs size\n\n{text}")
    return "\n\n".join(parts) + "\n"
