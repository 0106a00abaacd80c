"""Component evaluate: image and pixel metrics on the test split, ROC curve, heat maps."""

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(
    dataset: Input[Dataset],
    model: Input[Model],
    tracking_uri: str,
    metrics: Output[Metrics],
    roc: Output[ClassificationMetrics],
    scores: Output[Dataset],
    report: Output[HTML],
):
    """Metrics for the Kubeflow UI and MLflow, the per-image test score table, the figures."""
    from pathlib import Path

    from noisyad import plots, stages, tracking
    from noisyad.metrics import roc_curve_points

    stages.log_to_stderr()
    run_id = dataset.metadata["mlflow_run_id"]
    with tracking.step(tracking_uri, run_id, "evaluate") as log:
        evaluation = stages.evaluate_step(dataset.path, model.path)
        values = stages.flat_metrics(
            {key: value for key, value in evaluation.metrics.items() if key != "purification"}
        )
        rows = stages.test_score_rows(evaluation)
        figures = plots.evaluation_figures(evaluation)
        stages.write_csv(scores.path, rows)
        log.log_metrics(values)
        log.log_dict(evaluation.metrics, "evaluation/metrics.json")
        log.log_artifact(scores.path, "evaluation", "test_scores.csv")
        for name, figure in figures.items():
            log.log_figure(figure, f"evaluation/{name}.png")

    for key, value in values.items():
        metrics.log_metric(key, value)
    stages.write_json(metrics.path, values)
    labels = [row["label"] for row in rows]
    fpr, tpr, thresholds = roc_curve_points(labels, [row["image_score"] for row in rows])
    roc.log_roc_curve(fpr, tpr, thresholds)
    if "tn_at_threshold" in evaluation.metrics:
        m = evaluation.metrics
        matrix = [
            [m["tn_at_threshold"], m["fp_at_threshold"]],
            [m["fn_at_threshold"], m["tp_at_threshold"]],
        ]
        roc.log_confusion_matrix(["good", "defect"], matrix)
    stages.write_json(roc.path, {"fpr": fpr, "tpr": tpr, "thresholds": thresholds})
    scores.metadata["rows"] = len(rows)
    pngs = {name: plots.png_bytes(figure) for name, figure in figures.items()}
    Path(report.path).write_text(plots.html_report("Evaluation", {"metrics": values}, pngs))
