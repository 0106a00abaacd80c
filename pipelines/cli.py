"""``noisyad pipeline``: run the Kubeflow pipeline here, compile it, or send it to a cluster.

Usage:
    noisyad pipeline run                          # the main job: demo data, three categories
    noisyad pipeline run --data /data/mvtec --category bottle --subsets 5
    noisyad pipeline compile --out pipeline.yaml  # upload this in the Kubeflow Pipelines UI
    noisyad pipeline submit --data s3://bucket/mvtec --category bottle --host http://localhost:8080
    noisyad pipeline schedule --cron "0 0 3 * * *" --data s3://bucket/mvtec --category bottle

``run`` creates the MLflow parent run before submitting (so a failure anywhere, even before
a step starts, ends it FAILED) and passes its id to the pipeline. Settings and data that
match an earlier run (same ``noisyad.run_key`` tag) resume that run: the step cache then
reuses every step that succeeded, and only the rest runs and logs into the same MLflow run.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from noisyad.data import BadInputPolicy
from noisyad.purification import Aggregation
from noisyad.training import TrainConfig

app = typer.Typer(
    help="The Kubeflow pipeline: run it locally (kfp.local), compile it, submit or schedule it.",
    no_args_is_help=True,
)

DEMO_CONTAMINATION = 0.2
DEFAULTS = TrainConfig()  # the same defaults as `noisyad train`

# Options shared by run, submit and schedule: the pipeline's parameters.
SubsetsOption = Annotated[int, typer.Option(help="K, the number of sub-models.")]
KeepFractionOption = Annotated[
    str, typer.Option(help="Share of images kept, in (0, 1], or 'auto'.")
]
AggregateOption = Annotated[Aggregation, typer.Option(help="Score aggregation.")]
BackboneOption = Annotated[str, typer.Option(help="timm backbone name.")]
InputSizeOption = Annotated[int, typer.Option(help="Square input side in pixels.")]
CoresetRatioOption = Annotated[float, typer.Option(help="Memory-bank share of patches.")]
SeedOption = Annotated[int, typer.Option(help="Seed of partition and coreset.")]
RegisteredModelOption = Annotated[
    str, typer.Option(help="Registered model name; {category} is replaced.")
]
BadInputOption = Annotated[BadInputPolicy, typer.Option(help="error or skip bad images.")]
ImageOption = Annotated[
    str | None, typer.Option(help="Container image of the steps (default: the project's).")
]
RemoteCategoryOption = Annotated[str, typer.Option(help="Category; empty when the source has one.")]
MlflowExperimentOption = Annotated[str, typer.Option(help="MLflow experiment name.")]


def run_key(arguments: dict, cache_root: Path | None = None) -> str:
    """Identity of a pipeline run's settings, data and step cache (the MLflow run id left out).

    Two runs with the same key would compute the same thing; the later one resumes the earlier
    MLflow run so that the step cache can serve it.
    """
    settings = {k: v for k, v in sorted(arguments.items()) if k != "mlflow_run_id"}
    settings["step_cache"] = None if cache_root is None else str(cache_root)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def run_name(arguments: dict) -> str:
    """A run name that tells runs apart in the MLflow UI's run list."""
    a = arguments
    return (
        f"{a['category']} K={a['subsets']} keep={a['keep_fraction']} {a['aggregate']} "
        f"{a['backbone']}@{a['input_size']}"
    )


def open_parent_run(arguments: dict, cache_root: Path | None, run_dir: Path) -> tuple[str, str]:
    """Create the parent MLflow run, or resume the run with the same settings and data.

    Args:
        arguments: The pipeline arguments (without the run id).
        cache_root: The step cache; None when caching is off (then always a new run).
        run_dir: This invocation's run folder (tagged on a new run).

    Returns:
        ``(run id, how)`` with ``how`` one of ``new``, ``resumed`` (the earlier run had not
        finished) or ``repeated`` (it had: every step will come from the cache).
    """
    from noisyad import tracking

    uri, experiment = arguments["tracking_uri"], arguments["experiment_name"]
    key = run_key(arguments, cache_root)
    earlier = tracking.find_run(uri, experiment, key) if cache_root else None
    if earlier is not None:
        if earlier.info.status == "FINISHED":
            return earlier.info.run_id, "repeated"
        tracking.set_status(uri, earlier.info.run_id, "RUNNING")
        return earlier.info.run_id, "resumed"
    tags = {tracking.RUN_KEY_TAG: key, "noisyad.source": "local", "noisyad.run_dir": str(run_dir)}
    return tracking.start_run(uri, experiment, run_name(arguments), tags), "new"


