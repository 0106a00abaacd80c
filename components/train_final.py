"""Component train_final: fit the final detector on the purified set."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_final(
    dataset: Input[Dataset],
    purified: Input[Dataset],
    subsets: int,
    keep_fraction: str,
    aggregate: str,
    backbone: str,
    input_size: int,
    coreset_ratio: float,
    seed: int,
    tracking_uri: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """The model folder ``noisyad train`` writes (safetensors + JSON), with its label threshold."""
    from pathlib import Path

    from noisyad import stages, tracking
    from noisyad.detectors import PatchCoreConfig
    from noisyad.purification import parse_keep_fraction
    from noisyad.training import TrainConfig

    stages.log_to_stderr()
    run_id = dataset.metadata["mlflow_run_id"]
    config = TrainConfig(
        detector=PatchCoreConfig(
            backbone=backbone, input_size=input_size, coreset_ratio=coreset_ratio, seed=seed
        ),
        subsets=subsets,
        keep_fraction=parse_keep_fraction(keep_fraction),
        aggregate=aggregate,
        seed=seed,
    )
    with tracking.step(tracking_uri, run_id, "train_final") as log:
        report = stages.train_final(dataset.path, purified.path, config, model.path)
        log.log_params(
            {
                "backbone": backbone,
                "input_size": input_size,
                "coreset_ratio": coreset_ratio,
                "threshold_quantile": config.threshold_quantile,
                "threshold_margin": config.threshold_margin,
            }
        )
        values = {"threshold": report.threshold, "bank_size": report.bank_size}
        log.log_metrics(values)
        log.log_artifact(Path(model.path) / "training.json", "model")

    model.metadata.update({"category": report.category, "framework": "noisyad-patchcore", **values})
    for key, value in values.items():
        metrics.log_metric(key, value)
    stages.write_json(metrics.path, values)
