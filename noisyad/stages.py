"""The pipeline's steps as plain functions: files in, files out, no kfp and no MLflow.

Each function is one box of the data flow and is what the Kubeflow component of the same
name calls (``components/``); it can equally be run in one process, which is how the tests
check that the pipeline trains the same model as :func:`noisyad.training.train_category`::

    ingest -> partition_step -> train_submodel x K -> aggregate_filter -> train_final
           -> evaluate_step -> export_step

Artifacts that cross process boundaries are JSON, npz and safetensors, never pickle:

* dataset (ingest): a self-contained snapshot of one category, ``manifest.json`` with paths
  relative to the snapshot plus the image, mask and sidecar files in the source's layout, so
  that every later step (a separate pod on a cluster) reads the same files;
* subsets (partition): ``subsets.json``, the subset id of every training image;
* scores (train_submodel): ``scores.npz``, one sub-model's image scores of every training image;
* purified (aggregate_filter): ``purification.json`` (as written by training), ``scores.csv``;
* model (train_final): the model folder that :func:`~noisyad.training.train_category` writes.

Example:
    >>> ingest("demo", "brick", "work/dataset")                                # doctest: +SKIP
    >>> partition_step("work/dataset", 3, 0.8, 0, "work/subsets.json")        # doctest: +SKIP
    [0, 1, 2]
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from noisyad.data import BadInputPolicy, Manifest, Sample, load_images, open_source
from noisyad.data.demo import SIDECAR_NAME, read_contamination_sidecar

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
PURIFICATION_NAME = "purification.json"
SCORES_CSV = "scores.csv"
CHECK_SIZE = 32  # ingest decodes every image at this size to prove it is readable


def log_to_stderr(level: int = logging.INFO) -> None:
    """Send the library's log records to stderr (what a pipeline step's log shows)."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


# ingest ---------------------------------------------------------------------------------------


def _relative(path: str, root: Path, index: int, kind: str) -> str:
    """Where a source file goes in the snapshot: its place under the source root if it has
    one, else a numbered name (Real-IAD images may sit beside the split file's folder)."""
    resolved = Path(path).resolve()
    if resolved.is_relative_to(root):
        return resolved.relative_to(root).as_posix()
    return f"files/{kind}/{index:06d}{resolved.suffix.lower()}"


def _category_dir(root: Path, category: str) -> Path | None:
    """The MVTec-layout category folder (where the demo's sidecar lives), if any."""
    for candidate in (root / category, root):
        if (candidate / "train").is_dir():
            return candidate
    return None


def resolve_category(manifest: Manifest, category: str) -> str:
    """The category to train: ``category``, or the source's only one when it is empty."""
    if category:
        return category
    found = manifest.categories()
    if len(found) != 1:
        raise ValueError(
            f"{manifest.root} holds categories {found}; pass one category (the pipeline trains "
            "one category per run)"
        )
    return found[0]