def end_failed_run(uri: str, run_id: str, error: Exception) -> str:
    """Mark the run FAILED if no step did (e.g. a step process was killed); return the error."""
    from noisyad import tracking

    mlflow_client = tracking.client(uri)
    run = mlflow_client.get_run(run_id)
    if run.info.status == "RUNNING":
        tracking.mark_failed(mlflow_client, run_id, "pipeline", error)
        run = mlflow_client.get_run(run_id)
    return run.data.tags.get("noisyad.error", str(error))


def summarize(category: str, run_id: str, how: str, outputs: dict, seconds: float) -> dict:
    """One category's result from the pipeline outputs."""
    registration = json.loads(outputs["registration"])
    onnx = outputs["onnx_model"]
    return {
        "category": category,
        "mlflow_run_id": run_id,
        "mlflow_run": how,
        "evaluation": dict(outputs["evaluation"].metadata),
        "purification": dict(outputs["purification"].metadata),
        "registered_model": registration["name"],
        "version": registration["version"],
        "aliases": registration["aliases"],
        "onnx_path": str(Path(onnx.path) / onnx.metadata.get("file", "model.onnx")),
        "seconds": round(seconds, 1),
    }


def print_summary(results: list[dict], tracking_uri: str, run_dir: Path, seconds: float) -> None:
    """The table a person reads at the end of a run."""
    echo = typer.echo
    echo("")
    echo(
        f"{'category':<9} {'image AUROC':>11} {'pixel AUROC':>11} {'AUPRO':>6} {'F1@thr':>6} "
        f"{'kept':>8} {'defects removed':>15} {'defect rate kept':>16}"
    )
    for r in results:
        e, p = r["evaluation"], r["purification"]
        echo(
            f"{r['category']:<9} {_num(e.get('image_auroc')):>11} {_num(e.get('pixel_auroc')):>11} "
            f"{_num(e.get('aupro')):>6} {_num(e.get('f1_at_threshold')):>6} "
            f"{int(p.get('n_kept', 0)):>4}/{int(p.get('n_train', 0)):<3} "
            f"{_num(p.get('purification_defects_removed')):>15} "
            f"{_num(p.get('purification_defect_rate_kept')):>16}"
        )
    echo("")
    echo(f"{'category':<9} {'MLflow run':<44} {'registered model':<18} {'version':>7}  aliases")
    for r in results:
        echo(
            f"{r['category']:<9} {r['mlflow_run_id'] + ' (' + r['mlflow_run'] + ')':<44} "
            f"{r['registered_model']:<18} {r['version']:>7}  {','.join(r['aliases'])}"
        )
    echo("")
    for r in results:
        echo(f"ONNX {r['category']}: {r['onnx_path']}")
    echo(f"MLflow: {tracking_uri}  (browse: mlflow ui --backend-store-uri {tracking_uri})")
    echo(f"run folder: {run_dir}  (full logs: {run_dir}/<category>/pipeline.log)")
    echo(f"wall time: {seconds:.0f} s")


def _num(value) -> str:
    return "-" if value is None else f"{float(value):.3f}"


