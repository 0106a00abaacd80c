"""Component export_onnx: one ONNX graph, registered in MLflow behind the champion gate."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def export_onnx(
    dataset: Input[Dataset],
    model: Input[Model],
    metrics: Input[Metrics],
    registered_model_name: str,
    tracking_uri: str,
    onnx_model: Output[Model],
) -> str:
    """Export ``model.onnx``, register it (alias ``candidate``; ``champion`` when its image
    AUROC is at least the champion's) and end the MLflow run. Returns the registration JSON.

    ``registered_model_name`` may hold ``{category}``, replaced by the model's category.
    """
    import json
    from pathlib import Path

    from noisyad import stages, tracking

    stages.log_to_stderr()
    run_id = dataset.metadata["mlflow_run_id"]
    with tracking.step(tracking_uri, run_id, "export_onnx", finish=True) as log:
        info = stages.model_info(model.path)
        name = registered_model_name.replace("{category}", str(info["category"]))
        path = stages.export_step(model.path, Path(onnx_model.path) / "model.onnx")
        example = stages.example_images(dataset.path, int(info["input_size"]))
        registration = tracking.register_onnx(
            tracking_uri, run_id, path, name, example, dict(metrics.metadata), tags=info
        )
        log.log_params({"registered_model_name": name})
        log.set_tags(
            {
                "noisyad.registered_model": name,
                "noisyad.registered_version": registration["version"],
                "noisyad.onnx_path": str(path),
            }
        )
        log.log_metrics({"onnx_megabytes": stages.disk_size(path) / 1e6})

    onnx_model.metadata.update({"file": path.name, "registered_model": name, **registration})
    return json.dumps(registration)