def ingest(
    uri: str, category: str, out_dir: str | Path, policy: BadInputPolicy | str = "error"
) -> dict:
    """Validate one category of a data source and snapshot it into ``out_dir``.

    Every image (and mask) is decoded once, so an unreadable file stops here, or under the
    ``skip`` policy is left out and listed, instead of failing a later step.

    Returns:
        Summary: source, category, counts and skipped files (JSON-ready).

    Raises:
        DataSourceError: The source is missing or of no known layout.
        ImageLoadError: A bad image under the ``error`` policy.
    """
    policy = BadInputPolicy(policy)
    source = open_source(uri, category=category or None, policy=policy)
    category = resolve_category(source, category)
    train = source.select(split="train", category=category)
    test = source.select(split="test", category=category)
    if not train:
        raise ValueError(f"no training images for category {category!r} in {uri}")
    checked_train = load_images(train, CHECK_SIZE, policy)
    checked_test = load_images(test, CHECK_SIZE, policy, with_masks=True) if test else None
    kept = checked_train.samples + (checked_test.samples if checked_test else [])
    skipped = source.skipped + checked_train.skipped + (checked_test.skipped if test else [])

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = Path(source.root).resolve()
    samples = []
    for index, sample in enumerate(kept):
        rel = _relative(sample.path, root, index, "images")
        mask = None
        if sample.mask_path:
            mask = _relative(sample.mask_path, root, index, "masks")
            _copy(sample.mask_path, out_dir / mask)
        _copy(sample.path, out_dir / rel)
        samples.append(Sample(rel, sample.split, category, sample.label, mask, sample.defect_type))
    cat_dir = _category_dir(root, category)
    has_sidecar = cat_dir is not None and (cat_dir / SIDECAR_NAME).is_file()
    if has_sidecar:
        _copy(cat_dir / SIDECAR_NAME, out_dir / cat_dir.relative_to(root) / SIDECAR_NAME)
    Manifest(root=".", source=source.source, samples=samples, skipped=skipped).save(
        out_dir / MANIFEST_NAME
    )

    summary = {
        "data_uri": str(uri),
        "source": source.source,
        "category": category,
        "n_train": len(checked_train.samples),
        "n_test": len(checked_test.samples) if checked_test else 0,
        "n_test_anomalous": sum(1 for s in samples if s.split == "test" and s.label == 1),
        "n_skipped": len(skipped),
        "skipped": skipped,
        "has_contamination_sidecar": has_sidecar,
    }
    logger.info(
        "ingest: %s %s: %d training, %d test images (%d skipped) -> %s",
        uri,
        category,
        summary["n_train"],
        summary["n_test"],
        len(skipped),
        out_dir,
    )
    return summary