@app.command("run")
def run(
    data: Annotated[
        str | None,
        typer.Option(
            help="Dataset URI (MVTec folder, Real-IAD JSON, folder, s3://). "
            "Default: build the demo data (contamination 0.2) in OUT/demo-0.2."
        ),
    ] = None,
    category: Annotated[
        str | None, typer.Option(help="Category; default: every category, one run each.")
    ] = None,
    subsets: SubsetsOption = DEFAULTS.subsets,
    keep_fraction: KeepFractionOption = str(DEFAULTS.keep_fraction),
    aggregate: AggregateOption = DEFAULTS.aggregate,
    backbone: BackboneOption = DEFAULTS.detector.backbone,
    input_size: InputSizeOption = DEFAULTS.detector.input_size,
    coreset_ratio: CoresetRatioOption = DEFAULTS.detector.coreset_ratio,
    seed: SeedOption = DEFAULTS.seed,
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow tracking URI. Default: MLFLOW_TRACKING_URI, else ./mlflow.db."),
    ] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment name.")] = "noisyad",
    registered_model: RegisteredModelOption = "noisyad-{category}",
    bad_input: BadInputOption = BadInputPolicy.error,
    out: Annotated[Path, typer.Option(help="Folder for run folders, step cache, demo data.")] = (
        Path("runs/pipeline")
    ),
    cache: Annotated[bool, typer.Option(help="--no-cache reruns every step.")] = True,
    contamination: Annotated[
        float, typer.Option(help="Demo data only: share of defective training images.")
    ] = DEMO_CONTAMINATION,
    jobs: Annotated[
        int, typer.Option(min=1, help="Categories run side by side, each its own pipeline run.")
    ] = 2,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the summary.")] = False,
) -> None:
    """Run the pipeline through kfp.local on this machine; print metrics, run ids, models."""
    from noisyad import stages, tracking
    from noisyad.cli import USER_ERRORS, fail, setup_logging
    from noisyad.data import open_source
    from noisyad.purification import check_settings, parse_keep_fraction

    setup_logging(quiet)
    start = time.perf_counter()
    out = out.resolve()
    run_dir = out / datetime.now().strftime("%Y%m%d-%H%M%S")
    cache_root = out / ".kfp_cache"
    try:
        keep = str(parse_keep_fraction(keep_fraction))
        check_settings(max(subsets, 2) * 2, subsets, keep)  # K and keep fraction alone
        uri = tracking.resolve_uri(tracking_uri)
        tracking.check_reachable(uri)
        if data is None:
            data = str(ensure_demo(out / f"demo-{contamination:g}", contamination))
        manifest = open_source(data, category=category)
        categories = [category] if category else manifest.categories()
        for name in categories:  # settings that cannot fit the data fail before any run
            check_settings(len(manifest.select(split="train", category=name)), subsets, keep)
        data_version = stages.data_fingerprint(data)
    except (*USER_ERRORS, tracking.TrackingError) as exc:
        raise fail(exc) from exc

    runs = []
    for name in categories:
        arguments = {
            "data_uri": data,
            "category": name,
            "subsets": subsets,
            "keep_fraction": keep,
            "aggregate": aggregate.value,
            "backbone": backbone,
            "input_size": input_size,
            "coreset_ratio": coreset_ratio,
            "seed": seed,
            "tracking_uri": uri,
            "experiment_name": experiment,
            "registered_model_name": registered_model,
            "data_version": data_version,
            "bad_input": bad_input.value,
        }
        runs.append((arguments, run_dir / name, cache_root if cache else None, quiet))
    # Create the experiment here, so that parallel workers do not race to create it.
    tracking.experiment_id(tracking.client(uri), experiment, uri)
    results, failures = run_categories(runs, jobs)

    seconds = time.perf_counter() - start
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        record = {"runs": results, "run_dir": str(run_dir), "seconds": round(seconds, 1)}
        json_path.write_text(json.dumps(record, indent=2))
    if results:
        print_summary(results, uri, run_dir, seconds)
    for message in failures:
        typer.secho(f"error: the pipeline failed for {message}", err=True, fg=typer.colors.RED)
    if failures:
        typer.secho(
            "Rerunning the same command resumes those MLflow runs and reuses the steps that "
            "succeeded.",
            err=True,
        )
        raise typer.Exit(code=1)


class CategoryFailedError(RuntimeError):
    """One category's pipeline run failed; its MLflow run is marked FAILED."""


def run_category(
    arguments: dict, run_dir: Path, cache_root: Path | None, quiet: bool
) -> dict[str, Any]:
    """One pipeline run (one category): open the MLflow run, run the pipeline, summarize.

    Runs in the command's process, or in a worker process when categories run side by side.

    Args:
        arguments: Pipeline arguments without the MLflow run id.
        run_dir: This category's run folder (artifacts and ``pipeline.log``).
        cache_root: The step cache; None runs every step and starts a new MLflow run.
        quiet: Nothing on the console but errors.

    Raises:
        CategoryFailedError: With the failing step's error, after the MLflow run is marked FAILED.
    """
    from noisyad import tracking
    from noisyad.cli import setup_logging
    from pipelines.local import run_pipeline

    setup_logging(quiet)  # a worker process starts with no logging set up
    name, uri = arguments["category"], arguments["tracking_uri"]
    start = time.perf_counter()
    run_id, how = open_parent_run(arguments, cache_root, run_dir)
    if not quiet:
        typer.echo(f"[{name}] MLflow run {run_id} ({how}), artifacts under {run_dir}", err=True)
    try:
        outputs = run_pipeline(
            {**arguments, "mlflow_run_id": run_id},
            run_dir,
            cache_root or run_dir / ".kfp_cache",
            enable_caching=cache_root is not None,
            quiet=quiet,
            prefix=f"[{name}] ",
        )
    except Exception as exc:
        message = end_failed_run(uri, run_id, exc)
        raise CategoryFailedError(
            f"{name}: {message}\nMLflow run {run_id} is marked FAILED; log: {run_dir}/pipeline.log"
        ) from None
    if tracking.run_status(uri, run_id) == "RUNNING":
        tracking.set_status(uri, run_id, "FINISHED")
    result = summarize(name, run_id, how, outputs, time.perf_counter() - start)
    return {**result, "run_dir": str(run_dir)}


