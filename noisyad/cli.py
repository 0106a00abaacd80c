"""The ``noisyad`` command line: demo data, training, evaluation and export.

Usage:
    noisyad demo-data --out demo --contamination 0.2
    noisyad train --data demo --out models            # one model per category
    noisyad evaluate --model models --data demo --json metrics.json
    noisyad export --model models/brick --out brick.onnx

Every command logs what it does at INFO; ``--quiet`` keeps only warnings. Errors in the
user's input (a bad image, an empty folder, K larger than the data) end with one clear
message and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from noisyad.data import BadInputPolicy, DataSourceError, ImageLoadError
from noisyad.errors import BackboneWeightsError
from noisyad.purification import Aggregation, PurificationError, parse_keep_fraction

app = typer.Typer(
    help="Image anomaly detection that stays accurate when the training set is contaminated.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
logger = logging.getLogger("noisyad")

USER_ERRORS = (
    BackboneWeightsError,
    DataSourceError,
    ImageLoadError,
    PurificationError,
    FileExistsError,
    FileNotFoundError,
    ValueError,
)


def setup_logging(quiet: bool) -> None:
    """INFO to stderr (WARNING with ``quiet``), short format."""
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def fail(exc: Exception) -> typer.Exit:
    """Print a user error as one line and return the exit to raise."""
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


def emit(payload: dict, json_path: Path | None) -> None:
    """Print a result as JSON on stdout and optionally write it to ``json_path``."""
    text = json.dumps(payload, indent=2)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text)
    typer.echo(text)


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")]


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Option(help="Folder to write the dataset to.")] = Path("demo"),
    contamination: Annotated[
        float, typer.Option(help="Share ALPHA of defective images in the training set.")
    ] = 0.2,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset.")] = False,
    quiet: Quiet = False,
) -> None:
    """Write the demo dataset: real textures (brick, grass, gravel), synthetic defects."""
    from noisyad.data.demo import make_demo_dataset

    setup_logging(quiet)
    try:
        summary = make_demo_dataset(
            out, contamination=contamination, seed=seed, overwrite=overwrite
        )
    except USER_ERRORS as exc:
        raise fail(exc) from exc
    typer.echo(f"demo dataset written to {summary.root} ({summary.n_images} images)")


@app.command()
def train(
    data: Annotated[str, typer.Option(help="Dataset: MVTec folder, Real-IAD JSON or folder.")],
    out: Annotated[Path, typer.Option(help="Model folder (one sub-folder per category).")],
    category: Annotated[str | None, typer.Option(help="Train only this category.")] = None,
    subsets: Annotated[int, typer.Option(help="K, the number of sub-models.")] = 3,
    keep_fraction: Annotated[
        str, typer.Option(help="Share of images kept, in (0, 1], or 'auto'.")
    ] = "0.5",
    aggregate: Annotated[Aggregation, typer.Option(help="Score aggregation.")] = (
        Aggregation.cross_mean
    ),
    purify: Annotated[bool, typer.Option(help="--no-purify trains on everything.")] = True,
    backbone: Annotated[str, typer.Option(help="timm backbone name.")] = "mobilenetv2_100",
    weights: Annotated[str, typer.Option(help="imagenet, random or a file path.")] = "imagenet",
    input_size: Annotated[int, typer.Option(help="Square input side in pixels.")] = 128,
    coreset_ratio: Annotated[float, typer.Option(help="Memory-bank share of patches.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of partition and coreset.")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    bad_input: Annotated[BadInputPolicy, typer.Option(help="error or skip bad images.")] = (
        BadInputPolicy.error
    ),
    image_root: Annotated[str | None, typer.Option(help="Real-IAD image folder.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report.")] = None,
    quiet: Quiet = False,
) -> None:
    """Purify the training set and fit the final detector, per category."""
    from noisyad.data import open_source
    from noisyad.detectors import PatchCoreConfig
    from noisyad.training import TrainConfig, train_category

    setup_logging(quiet)
    try:
        config = TrainConfig(
            detector=PatchCoreConfig(
                backbone=backbone,
                weights=weights,
                input_size=input_size,
                coreset_ratio=coreset_ratio,
                seed=seed,
                device=device,
            ),
            purify=purify,
            subsets=subsets,
            keep_fraction=parse_keep_fraction(keep_fraction),
            aggregate=aggregate,
            seed=seed,
            bad_input=bad_input,
        )
        manifest = open_source(data, category=category, policy=bad_input, image_root=image_root)
        categories = [category] if category else manifest.categories()
        reports = {}
        for name in categories:
            model_dir = out if category or len(categories) == 1 else out / name
            reports[name] = train_category(manifest, name, config, model_dir).__dict__
    except USER_ERRORS as exc:
        raise fail(exc) from exc
    emit(reports, json_path)


def model_dirs(model: Path) -> list[Path]:
    """A model folder, or every model folder directly inside ``model``."""
    if (model / "config.json").is_file():
        return [model]
    found = sorted(p.parent for p in model.glob("*/config.json"))
    if not found:
        raise FileNotFoundError(f"{model} holds no trained model (no config.json); run train")
    return found


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option(help="Model folder, or a folder of model folders.")],
    data: Annotated[str, typer.Option(help="Dataset with a labelled test split.")],
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the metrics.")] = None,
    bad_input: Annotated[BadInputPolicy, typer.Option(help="error or skip bad images.")] = (
        BadInputPolicy.error
    ),
    image_root: Annotated[str | None, typer.Option(help="Real-IAD image folder.")] = None,
    quiet: Quiet = False,
) -> None:
    """Image AUROC, pixel AUROC, AUPRO, F1 and purification figures on the test split."""
    from noisyad.data import open_source
    from noisyad.evaluation import evaluate_model

    setup_logging(quiet)
    try:
        manifest = open_source(data, policy=bad_input, image_root=image_root)
        results = {}
        for model_dir in model_dirs(model):
            evaluation = evaluate_model(model_dir, manifest, policy=bad_input)
            results[evaluation.metrics["category"]] = evaluation.metrics
    except USER_ERRORS as exc:
        raise fail(exc) from exc
    emit(next(iter(results.values())) if len(results) == 1 else results, json_path)


@app.command()
def export(
    model: Annotated[Path, typer.Option(help="Trained model folder.")],
    out: Annotated[Path, typer.Option(help="Output .onnx file.")],
    triton: Annotated[
        Path | None, typer.Option(help="Also write a Triton model repository into DIR.")
    ] = None,
    triton_device: Annotated[str, typer.Option(help="Triton instances: cpu or gpu.")] = "cpu",
    triton_max_batch: Annotated[int, typer.Option(help="Triton max_batch_size.")] = 32,
    quiet: Quiet = False,
) -> None:
    """Export one trained model to a single ONNX graph (uint8 image -> map, score, label)."""
    from noisyad.export import export_onnx

    setup_logging(quiet)
    try:
        path = export_onnx(model, out)
        if triton is not None:
            from serving.triton import write_triton_repository

            write_triton_repository(
                path, triton, instance_kind=triton_device, max_batch_size=triton_max_batch
            )
    except USER_ERRORS as exc:
        raise fail(exc) from exc
    typer.echo(str(path))


# Command groups that live beside the library (pipelines/, serving/) register here.
# Pipeline (pipelines/cli.py): noisyad pipeline run | compile | submit | schedule.
from pipelines.cli import app as _pipeline_app  # noqa: E402

app.add_typer(_pipeline_app, name="pipeline")
# Serving (serving/cli.py): noisyad serve.
from serving.cli import serve as _serve  # noqa: E402

app.command("serve")(_serve)
# Benchmarks (noisyad/bench/cli.py): noisyad bench quality | speed.
from noisyad.bench.cli import app as _bench  # noqa: E402

app.add_typer(_bench, name="bench")


if __name__ == "__main__":
    app()
