"""Component train_submodel: fit one sub-model on its subset, score every training image."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_submodel(
    dataset: Input[Dataset],
    assignment: Input[Artifact],
    index: int,
    backbone: str,
    input_size: int,
    coreset_ratio: float,
    seed: int,
    tracking_uri: str,
    scores: Output[Artifact],
    metrics: Output[Metrics],
):
    """Sub-model ``index`` of stage 1; logged as a nested MLflow run ``submodel-<index>``."""
    from noisyad import stages, tracking
    from noisyad.detectors import PatchCoreConfig

    stages.log_to_stderr()
    run_id = dataset.metadata["mlflow_run_id"]
    config = PatchCoreConfig(
        backbone=backbone, input_size=input_size, coreset_ratio=coreset_ratio, seed=seed
    )
    with tracking.step(tracking_uri, run_id, "train_submodel", child=f"submodel-{index}") as log:
        figures = stages.train_submodel(dataset.path, assignment.path, index, config, scores.path)
        log.log_params(
            {
                "index": index,
                "backbone": backbone,
                "input_size": input_size,
                "coreset_ratio": coreset_ratio,
                "seed": seed,
            }
        )
        log.log_metrics({key: value for key, value in figures.items() if key != "index"})
        log.log_artifact(scores.path, "scores", f"submodel-{index}.npz")

    scores.metadata["index"] = index
    for key, value in figures.items():
        metrics.log_metric(key, value)
    stages.write_json(metrics.path, figures)