def run_categories(runs: list[tuple], jobs: int) -> tuple[list[dict], list[str]]:
    """Run :func:`run_category` for every category, ``jobs`` at a time in worker processes.

    Each worker is its own process (kfp.local keeps its settings in module globals) started
    fresh (spawn), so steps of different categories fill both CPU cores of a small machine.

    Returns:
        The results of the categories that succeeded and the messages of those that failed.
    """
    results, failures = [], []
    if jobs <= 1 or len(runs) <= 1:
        for run in runs:
            try:
                results.append(run_category(*run))
            except CategoryFailedError as exc:
                failures.append(str(exc))
        return results, failures
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(runs)), mp_context=context) as pool:
        futures = [pool.submit(run_category, *run) for run in runs]
        for future in futures:
            try:
                results.append(future.result())
            except CategoryFailedError as exc:
                failures.append(str(exc))
    return results, failures


def ensure_demo(folder: Path, contamination: float) -> Path:
    """The demo dataset in ``folder``, built when it is missing (reused otherwise)."""
    from noisyad.data.demo import make_demo_dataset

    marker = folder / "README.txt"
    if not marker.is_file():
        make_demo_dataset(folder, contamination=contamination, seed=0, overwrite=True)
    return folder


@app.command("compile")
def compile_command(
    out: Annotated[Path, typer.Option(help="YAML file to write.")] = Path("pipeline.yaml"),
    image: ImageOption = None,
) -> None:
    """Compile the pipeline to YAML for the Kubeflow UI; check kfp's load/compile round trip."""
    from pipelines.compile import compile_pipeline

    facts = compile_pipeline(out, image)
    typer.echo(json.dumps({"path": str(out), **facts}, indent=2))


# --- Kubeflow Pipelines API server: one run now, or a recurring run (pipelines/remote.py) ---

HostOption = Annotated[
    str | None,
    typer.Option(help="Kubeflow Pipelines API URL, e.g. http://localhost:8080. Default: KFP_HOST."),
]
NamespaceOption = Annotated[
    str | None, typer.Option(help="Kubernetes namespace (multi-user Kubeflow); default: none.")
]
KfpExperimentOption = Annotated[
    str, typer.Option("--experiment", help="Kubeflow experiment (created when missing).")
]
RemoteDataOption = Annotated[
    str, typer.Option(help="Dataset URI the pipeline's pods can read (s3://..., a mounted path).")
]
RemoteTrackingOption = Annotated[
    str,
    typer.Option(
        help="MLflow tracking URI for the steps; empty: their MLFLOW_TRACKING_URI, "
        "else ./mlflow.db."
    ),
]


def remote_arguments(**values: Any) -> dict[str, Any]:
    """The pipeline parameters of ``submit`` and ``schedule`` (validated like ``run``)."""
    from noisyad.purification import parse_keep_fraction

    values["keep_fraction"] = str(parse_keep_fraction(values["keep_fraction"]))
    values["aggregate"] = values["aggregate"].value
    values["bad_input"] = values["bad_input"].value
    return values