def _copy(src: str | Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def load_dataset(dataset_dir: str | Path) -> Manifest:
    """Read a snapshot written by :func:`ingest`; sample paths become absolute."""
    dataset_dir = Path(dataset_dir).resolve()
    manifest = Manifest.load(dataset_dir / MANIFEST_NAME)

    def absolute(path: str | None) -> str | None:
        return None if path is None else str(dataset_dir / path)

    samples = [
        Sample(absolute(s.path), s.split, s.category, s.label, absolute(s.mask_path), s.defect_type)
        for s in manifest.samples
    ]
    return Manifest(str(dataset_dir), manifest.source, samples, manifest.skipped)


def dataset_category(manifest: Manifest) -> str:
    """The one category of a snapshot."""
    return resolve_category(manifest, "")


def training_samples(manifest: Manifest) -> list[Sample]:
    """The snapshot's training images in manifest order (the order every step indexes by)."""
    return manifest.select(split="train")


def defective_flags(dataset_dir: str | Path) -> np.ndarray | None:
    """Which training images the demo's evaluation-only sidecar says are defective.

    For plots and purification figures only; no training decision may read it.
    """
    manifest = load_dataset(dataset_dir)
    cat_dir = _category_dir(Path(manifest.root), dataset_category(manifest))
    hidden = None if cat_dir is None else read_contamination_sidecar(cat_dir)
    if hidden is None:
        return None
    hidden_paths = {str(Path(p).resolve()) for p in hidden}
    return np.array(
        [str(Path(s.path).resolve()) in hidden_paths for s in training_samples(manifest)]
    )


# partition ------------------------------------------------------------------------------------


def partition_step(
    dataset_dir: str | Path, k: int, keep_fraction: float | str, seed: int, out_json: str | Path
) -> list[int]:
    """Split the training images into K disjoint seeded subsets; write ``subsets.json``.

    The purification settings are checked here, before any sub-model is fitted.

    Returns:
        The subset ids ``[0, ..., K-1]`` (what the pipeline fans out over).
    """
    from noisyad.purification import check_settings, partition

    samples = training_samples(load_dataset(dataset_dir))
    check_settings(len(samples), k, keep_fraction)
    subsets = partition(len(samples), k, seed)
    record = {
        "k": k,
        "seed": seed,
        "subsets": subsets.tolist(),
        "sizes": np.bincount(subsets, minlength=k).tolist(),
        "paths": [Path(s.path).name for s in samples],
    }
    Path(out_json).write_text(json.dumps(record))
    logger.info(
        "partition: %d images into %d subsets of sizes %s", len(samples), k, record["sizes"]
    )
    return list(range(k))


def read_subsets(subsets_json: str | Path, samples: list[Sample]) -> np.ndarray:
    """The subset ids of ``samples``, checked against the images they were drawn for."""
    record = json.loads(Path(subsets_json).read_text())
    if record["paths"] != [Path(s.path).name for s in samples]:
        raise ValueError(f"{subsets_json} was written for other training images than the dataset")
    return np.asarray(record["subsets"], dtype=np.int64)


# train_submodel -------------------------------------------------------------------------------


def train_submodel(
    dataset_dir: str | Path,
    subsets_json: str | Path,
    index: int,
    detector_config,
    out_npz: str | Path,
) -> dict:
    """Fit sub-model ``index`` on its subset and score every training image with it.

    The backbone features of all training images are computed here (each sub-model is its
    own task); the sub-model is a PatchCore with the final model's settings, as in
    :func:`noisyad.purification.fit_submodels`.

    Args:
        dataset_dir: Snapshot written by :func:`ingest`.
        subsets_json: Written by :func:`partition_step`.
        index: The subset (and sub-model) id.
        detector_config: A :class:`~noisyad.detectors.PatchCoreConfig`.
        out_npz: Where to write ``index``, ``scores`` ``(N,)`` and ``fitted`` ``(N,)``.

    Returns:
        Figures of the sub-model (counts, bank size, mean scores on its own and other images).
    """
    from noisyad.detectors import PatchCore

    start = time.perf_counter()
    samples = training_samples(load_dataset(dataset_dir))
    subsets = read_subsets(subsets_json, samples)
    if not 0 <= index <= int(subsets.max()):
        raise ValueError(f"sub-model index {index} is outside 0..{int(subsets.max())}")
    loaded = load_images(samples, detector_config.input_size, BadInputPolicy.error)
    detector = PatchCore(detector_config)
    embeddings = detector.embed(loaded.images)
    fitted = subsets == index
    detector.fit(embeddings[fitted])
    scores = detector.score(embeddings).image_scores.astype(np.float64)
    with Path(out_npz).open("wb") as handle:  # a handle keeps the exact path (no ".npz" added)
        np.savez(handle, index=np.int64(index), scores=scores, fitted=fitted)
    figures = {
        "index": index,
        "n_fitted": int(fitted.sum()),
        "n_scored": len(scores),
        "bank_size": detector.bank_size,
        "mean_score_own_subset": float(scores[fitted].mean()),
        "mean_score_other_subsets": float(scores[~fitted].mean()),
    }
    logger.info(
        "sub-model %d: fitted on %d images, scored %d in %.1f s",
        index,
        figures["n_fitted"],
        len(scores),
        time.perf_counter() - start,
    )
    return figures


# aggregate_filter -----------------------------------------------------------------------------


@dataclass
class Purified:
    """What aggregate_filter decided, plus what the plots need."""

    summary: dict
    aggregated: np.ndarray
    kept: np.ndarray
    defective: np.ndarray | None


def read_score_table(score_files: list[str | Path], n_images: int) -> np.ndarray:
    """Stack the sub-models' ``scores.npz`` files into the ``(K, N)`` score table."""
    rows: dict[int, np.ndarray] = {}
    for path in score_files:
        with np.load(path, allow_pickle=False) as data:
            rows[int(data["index"])] = data["scores"]
    k = len(rows)
    if sorted(rows) != list(range(k)):
        raise ValueError(f"sub-model scores are incomplete: got indices {sorted(rows)}")
    table = np.stack([rows[i] for i in range(k)])
    if table.shape[1] != n_images:
        raise ValueError(f"sub-model scores cover {table.shape[1]} images, dataset has {n_images}")
    return table


def aggregate_filter(
    dataset_dir: str | Path,
    subsets_json: str | Path,
    score_files: list[str | Path],
    method: str,
    keep_fraction: float | str,
    out_dir: str | Path,
) -> Purified:
    """Aggregate the sub-model scores per image and keep the lowest ``keep_fraction``
    (a share in (0, 1], or ``"auto"``: :func:`noisyad.purification.auto_keep`).

    Writes ``purification.json`` (the format training writes) and ``scores.csv`` (the
    per-image score table) into ``out_dir``.
    """
    from noisyad import metrics
    from noisyad.purification import (
        Aggregation,
        PurificationResult,
        aggregate,
        check_settings,
        keep_mask,
        parse_keep_fraction,
    )
    from noisyad.training import purification_table

    samples = training_samples(load_dataset(dataset_dir))
    subsets = read_subsets(subsets_json, samples)
    table = read_score_table(score_files, len(samples))
    keep_fraction = parse_keep_fraction(keep_fraction)
    check_settings(len(samples), table.shape[0], keep_fraction)
    aggregated = aggregate(table, subsets, method)
    kept = keep_mask(aggregated, keep_fraction)
    result = PurificationResult(
        subsets, table, aggregated, kept, Aggregation(method).value, keep_fraction
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = purification_table(samples, result)
    (out_dir / PURIFICATION_NAME).write_text(json.dumps(record, indent=1))
    defective = defective_flags(dataset_dir)
    write_training_scores(out_dir / SCORES_CSV, samples, result, defective)

    summary = {
        "method": result.method,
        "keep_fraction": keep_fraction,
        "subsets": int(table.shape[0]),
        "n_train": len(samples),
        "n_kept": int(kept.sum()),
        "cut": result.cut,
    }
    if defective is not None:
        summary["purification"] = metrics.purification_figures(defective, kept)
    logger.info(
        "aggregate_filter (%s): kept %d of %d images, cut at %.4g",
        result.method,
        summary["n_kept"],
        len(samples),
        result.cut,
    )
    return Purified(summary, aggregated, kept, defective)


def write_training_scores(path: Path, samples, result, defective: np.ndarray | None) -> None:
    """The per-image training score table as CSV."""
    k = result.score_table.shape[0]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        header = ["image", "subset", *[f"score_{i}" for i in range(k)], "aggregated", "kept"]
        writer.writerow(header + (["defective"] if defective is not None else []))
        for i, sample in enumerate(samples):
            row = [Path(sample.path).name, int(result.subsets[i])]
            row += [f"{v:.6g}" for v in result.score_table[:, i]]
            row += [f"{result.aggregated[i]:.6g}", int(result.kept[i])]
            writer.writerow(row + ([int(defective[i])] if defective is not None else []))


# train_final ----------------------------------------------------------------------------------


def train_final(dataset_dir: str | Path, purified_dir: str | Path, config, out_dir: str | Path):
    """Fit the final detector on the purified set and write the model folder.

    The fit, label threshold and model files are those of
    :func:`noisyad.training.train_category` (called on the purified images with
    ``purify=False``); ``training.json`` then records the full training set and the
    purification settings, and ``purification.json`` is copied in, so the folder is exactly
    what ``noisyad train`` writes.

    Args:
        config: A :class:`~noisyad.training.TrainConfig` (its ``purify`` settings are recorded).

    Returns:
        The :class:`~noisyad.training.TrainReport`, with ``n_train`` the full training set.
    """
    from noisyad.training import train_category

    manifest = load_dataset(dataset_dir)
    category = dataset_category(manifest)
    samples = training_samples(manifest)
    record = json.loads((Path(purified_dir) / PURIFICATION_NAME).read_text())
    if [Path(r["path"]).name for r in record["images"]] != [Path(s.path).name for s in samples]:
        raise ValueError(f"{purified_dir} was written for other training images than the dataset")
    kept = [s for s, r in zip(samples, record["images"], strict=True) if r["kept"]]

    out_dir = Path(out_dir)
    report = train_category(
        manifest.subset(kept), category, config.model_copy(update={"purify": False}), out_dir
    )
    report.n_train = len(samples)
    shutil.copyfile(Path(purified_dir) / PURIFICATION_NAME, out_dir / PURIFICATION_NAME)
    training = json.loads((out_dir / "training.json").read_text())
    training.update(asdict(report))
    training["config"] = config.model_dump(mode="json")
    training["data_root"] = manifest.root
    (out_dir / "training.json").write_text(json.dumps(training, indent=1))
    return report


# evaluate and export --------------------------------------------------------------------------


def evaluate_step(dataset_dir: str | Path, model_dir: str | Path):
    """Evaluate the model on the snapshot's test split (:func:`noisyad.evaluation.evaluate_model`).

    Returns:
        The :class:`~noisyad.evaluation.Evaluation` (metrics, test images, maps, scores).
    """
    from noisyad.evaluation import evaluate_model

    return evaluate_model(model_dir, load_dataset(dataset_dir))


def test_score_rows(evaluation) -> list[dict]:
    """The per-image test score table: image, label, defect type, image score, predicted label."""
    threshold = evaluation.metrics.get("threshold")
    rows = []
    for sample, score in zip(
        evaluation.loaded.samples, evaluation.result.image_scores, strict=True
    ):
        rows.append(
            {
                "image": Path(sample.path).name,
                "defect_type": sample.defect_type or "good",
                "label": int(sample.label),
                "image_score": round(float(score), 6),
                "predicted": None if threshold is None else int(score > threshold),
            }
        )
    return rows


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """Write dict rows (same keys) as CSV."""
    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)


def flat_metrics(values: dict, prefix: str = "") -> dict[str, float]:
    """Numeric entries of a (nested) metrics dict as ``{name: float}``; None and text dropped."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_metrics(value, f"{name}_"))
        elif isinstance(value, bool | int | float) and not (
            isinstance(value, float) and not math.isfinite(value)
        ):
            out[name] = float(value)
    return out


def example_images(dataset_dir: str | Path, size: int, n: int = 1) -> np.ndarray:
    """The first ``n`` test (else training) images at ``size``: an input example for the model."""
    manifest = load_dataset(dataset_dir)
    samples = manifest.select(split="test")[:n] or training_samples(manifest)[:n]
    return load_images(samples, size, BadInputPolicy.error).images


def export_step(model_dir: str | Path, out_path: str | Path) -> Path:
    """Export the model folder to one ONNX file (:func:`noisyad.export.export_onnx`)."""
    from noisyad.export import export_onnx

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    return export_onnx(model_dir, out_path)


def model_info(model_dir: str | Path) -> dict[str, str | int]:
    """Category, backbone and input size of a model folder (from its ``training.json``)."""
    training = json.loads((Path(model_dir) / "training.json").read_text())
    detector = training["config"]["detector"]
    return {
        "category": training["category"],
        "backbone": detector["backbone"],
        "input_size": detector["input_size"],
    }


def write_json(path: str | Path, data: dict) -> None:
    """Write ``data`` as JSON (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def disk_size(path: str | Path) -> int:
    """Bytes under ``path`` (a file or a folder)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def data_fingerprint(uri: str) -> str:
    """A cheap version string of a local data source: hash of file names, sizes and times.

    Used as the ingest step's ``data_version`` so that a changed folder is not served from
    the pipeline cache. Empty for remote URIs.
    """
    import hashlib

    # Limitation: s3:// sources get no fingerprint (the pipeline cache would serve a changed
    # bucket); pass data_version explicitly, or a listing of ETags would lift it.
    remote = "://" in uri and not uri.startswith("file://")
    path = Path(uri.removeprefix("file://"))
    if remote or not path.exists():
        return ""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(
            f"{file.relative_to(path.parent)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()[:16]
