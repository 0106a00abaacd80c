"""ONNX Runtime memory of the exported PatchCore graph: chunked vs full nearest-neighbour search.

The exported graph walks the memory bank in slices of ``nn_chunk`` rows and keeps a running
minimum, so ONNX Runtime never holds the whole patches x bank distance matrix. This benchmark
shows what that saves. It trains (or loads) a model on the demo data, exports it, then swaps
in a large synthetic memory bank (default 200,000 rows) and exports it twice: with the
model's chunk size, and with ``nn_chunk`` >= the bank size, which materialises the whole
distance matrix. Each graph runs one batch in a fresh process; its peak RSS is read with
``resource.getrusage(RUSAGE_CHILDREN)`` by a small runner process that has no other child.

It also prints the largest |ONNX - PyTorch| image-score difference on the demo test set.

Usage:
    .venv/bin/python benchmarks/onnx_memory.py                       # demo data, train, measure
    .venv/bin/python benchmarks/onnx_memory.py --model runs/main/models/brick \\
        --data runs/main/demo --json runs/onnx_memory.json
    .venv/bin/python benchmarks/onnx_memory.py --bank-rows 50000     # lighter run

Numbers only, no pass/fail: memory and time depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

logger = logging.getLogger("onnx_memory")

MIB = 1024 * 1024


# ----------------------------------------------------------------------------- child side
# These two modes run in fresh interpreters and import only numpy and onnxruntime, so that
# the measured RSS is ONNX Runtime's and nothing else's.


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def child_measure(onnx_path: str, batch: int, repeats: int) -> None:
    """Create a session, run ``repeats`` batches of random tiles, print the facts as JSON."""
    import numpy as np
    import onnxruntime as ort

    baseline = rss_bytes()
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    after_session = rss_bytes()
    size = session.get_inputs()[0].shape[1]
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        scores = session.run(["image_score"], {"image": images})[0]
        seconds.append(time.perf_counter() - start)
    facts = {
        "rss_before_session": baseline,
        "rss_after_session": after_session,
        "seconds": seconds,
        "image_scores": scores.astype(float).tolist(),
    }
    print(json.dumps(facts))


def runner_measure(onnx_path: str, batch: int, repeats: int) -> None:
    """Run :func:`child_measure` as this process's only child and add its peak RSS."""
    command = [sys.executable, __file__, "--child", onnx_path, str(batch), str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(json.dumps({"error": done.stderr.strip().splitlines()[-1:]}))
        return
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    # Linux reports ru_maxrss in KiB; the only child this process ever had is the one above.
    facts["peak_rss"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps(facts))


def measure(onnx_path: Path, batch: int, repeats: int) -> dict:
    """Measure one graph in a fresh runner + child pair (see :func:`runner_measure`)."""
    command = [sys.executable, __file__, "--runner", str(onnx_path), str(batch), str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- parent side


def build_or_load(args: argparse.Namespace, workdir: Path):
    """Return (detector, model folder, manifest) from --model/--data or a fresh demo run."""
    from noisyad.data import open_source
    from noisyad.data.demo import make_demo_dataset
    from noisyad.detectors import load_detector
    from noisyad.training import TrainConfig, train_category

    data = Path(args.data) if args.data else workdir / "demo"
    if not args.data:
        logger.info("writing the demo dataset (default sizes, %s) to %s", args.category, data)
        make_demo_dataset(data, contamination=0.2, categories=(args.category,))
    manifest = open_source(data)
    model_dir = Path(args.model) if args.model else workdir / "model"
    if not args.model:
        logger.info("training %s (default settings) into %s", args.category, model_dir)
        train_category(manifest, args.category, TrainConfig(), model_dir)
    return load_detector(str(model_dir), device="cpu"), model_dir, manifest


def parity(detector, model_dir: Path, manifest, category: str, workdir: Path) -> dict:
    """Export the real model and compare ONNX with PyTorch on the labelled test set."""
    import numpy as np

    from noisyad.data import load_images
    from noisyad.export import export_onnx, onnx_session, run_onnx

    path = export_onnx(model_dir, workdir / "model.onnx")
    samples = [s for s in manifest.select(split="test", category=category) if s.label is not None]
    images = load_images(samples, detector.input_size).images
    torch_result = detector.score(detector.embed(images))
    out = run_onnx(onnx_session(path, ["CPUExecutionProvider"]), images)
    return {
        "n_images": len(images),
        "max_abs_image_score_diff": float(
            np.abs(out["image_score"] - torch_result.image_scores).max()
        ),
        "max_abs_map_diff": float(np.abs(out["anomaly_map"] - torch_result.anomaly_maps).max()),
        "labels_equal_to_threshold_rule": bool(
            np.array_equal(out["label"], torch_result.image_scores > detector.threshold)
        ),
        "onnx_path": str(path),
    }


def with_synthetic_bank(detector, rows: int, nn_chunk: int, seed: int):
    """The detector with its memory bank replaced by ``rows`` random rows shaped like it."""
    import torch

    from noisyad.detectors.patchcore import PatchCoreHead

    real = detector.head.memory_bank
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(rows, real.shape[1], generator=generator)
    bank = noise * real.std(dim=0) + real.mean(dim=0)
    c = detector.config
    detector.head = PatchCoreHead(bank, c.input_size, c.blur_sigma, nn_chunk, detector.threshold)
    detector.head.eval()
    return detector


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def run(args: argparse.Namespace, workdir: Path) -> dict:
    """Build everything, measure every variant, return the report."""
    from noisyad.export import export_onnx

    detector, model_dir, manifest = build_or_load(args, workdir)
    n_patches = args.batch * (detector.input_size // detector.config.patch_stride) ** 2
    chunk = detector.config.nn_chunk
    report = {
        "batch": args.batch,
        "patches_per_batch": n_patches,
        "feature_dim": int(detector.head.memory_bank.shape[1]),
        "parity": parity(detector, model_dir, manifest, args.category, workdir),
        "variants": [],
    }

    variants = [("trained model", report["parity"]["onnx_path"], detector.bank_size, chunk)]
    synthetic = (("synthetic, chunked", chunk), ("synthetic, full matrix", args.bank_rows))
    for name, nn_chunk in synthetic:
        matrix = n_patches * min(nn_chunk, args.bank_rows) * 4
        # Measured here: the full-matrix graph peaks at about 4.3 distance matrices.
        if nn_chunk >= args.bank_rows and 5 * matrix > 0.9 * available_bytes():
            gib = matrix / 2**30
            logger.warning("skipping %s: a %.1f GiB distance matrix does not fit", name, gib)
            continue
        with_synthetic_bank(detector, args.bank_rows, nn_chunk, args.seed)
        path = workdir / f"bank{args.bank_rows}_chunk{nn_chunk}.onnx"
        start = time.perf_counter()
        export_onnx(detector, path)
        logger.info("exported %s in %.1f s", path.name, time.perf_counter() - start)
        variants.append((name, str(path), args.bank_rows, nn_chunk))

    for name, path, rows, nn_chunk in variants:
        logger.info("measuring %s (bank %d, chunk %d)", name, rows, nn_chunk)
        facts = measure(Path(path), args.batch, args.repeats)
        facts.update(
            variant=name,
            bank_rows=rows,
            nn_chunk=nn_chunk,
            onnx_bytes=Path(path).stat().st_size,
            distance_block_bytes=n_patches * min(nn_chunk, rows) * 4,
        )
        report["variants"].append(facts)

    synthetic = [v for v in report["variants"] if v["variant"].startswith("synthetic")]
    if len(synthetic) == 2 and "image_scores" in synthetic[0] and "image_scores" in synthetic[1]:
        a, b = synthetic[0]["image_scores"], synthetic[1]["image_scores"]
        report["chunked_vs_full_max_abs_score_diff"] = max(
            abs(x - y) for x, y in zip(a, b, strict=True)
        )
    return report


def print_report(report: dict) -> None:
    """The table of variants and the parity figures."""
    header = (
        f"{'variant':<24} {'bank rows':>9} {'chunk':>7} {'onnx MiB':>8} {'block MiB':>9} "
        f"{'session MiB':>11} {'peak MiB':>9} {'inference MiB':>13} {'s/batch':>8}"
    )
    print(
        f"ONNX Runtime memory at batch {report['batch']} ({report['patches_per_batch']} patches, "
        f"D = {report['feature_dim']})"
    )
    print(header)
    print("-" * len(header))
    for v in report["variants"]:
        if "error" in v:
            print(f"{v['variant']:<24} failed: {v['error']}")
            continue
        extra = v["peak_rss"] - v["rss_after_session"]
        print(
            f"{v['variant']:<24} {v['bank_rows']:>9} {v['nn_chunk']:>7} "
            f"{v['onnx_bytes'] / MIB:>8.1f} {v['distance_block_bytes'] / MIB:>9.1f} "
            f"{v['rss_after_session'] / MIB:>11.1f} {v['peak_rss'] / MIB:>9.1f} "
            f"{extra / MIB:>13.1f} {min(v['seconds']):>8.2f}"
        )
    print(
        "block = one patches x chunk float32 distance block; session = RSS after session "
        "creation; inference = peak - session"
    )
    p = report["parity"]
    print(
        f"ONNX vs PyTorch on {p['n_images']} demo test images: max |image score diff| "
        f"{p['max_abs_image_score_diff']:.3g}, max |map diff| {p['max_abs_map_diff']:.3g}, "
        f"labels follow the threshold: {p['labels_equal_to_threshold_rule']}"
    )
    if "chunked_vs_full_max_abs_score_diff" in report:
        print(
            "chunked vs full-matrix graph, same batch: max |image score diff| "
            f"{report['chunked_vs_full_max_abs_score_diff']:.3g}"
        )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="dataset folder (default: write the demo data)")
    parser.add_argument("--model", help="trained model folder (default: train one)")
    parser.add_argument("--category", default="brick", help="demo category (default brick)")
    parser.add_argument("--bank-rows", type=int, default=200_000, help="synthetic bank rows")
    parser.add_argument("--batch", type=int, default=16, help="images per measured batch")
    parser.add_argument("--repeats", type=int, default=2, help="batches run per measurement")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic bank")
    parser.add_argument("--workdir", help="where to write data, models and graphs (default tmp)")
    parser.add_argument("--json", dest="json_path", help="also write the report here")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        child_measure(argv[1], int(argv[2]), int(argv[3]))
        return
    if argv[:1] == ["--runner"]:
        runner_measure(argv[1], int(argv[2]), int(argv[3]))
        return

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("noisyad").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="onnx_memory_") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = run(args, workdir)
    print_report(report)
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(report, indent=2))
        print(f"report written to {args.json_path}")


if __name__ == "__main__":
    main(sys.argv[1:])
