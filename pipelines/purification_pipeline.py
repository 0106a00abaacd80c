"""The training pipeline: ingest, partition, K sub-models, purify, final fit, evaluate, ONNX.

One definition serves both places it runs: compiled to YAML for the Kubeflow UI
(:mod:`pipelines.compile`), and through ``kfp.local`` on one machine (:mod:`pipelines.local`).

Where the MLflow run id comes from: ``mlflow_run_id`` when ``noisyad pipeline run`` created
(or resumed) the parent run, else ingest starts one (a run scheduled from the Kubeflow UI).
Either way ingest writes it into the dataset artifact's metadata, and every later step, which
all take the dataset as input, logs into that run. (An artifact rather than a task-output
parameter: kfp.local 2.17 replaces every upstream task-output parameter inside a
``dsl.ParallelFor`` body with the loop item.)
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Metrics, Model

from components import (
    aggregate_filter,
    evaluate,
    export_onnx,
    ingest,
    partition,
    train_final,
    train_submodel,
)
from noisyad.training import TrainConfig

PIPELINE_NAME = "noisyad-purified-training"
DEFAULTS = TrainConfig()  # the pipeline's defaults are those of `noisyad train`
HEAVY_STEPS_CPU = "2"
HEAVY_STEPS_MEMORY = "6G"


class PipelineOutputs(NamedTuple):
    """What a run hands back: the registration record and the main artifacts."""

    registration: str
    onnx_model: Model
    evaluation: Metrics
    purification: Metrics


def _resources(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """CPU and memory requests of a step that runs the backbone (ignored by kfp.local)."""
    return task.set_cpu_request(HEAVY_STEPS_CPU).set_memory_request(HEAVY_STEPS_MEMORY)


@dsl.pipeline(
    name=PIPELINE_NAME,
    description=(
        "Anomaly detection on a contaminated training set: learning-bias purification "
        "(arXiv 2508.07441) around PatchCore, tracked in MLflow, ONNX model registered."
    ),
)
def purification_pipeline(
    data_uri: str,
    category: str = "",
    subsets: int = DEFAULTS.subsets,
    keep_fraction: str = str(DEFAULTS.keep_fraction),
    aggregate: str = DEFAULTS.aggregate.value,
    backbone: str = DEFAULTS.detector.backbone,
    input_size: int = DEFAULTS.detector.input_size,
    coreset_ratio: float = DEFAULTS.detector.coreset_ratio,
    seed: int = DEFAULTS.seed,
    tracking_uri: str = "",
    experiment_name: str = "noisyad",
    registered_model_name: str = "noisyad-{category}",
    data_version: str = "",
    bad_input: str = "error",
    mlflow_run_id: str = "",
) -> PipelineOutputs:
    """Train, evaluate, export and register a purified detector for one category.

    Args:
        data_uri: Dataset: MVTec AD folder, Real-IAD split file, image folder or s3:// prefix.
        category: Category to train; empty when the source holds only one.
        subsets: K, the number of disjoint subsets and sub-models.
        keep_fraction: Share of the training images kept (lowest aggregated scores), or
            ``auto`` for the automatic keep rule.
        aggregate: mean, max, max_var or cross_mean.
        backbone: timm backbone name.
        input_size: Square input side in pixels.
        coreset_ratio: Memory-bank share of the training patches.
        seed: Seed of the partition and the coreset.
        tracking_uri: MLflow tracking URI; empty takes MLFLOW_TRACKING_URI, else ./mlflow.db.
        experiment_name: MLflow experiment.
        registered_model_name: MLflow registered model; ``{category}`` is replaced.
        data_version: Any string that changes when the data changes (keys the step cache).
        bad_input: error (stop at the first unreadable image) or skip (leave it out).
        mlflow_run_id: Parent MLflow run to log into; empty starts a new one.
    """
    data = ingest(
        data_uri=data_uri,
        category=category,
        data_version=data_version,
        bad_input=bad_input,
        tracking_uri=tracking_uri,
        experiment_name=experiment_name,
        mlflow_run_id=mlflow_run_id,
    )
    dataset = data.outputs["dataset"]

    split = partition(
        dataset=dataset,
        subsets=subsets,
        keep_fraction=keep_fraction,
        seed=seed,
        tracking_uri=tracking_uri,
    )

    with dsl.ParallelFor(split.outputs["Output"]) as index:
        submodel = train_submodel(
            dataset=dataset,
            assignment=split.outputs["assignment"],
            index=index,
            backbone=backbone,
            input_size=input_size,
            coreset_ratio=coreset_ratio,
            seed=seed,
            tracking_uri=tracking_uri,
        )
        _resources(submodel)

    purified = aggregate_filter(
        dataset=dataset,
        assignment=split.outputs["assignment"],
        scores=dsl.Collected(submodel.outputs["scores"]),
        aggregate=aggregate,
        keep_fraction=keep_fraction,
        tracking_uri=tracking_uri,
    )

    final = train_final(
        dataset=dataset,
        purified=purified.outputs["purified"],
        subsets=subsets,
        keep_fraction=keep_fraction,
        aggregate=aggregate,
        backbone=backbone,
        input_size=input_size,
        coreset_ratio=coreset_ratio,
        seed=seed,
        tracking_uri=tracking_uri,
    )
    _resources(final)

    evaluation = evaluate(
        dataset=dataset,
        model=final.outputs["model"],
        tracking_uri=tracking_uri,
    )
    _resources(evaluation)

    exported = export_onnx(
        dataset=dataset,
        model=final.outputs["model"],
        metrics=evaluation.outputs["metrics"],
        registered_model_name=registered_model_name,
        tracking_uri=tracking_uri,
    )
    _resources(exported)

    return PipelineOutputs(
        registration=exported.outputs["Output"],
        onnx_model=exported.outputs["onnx_model"],
        evaluation=evaluation.outputs["metrics"],
        purification=purified.outputs["metrics"],
    )
