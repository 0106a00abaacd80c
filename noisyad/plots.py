"""Figures and small reports a person looks at: purification histogram, heat maps, ROC curve.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``, rendered by
Agg), so nothing here touches pyplot's global state or needs a display. The pipeline logs
them to MLflow and embeds them in the HTML reports that the Kubeflow UI shows.

Example:
    >>> fig = score_histogram(np.array([0.1, 0.2, 0.9]), np.array([True, True, False]))
    >>> png = png_bytes(fig)
    >>> png[:4] == b"\\x89PNG"
    True
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np
from matplotlib.figure import Figure

NORMAL_COLOUR = "#4c72b0"
DEFECT_COLOUR = "#c44e52"
UNKNOWN_COLOUR = "#8c8c8c"


def score_histogram(
    aggregated: np.ndarray,
    kept: np.ndarray,
    defective: np.ndarray | None = None,
    method: str = "",
) -> Figure:
    """Histogram of the aggregated training scores with the keep cut.

    Args:
        aggregated: ``(N,)`` aggregated score per training image.
        kept: ``(N,)`` True for the images in the purified set.
        defective: ``(N,)`` True for images known to be defective (the demo's sidecar), or
            None when unknown; known defects are drawn in red, stacked on the normal images.
        method: Aggregation method, for the axis label.
    """
    aggregated = np.asarray(aggregated, dtype=np.float64)
    kept = np.asarray(kept, dtype=bool)
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax = fig.add_subplot()
    bins = np.histogram_bin_edges(aggregated, bins=min(40, max(20, len(aggregated) // 4)))
    if defective is None:
        ax.hist(aggregated, bins=bins, color=UNKNOWN_COLOUR, label="training images")
    else:
        defective = np.asarray(defective, dtype=bool)
        ax.hist(
            [aggregated[~defective], aggregated[defective]],
            bins=bins,
            stacked=True,
            color=[NORMAL_COLOUR, DEFECT_COLOUR],
            label=[f"normal ({int((~defective).sum())})", f"defective ({int(defective.sum())})"],
        )
    cut = float(aggregated[kept].max())
    ax.axvline(cut, color="black", linestyle="--", linewidth=1.2)
    ax.annotate(
        f" keep {int(kept.sum())} of {len(kept)}",
        xy=(cut, 1.0),
        xycoords=("data", "axes fraction"),
        va="top",
        fontsize=9,
    )
    ax.set_xlabel(f"aggregated score{f' ({method})' if method else ''}")
    ax.set_ylabel("training images")
    ax.set_title("Purification: images left of the cut form the purified set", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    return fig


def anomaly_map_grid(
    images: np.ndarray,
    maps: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float | None,
    max_images: int = 12,
    columns: int = 6,
) -> Figure:
    """Test images with their anomaly maps overlaid: the most anomalous half, then normals.

    Args:
        images: ``(N, S, S, 3)`` uint8 test images.
        maps: ``(N, S, S)`` anomaly maps at the same size.
        labels: ``(N,)`` 1 anomalous, 0 normal.
        scores: ``(N,)`` image scores.
        threshold: The model's label threshold (titles say whether an image is flagged).
        max_images: How many tiles to show.
        columns: Tiles per row.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    order_bad = [i for i in np.argsort(-scores) if labels[i] == 1]
    order_good = [i for i in np.argsort(-scores) if labels[i] == 0]
    n_bad = min(max_images // 2, len(order_bad))
    chosen = (order_bad[:n_bad] + order_good[: max_images - n_bad])[:max_images]
    rows = max(1, -(-len(chosen) // columns))
    fig = Figure(figsize=(2.0 * columns, 2.25 * rows), layout="constrained")
    vmax = float(np.percentile(maps, 99.5)) if maps.size else 1.0
    vmin = float(np.percentile(maps, 1.0)) if maps.size else 0.0
    for slot in range(rows * columns):
        ax = fig.add_subplot(rows, columns, slot + 1)
        ax.set_axis_off()
        if slot >= len(chosen):
            continue
        i = chosen[slot]
        ax.imshow(images[i])
        ax.imshow(maps[i], cmap="jet", alpha=0.45, vmin=vmin, vmax=vmax)
        flagged = threshold is not None and scores[i] > threshold
        truth = "defect" if labels[i] == 1 else "good"
        colour = DEFECT_COLOUR if flagged else NORMAL_COLOUR
        ax.set_title(
            f"{truth} {scores[i]:.2f}{' flagged' if flagged else ''}", fontsize=8, color=colour
        )
    fig.suptitle("Anomaly maps on test images (title: truth, image score)", fontsize=10)
    return fig


def roc_figure(fpr: list[float], tpr: list[float], auroc: float) -> Figure:
    """The image-level ROC curve."""
    fig = Figure(figsize=(4.2, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, color=DEFECT_COLOUR, linewidth=2, label=f"AUROC {auroc:.3f}")
    ax.plot([0, 1], [0, 1], color=UNKNOWN_COLOUR, linestyle=":", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("Image-level ROC on the test split", fontsize=10)
    ax.legend(loc="lower right", fontsize=9)
    return fig


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """Render a figure as PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def markdown_table(values: dict) -> str:
    """A two-column Markdown table of ``{name: value}``; floats with 4 decimals."""
    lines = ["| | |", "|---|---|"]
    for key, value in values.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {shown} |")
    return "\n".join(lines)


def html_report(title: str, tables: dict[str, dict], figures: dict[str, bytes]) -> str:
    """A self-contained HTML page: named key/value tables, then PNG figures inlined."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:16px}table{border-collapse:collapse}"
        "td{border:1px solid #ccc;padding:2px 8px}img{max-width:100%}</style></head><body>",
        f"<h2>{html.escape(title)}</h2>",
    ]
    for heading, values in tables.items():
        parts.append(f"<h3>{html.escape(heading)}</h3><table>")
        for key, value in values.items():
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            parts.append(f"<tr><td>{html.escape(str(key))}</td><td>{html.escape(shown)}</td></tr>")
        parts.append("</table>")
    for heading, png in figures.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<h3>{html.escape(heading)}</h3><img src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def evaluation_figures(evaluation) -> dict[str, Figure]:
    """The ROC curve and the anomaly-map grid of an :class:`~noisyad.evaluation.Evaluation`."""
    from noisyad.metrics import roc_curve_points

    labels = np.array([s.label for s in evaluation.loaded.samples])
    scores = evaluation.result.image_scores
    fpr, tpr, _ = roc_curve_points(labels, scores)
    return {
        "roc_curve": roc_figure(fpr, tpr, evaluation.metrics["image_auroc"]),
        "anomaly_maps": anomaly_map_grid(
            evaluation.loaded.images,
            evaluation.result.anomaly_maps,
            labels,
            scores,
            evaluation.metrics.get("threshold"),
        ),
    }