@app.command("submit")
def submit_command(
    data: RemoteDataOption,
    category: RemoteCategoryOption = "",
    subsets: SubsetsOption = DEFAULTS.subsets,
    keep_fraction: KeepFractionOption = str(DEFAULTS.keep_fraction),
    aggregate: AggregateOption = DEFAULTS.aggregate,
    backbone: BackboneOption = DEFAULTS.detector.backbone,
    input_size: InputSizeOption = DEFAULTS.detector.input_size,
    coreset_ratio: CoresetRatioOption = DEFAULTS.detector.coreset_ratio,
    seed: SeedOption = DEFAULTS.seed,
    tracking_uri: RemoteTrackingOption = "",
    mlflow_experiment: MlflowExperimentOption = "noisyad",
    registered_model: RegisteredModelOption = "noisyad-{category}",
    data_version: Annotated[
        str, typer.Option(help="Changes when the data changes (keys the step cache).")
    ] = "",
    bad_input: BadInputOption = BadInputPolicy.error,
    host: HostOption = None,
    namespace: NamespaceOption = None,
    experiment: KfpExperimentOption = "noisyad",
    run_name: Annotated[str | None, typer.Option(help="Run name in the Kubeflow UI.")] = None,
    image: ImageOption = None,
    cache: Annotated[
        bool | None,
        typer.Option(help="--no-cache reruns every step; default: the compiled setting."),
    ] = None,
) -> None:
    """Compile the pipeline and start one run on a Kubeflow Pipelines server."""
    from noisyad.cli import USER_ERRORS, fail
    from pipelines import remote

    try:
        arguments = remote_arguments(
            data_uri=data, category=category, subsets=subsets, keep_fraction=keep_fraction,
            aggregate=aggregate, backbone=backbone, input_size=input_size,
            coreset_ratio=coreset_ratio, seed=seed, tracking_uri=tracking_uri,
            experiment_name=mlflow_experiment, registered_model_name=registered_model,
            data_version=data_version, bad_input=bad_input,
        )  # fmt: skip
        result = remote.submit(
            remote.resolve_host(host), arguments, experiment=experiment, namespace=namespace,
            run_name=run_name, image=image, enable_caching=cache,
        )  # fmt: skip
    except (*USER_ERRORS, remote.RemoteError) as exc:
        raise fail(exc) from exc
    typer.echo(json.dumps({**result, "arguments": arguments}, indent=2))


@app.command("schedule")
def schedule_command(
    data: RemoteDataOption,
    cron: Annotated[
        str,
        typer.Option(
            help="Kubeflow cron, 6 fields with seconds first: '0 0 3 * * *' is 03:00 daily."
        ),
    ],
    category: RemoteCategoryOption = "",
    subsets: SubsetsOption = DEFAULTS.subsets,
    keep_fraction: KeepFractionOption = str(DEFAULTS.keep_fraction),
    aggregate: AggregateOption = DEFAULTS.aggregate,
    backbone: BackboneOption = DEFAULTS.detector.backbone,
    input_size: InputSizeOption = DEFAULTS.detector.input_size,
    coreset_ratio: CoresetRatioOption = DEFAULTS.detector.coreset_ratio,
    seed: SeedOption = DEFAULTS.seed,
    tracking_uri: RemoteTrackingOption = "",
    mlflow_experiment: MlflowExperimentOption = "noisyad",
    registered_model: RegisteredModelOption = "noisyad-{category}",
    bad_input: BadInputOption = BadInputPolicy.error,
    host: HostOption = None,
    namespace: NamespaceOption = None,
    experiment: KfpExperimentOption = "noisyad",
    job_name: Annotated[str | None, typer.Option(help="Recurring run name in the UI.")] = None,
    image: ImageOption = None,
    cache: Annotated[
        bool,
        typer.Option(
            help="Off by default: a cached ingest step would keep serving the first run's data."
        ),
    ] = False,
    max_concurrency: Annotated[int, typer.Option(min=1, help="Runs allowed at once.")] = 1,
) -> None:
    """Upload the compiled pipeline and create a recurring run (scheduled retraining)."""
    from noisyad.cli import USER_ERRORS, fail
    from pipelines import remote

    try:
        cron = remote.validate_cron(cron)  # before the host: a wrong cron needs no server
        arguments = remote_arguments(
            data_uri=data, category=category, subsets=subsets, keep_fraction=keep_fraction,
            aggregate=aggregate, backbone=backbone, input_size=input_size,
            coreset_ratio=coreset_ratio, seed=seed, tracking_uri=tracking_uri,
            experiment_name=mlflow_experiment, registered_model_name=registered_model,
            data_version="", bad_input=bad_input,
        )  # fmt: skip
        result = remote.schedule(
            remote.resolve_host(host), arguments, cron, experiment=experiment,
            namespace=namespace, job_name=job_name, image=image, enable_caching=cache,
            max_concurrency=max_concurrency,
        )  # fmt: skip
    except (*USER_ERRORS, remote.RemoteError) as exc:
        raise fail(exc) from exc
    typer.echo(json.dumps({**result, "arguments": arguments}, indent=2))
