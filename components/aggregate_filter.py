"""Component aggregate_filter: aggregate the sub-model scores, keep the lowest-scoring images."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def aggregate_filter(
    dataset: Input[Dataset],
    assignment: Input[Artifact],
    scores: Input[list[Artifact]],
    aggregate: str,
    keep_fraction: str,
    tracking_uri: str,
    purified: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """The purified set: ``purification.json`` and the per-image score table ``scores.csv``.

    Logs the histogram of aggregated scores with the keep cut (known defects marked when the
    dataset carries the demo's evaluation-only sidecar) and the purification figures.
    """
    from pathlib import Path

    from noisyad import plots, stages, tracking

    stages.log_to_stderr()
    run_id = dataset.metadata["mlflow_run_id"]
    with tracking.step(tracking_uri, run_id, "aggregate_filter") as log:
        files = [score.path for score in scores]
        result = stages.aggregate_filter(
            dataset.path, assignment.path, files, aggregate, keep_fraction, purified.path
        )
        histogram = plots.score_histogram(
            result.aggregated, result.kept, result.defective, aggregate
        )
        summary = result.summary
        values = stages.flat_metrics(
            {
                key: summary[key]
                for key in ("n_train", "n_kept", "cut", "purification")
                if key in summary
            }
        )
        log.log_params({"aggregate": aggregate, "keep_fraction": keep_fraction})
        log.log_metrics(values)
        log.log_figure(histogram, "purification/score_histogram.png")
        log.log_artifact(purified.path, "purification")

    purified.metadata.update(
        {key: value for key, value in summary.items() if key != "purification"}
    )
    for key, value in values.items():
        metrics.log_metric(key, value)
    stages.write_json(metrics.path, values)
    page = plots.html_report(
        "Purification",
        {"summary": values},
        {"Aggregated training scores": plots.png_bytes(histogram)},
    )
    Path(report.path).write_text(page)
