"""Figures and reports render without a display and show what they claim."""

from __future__ import annotations

import numpy as np

from noisyad import plots

PNG = b"\x89PNG"


def test_histogram_marks_the_cut_and_known_defects() -> None:
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(1.0, 0.1, 40), rng.normal(2.0, 0.2, 10)])
    kept = scores <= np.sort(scores)[39]
    defective = np.arange(50) >= 40

    figure = plots.score_histogram(scores, kept, defective, "cross_mean")
    axis = figure.axes[0]
    assert [t.get_text() for t in axis.get_legend().get_texts()] == [
        "normal (40)",
        "defective (10)",
    ]
    assert axis.lines[0].get_xdata()[0] == scores[kept].max()
    assert plots.png_bytes(figure).startswith(PNG)
    assert plots.png_bytes(plots.score_histogram(scores, kept)).startswith(PNG)


def test_anomaly_map_grid_shows_defects_first_then_normals() -> None:
    images = np.zeros((6, 16, 16, 3), np.uint8)
    maps = np.random.default_rng(0).random((6, 16, 16)).astype(np.float32)
    labels = np.array([0, 1, 0, 1, 0, 0])
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.4])
    figure = plots.anomaly_map_grid(images, maps, labels, scores, threshold=0.5, max_images=4)
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles == ["defect 0.90 flagged", "defect 0.80 flagged", "good 0.40", "good 0.30"]


def test_html_report_inlines_figures_and_escapes_text() -> None:
    png = plots.png_bytes(plots.roc_figure([0.0, 0.5, 1.0], [0.0, 0.9, 1.0], 0.95))
    page = plots.html_report("Eval <1>", {"metrics": {"image_auroc": 0.95}}, {"ROC": png})
    assert "Eval &lt;1&gt;" in page and "0.9500" in page
    assert "data:image/png;base64," in page
    assert plots.markdown_table({"n": 3, "x": 0.5}).splitlines()[-1] == "| x | 0.5000 |"
