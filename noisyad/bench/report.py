"""Summaries, markdown tables, the claim check and plots of the quality sweep.

Averaging: a category's value is the mean +- standard deviation (ddof 1) over seeds. A
dataset's value first averages its categories within each seed, then takes the mean +- std
of those per-seed values, so the spread is the seed-to-seed spread of the dataset figure.

Example:
    >>> summary = summarise(results)                      # doctest: +SKIP
    >>> print(auroc_table(summary, "demo", "image_auroc"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

METRICS = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "defects_removed",
    "defect_rate_kept",
    "normals_kept",
    "kept_share",
)
LABELS = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "aupro": "AUPRO (FPR <= 0.3)",
    "clean": "clean (upper bound)",
    "none": "no purification",
}
AVERAGING = (
    "category: mean +- std (ddof 1) over seeds; dataset: mean over its categories within "
    "each seed, then mean +- std over seeds"
)
CLAIM_ALPHA = 0.2
CLAIM_TOLERANCE = 0.01


def _stats(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": std, "n": len(values)}


def _with_kept_share(rows: list[dict]) -> list[dict]:
    return [{**r, "kept_share": r["n_kept"] / r["n_train"]} for r in rows]


def group_rows(rows: list[dict], by_category: bool) -> list[dict]:
    """Mean +- std over seeds, per category or per dataset (see the module docstring)."""
    rows = _with_kept_share(rows)
    per_seed: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        category = r["category"] if by_category else None
        per_seed[(r["dataset"], category, r["alpha"], r["method"], r["seed"])].append(r)
    per_key: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for (dataset, category, alpha, method, _), members in per_seed.items():
        for metric in METRICS:
            values = [m[metric] for m in members if m.get(metric) is not None]
            if values:
                per_key[(dataset, category, alpha, method)][metric].append(float(np.mean(values)))
    out = []
    for (dataset, category, alpha, method), values in per_key.items():
        record = {"dataset": dataset, "alpha": alpha, "method": method}
        if by_category:
            record["category"] = category
        record.update({metric: _stats(v) for metric, v in values.items()})
        out.append(record)
    return out


def claim(datasets: list[dict], method: str) -> list[dict]:
    """At alpha 0.2: is ``method`` within 1 point of clean and above no purification?"""
    index = {(r["dataset"], r["alpha"], r["method"]): r for r in datasets}
    out = []
    for dataset in sorted({r["dataset"] for r in datasets}):
        rows = [index.get((dataset, CLAIM_ALPHA, m)) for m in ("clean", "none", method)]
        if any(r is None for r in rows):
            continue
        clean, none, purified = (r["image_auroc"]["mean"] for r in rows)
        out.append(
            {
                "dataset": dataset,
                "method": method,
                "clean": clean,
                "none": none,
                "purified": purified,
                "gap_to_clean": clean - purified,
                "gain_over_none": purified - none,
                "within_1_point": clean - purified <= CLAIM_TOLERANCE,
                "above_none": purified > none,
            }
        )
    return out


def summarise(results: dict, claim_methods: tuple[str, ...] = ()) -> dict:
    """Per-category and per-dataset summaries, and the claim check for ``claim_methods``."""
    datasets = group_rows(results["cells"], by_category=False)
    methods = claim_methods or tuple(
        dict.fromkeys(r["method"] for r in results["cells"] if "/" in r["method"])
    )
    return {
        "averaging": AVERAGING,
        "datasets": datasets,
        "categories": group_rows(results["cells"], by_category=True),
        "selections": group_rows(results["selections"], by_category=False),
        "claim": [c for m in methods for c in claim(datasets, m)],
    }


# ----------------------------------------------------------------------------- tables


def _fmt(stats: dict | None, scale: float = 1.0, digits: int = 3) -> str:
    if stats is None:
        return "–"
    return f"{stats['mean'] * scale:.{digits}f} ± {stats['std'] * scale:.{digits}f}"


def _method_order(methods) -> list[str]:
    fixed = [m for m in ("clean", "none") if m in methods]
    return fixed + sorted(m for m in methods if m not in fixed)


def metric_table(
    rows: list[dict], dataset: str, metric: str, methods: list[str] | None = None
) -> str:
    """A markdown table: one row per method, one column per alpha, ``mean ± std``."""
    rows = [r for r in rows if r["dataset"] == dataset and r.get(metric)]
    alphas = sorted({r["alpha"] for r in rows})
    index = {(r["method"], r["alpha"]): r[metric] for r in rows}
    methods = methods or _method_order({r["method"] for r in rows})
    lines = [
        f"| method | {' | '.join(f'α = {a:g}' for a in alphas)} |",
        "|---|" + "---:|" * len(alphas),
    ]
    for method in methods:
        cells = [_fmt(index.get((method, a))) for a in alphas]
        lines.append(f"| {LABELS.get(method, method)} | {' | '.join(cells)} |")
    return "\n".join(lines)


def figures_table(rows: list[dict], dataset: str, methods: list[str] | None = None) -> str:
    """Purification figures per method and alpha: removed / defect rate kept / normals kept."""
    rows = [r for r in rows if r["dataset"] == dataset and "/" in r["method"]]
    alphas = sorted({r["alpha"] for r in rows})
    index = {(r["method"], r["alpha"]): r for r in rows}
    methods = methods or _method_order({r["method"] for r in rows})
    lines = [
        f"| method | {' | '.join(f'α = {a:g}' for a in alphas)} |",
        "|---|" + "---:|" * len(alphas),
    ]
    for method in methods:
        cells = []
        for alpha in alphas:
            r = index.get((method, alpha))
            if r is None:
                cells.append("–")
                continue
            parts = [r.get(k) for k in ("defects_removed", "defect_rate_kept", "normals_kept")]
            cells.append(" / ".join("–" if p is None else f"{100 * p['mean']:.0f}" for p in parts))
        lines.append(f"| {method} | {' | '.join(cells)} |")
    return "\n".join(lines)


def claim_table(rows: list[dict]) -> str:
    """The claim check as a markdown table."""
    lines = [
        "| dataset | method | clean | none | purified | gap to clean | gain over none | holds |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        holds = "yes" if r["within_1_point"] and r["above_none"] else "**no**"
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r['clean']:.3f} | {r['none']:.3f} | "
            f"{r['purified']:.3f} | {100 * r['gap_to_clean']:+.1f} pt | "
            f"{100 * r['gain_over_none']:+.1f} pt | {holds} |"
        )
    return "\n".join(lines)


def markdown_report(results: dict, summary: dict) -> str:
    """Every table of the sweep, as printed by ``noisyad bench quality``."""
    datasets = list(dict.fromkeys(r["dataset"] for r in summary["datasets"]))
    parts = []
    for dataset in datasets:
        for metric in ("image_auroc", "pixel_auroc", "aupro"):
            if any(r["dataset"] == dataset and r.get(metric) for r in summary["datasets"]):
                table = metric_table(summary["datasets"], dataset, metric)
                parts.append(f"### {dataset}: {LABELS[metric]}\n\n{table}")
        table = figures_table(summary["datasets"], dataset)
        parts.append(
            f"### {dataset}: purification figures (% defects removed / % defective in the "
            f"kept set / % normals kept)\n\n{table}"
        )
    parts.append(f"### Claim at α = {CLAIM_ALPHA:g}\n\n{claim_table(summary['claim'])}")
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- plots


def plot_auroc_vs_alpha(
    summary: dict, methods: list[str], path: Path, title: str = "image AUROC vs contamination"
) -> Path:
    """Image AUROC (mean ± std over seeds) against alpha, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["datasets"]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.6 * len(datasets), 3.8), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for method in methods:
            points = sorted(
                (r["alpha"], r["image_auroc"])
                for r in rows
                if r["dataset"] == dataset and r["method"] == method and r.get("image_auroc")
            )
            if not points:
                continue
            x = [p[0] for p in points]
            y = np.array([p[1]["mean"] for p in points])
            err = np.array([p[1]["std"] for p in points])
            style = {"clean": "k-", "none": "k--"}.get(method, "o-")
            ax.plot(x, y, style, label=LABELS.get(method, method), lw=1.6, ms=4)
            ax.fill_between(x, y - err, y + err, alpha=0.12)
        ax.set_title(dataset)
        ax.set_xlabel("contamination α")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("image AUROC")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_score_histograms(
    results: dict, path: Path, alpha: float = CLAIM_ALPHA, seed: int | None = None
) -> Path:
    """Aggregated-score histograms (normal vs defective) of one group per dataset.

    Rows: datasets (their first category); columns: aggregation methods. Vertical lines mark
    the automatic keep rule's cut and the 0.8 keep fraction's cut.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from noisyad.bench.quality import keep_for
    from noisyad.purification import Aggregation, aggregate

    tables = [t for t in results["tables"] if t["alpha"] == alpha]
    seed = min(t["seed"] for t in tables) if seed is None else seed
    chosen = {}
    for t in tables:
        if t["seed"] == seed:
            chosen.setdefault(t["dataset"], t)
    methods = list(Aggregation)
    fig, axes = plt.subplots(
        len(chosen), len(methods), figsize=(3.3 * len(methods), 2.6 * len(chosen)), squeeze=False
    )
    for row, (dataset, t) in enumerate(chosen.items()):
        table, subsets = np.array(t["scores"]), np.array(t["subsets"])
        defective = np.array(t["defective"], dtype=bool)
        for col, method in enumerate(methods):
            ax = axes[row][col]
            aggregated = aggregate(table, subsets, method)
            scores = np.log10(np.maximum(aggregated, 1e-12))
            bins = np.linspace(scores.min(), scores.max(), 30)
            ax.hist(scores[~defective], bins, alpha=0.6, label="normal")
            ax.hist(scores[defective], bins, alpha=0.6, label="defective")
            for rule, colour in (("auto", "red"), ("0.8", "black")):
                kept = keep_for(rule, aggregated, alpha)
                ax.axvline(scores[kept].max(), color=colour, ls="--", lw=1, label=f"cut {rule}")
            ax.set_title(f"{dataset} {t['category']}: {method.value}", fontsize=9)
            ax.tick_params(labelsize=7)
        axes[row][0].set_ylabel("images")
    for ax in axes[-1]:
        ax.set_xlabel("log10 aggregated score")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"aggregated scores at α = {alpha:g}, seed {seed}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
