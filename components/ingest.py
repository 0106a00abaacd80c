"""Component ingest: validate one category of a data source and snapshot it for later steps."""

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def ingest(
    data_uri: str,
    category: str,
    data_version: str,
    bad_input: str,
    tracking_uri: str,
    experiment_name: str,
    mlflow_run_id: str,
    dataset: Output[Dataset],
    report: Output[Markdown],
):
    """Snapshot one category of ``data_uri`` (images decoded once); start the MLflow run.

    ``mlflow_run_id`` adopts a run created by ``noisyad pipeline run``; empty starts a new one
    (a run scheduled from the Kubeflow UI). The run id travels in the dataset's metadata, and
    every later step, which all read the dataset, logs into that run.
    """
    from pathlib import Path

    from noisyad import plots, stages, tracking

    stages.log_to_stderr()
    run_id = mlflow_run_id or tracking.start_run(
        tracking_uri, experiment_name, category or "noisyad", {"noisyad.source": "kubeflow"}
    )
    with tracking.step(tracking_uri, run_id, "ingest") as log:
        summary = stages.ingest(data_uri, category, dataset.path, bad_input)
        log.log_params(
            {
                "data_uri": data_uri,
                "category": summary["category"],
                "data_version": data_version,
                "bad_input": bad_input,
            }
        )
        counts = ("n_train", "n_test", "n_test_anomalous", "n_skipped")
        log.log_metrics({key: summary[key] for key in counts})
        if summary["skipped"]:
            log.log_dict({"skipped": summary["skipped"]}, "ingest/skipped.json")

    shown = {key: value for key, value in summary.items() if key != "skipped"}
    dataset.metadata.update({**shown, "mlflow_run_id": run_id})
    Path(report.path).write_text("## Ingested data\n\n" + plots.markdown_table(shown) + "\n")
