"""``noisyad bench``: the quality sweep and the speed benchmark, as a typer sub-app.

Usage:
    noisyad bench quality --out runs/bench --plots docs/img --jobs 2   # the full sweep
    noisyad bench quality --quick --out /tmp/bench                    # < 1 minute
    noisyad bench speed --out runs/bench

Each command prints its markdown tables on stdout and writes ``quality.json`` /
``speed.json`` (every measured figure, the settings, the machine and the command) and the
same tables as ``.md`` into ``--out``.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Benchmarks: purification quality sweep and stage timings.")
logger = logging.getLogger("noisyad.bench")

Out = Annotated[Path, typer.Option(help="Folder for the JSON and markdown results.")]
Quick = Annotated[bool, typer.Option(help="A tiny run (for tests): seconds, not minutes.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")]


def _command(ctx: typer.Context) -> str:
    """The command line that reproduces this run (options that differ from the defaults)."""
    parts = ["noisyad", "bench", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == param.default or param.name == "quiet":
            continue
        option = param.opts[0]
        if isinstance(value, bool):
            parts.append(option if value else getattr(param, "secondary_opts", [option])[0])
        else:
            parts += [option, shlex.quote(str(value))]
    return " ".join(parts)


def _numbers(text: str | None, kind=float) -> tuple | None:
    return None if text is None else tuple(kind(v) for v in text.split(",") if v.strip())


def _write(out: Path, name: str, payload: dict, markdown: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=1))
    (out / f"{name}.md").write_text(markdown)


@app.command("quality")
def quality(
    ctx: typer.Context,
    out: Out = Path("runs/bench"),
    plots: Annotated[
        Path | None, typer.Option(help="Folder for the PNG plots (default: OUT/img).")
    ] = None,
    quick: Quick = False,
    datasets: Annotated[str | None, typer.Option(help="demo,fashion-mnist,mnist")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds.")] = None,
    alphas: Annotated[
        str | None, typer.Option(help="Comma-separated contamination levels.")
    ] = None,
    classes: Annotated[str | None, typer.Option(help="Normal classes (one-class sets).")] = None,
    jobs: Annotated[int, typer.Option(help="Groups run in parallel processes.")] = 1,
    threads: Annotated[int, typer.Option(help="Torch threads per process.")] = 1,
    max_minutes: Annotated[
        float, typer.Option(help="Refuse to start when the estimate exceeds this.")
    ] = 60.0,
    quiet: Quiet = False,
) -> None:
    """Contamination sweep: clean vs no purification vs every purification variant."""
    from noisyad.bench import report
    from noisyad.bench.data import DatasetUnavailableError
    from noisyad.bench.estimate import estimate_seconds
    from noisyad.bench.quality import SweepConfig
    from noisyad.bench.runner import run_sweep
    from noisyad.cli import fail, setup_logging

    setup_logging(quiet)
    overrides = {"jobs": jobs, "threads": threads}
    for key, value in (
        ("datasets", None if datasets is None else tuple(datasets.split(","))),
        ("seeds", _numbers(seeds, int)),
        ("alphas", _numbers(alphas)),
        ("classes", _numbers(classes, int)),
    ):
        if value is not None:
            overrides[key] = value
    try:
        config = SweepConfig.quick(**overrides) if quick else SweepConfig(**overrides)
    except ValueError as exc:
        raise fail(exc) from exc
    estimate = estimate_seconds(config)
    typer.echo(
        f"estimate: {estimate / 60:.1f} min for {len(config.groups())} groups "
        f"({config.jobs} process(es) x {config.threads} thread(s))",
        err=True,
    )
    if estimate > max_minutes * 60:
        raise fail(ValueError(f"estimated {estimate / 60:.0f} min > --max-minutes {max_minutes}"))

    start = time.perf_counter()

    def progress(done: int, total: int, timing: dict) -> None:
        elapsed = time.perf_counter() - start
        logger.info(
            "group %d/%d done: %s %s seed %s in %.0f s; elapsed %.1f min, about %.1f min left",
            done,
            total,
            timing["dataset"],
            timing["category"],
            timing["seed"],
            timing["seconds"]["total"],
            elapsed / 60,
            elapsed / done * (total - done) / 60,
        )

    try:
        results = run_sweep(config, progress, store_dir=out / "groups")
    except DatasetUnavailableError as exc:
        raise fail(exc) from exc
    results["meta"].update({"command": _command(ctx), "estimate_seconds": estimate})
    results["summary"] = report.summarise(results)
    markdown = report.markdown_report(results, results["summary"])
    _write(out, "quality", results, markdown)

    plots = plots or out / "img"
    methods = [m for m in config.methods if m.endswith("/0.8") or m.endswith("/auto")]
    report.plot_auroc_vs_alpha(
        results["summary"],
        ["clean", "none", *methods],
        plots / "auroc_vs_alpha_aggregation.png",
        "image AUROC vs contamination: aggregation methods",
    )
    rules = [m for m in config.methods if m.startswith("cross_mean/")]
    report.plot_auroc_vs_alpha(
        results["summary"],
        ["clean", "none", *rules],
        plots / "auroc_vs_alpha_keep_rule.png",
        "image AUROC vs contamination: keep rules (cross_mean)",
    )
    report.plot_score_histograms(results, plots / "aggregated_scores.png")
    typer.echo(markdown)
    typer.echo(f"results: {out / 'quality.json'}; plots: {plots}", err=True)


@app.command("speed")
def speed(
    ctx: typer.Context,
    out: Out = Path("runs/bench"),
    quick: Quick = False,
    sections: Annotated[
        str, typer.Option(help="Any of stages,extractor,coreset,stage1,capacity.")
    ] = "stages,extractor,coreset,stage1,capacity",
    threads: Annotated[int, typer.Option(help="Torch / ONNX Runtime threads (not stages).")] = 1,
    quiet: Quiet = False,
) -> None:
    """Stage timings of the main job, extractor throughput, coreset and stage-1 scaling."""
    import tempfile

    from noisyad.bench import scaling
    from noisyad.bench import speed as speed_bench
    from noisyad.bench.runner import machine_info
    from noisyad.cli import fail, setup_logging

    setup_logging(quiet)
    wanted = [s.strip() for s in sections.split(",") if s.strip()]
    known = {"stages", "extractor", "coreset", "stage1", "capacity"}
    if unknown := set(wanted) - known:
        raise fail(ValueError(f"unknown sections {sorted(unknown)}; choose from {sorted(known)}"))
    small = {"n_train_normal": 30, "n_test_normal": 8, "n_test_defective": 8} if quick else {}
    payload: dict = {"machine": machine_info(), "command": _command(ctx)}
    with tempfile.TemporaryDirectory(prefix="noisyad-speed-") as tmp:
        work = Path(tmp)
        for section in wanted:
            start = time.perf_counter()
            logger.info("speed: %s", section)
            if section == "stages":
                categories = ("brick",) if quick else ("brick", "grass", "gravel")
                payload[section] = speed_bench.stage_times(work, categories, **small)
            elif section == "extractor":
                payload[section] = speed_bench.extractor_throughput(
                    work, threads=threads, min_seconds=0.3 if quick else 3.0
                )
            elif section == "coreset":
                sizes = (2_000, 4_000, 8_000, 16_000) if quick else None
                kwargs = {"sizes": sizes, "thread_check": None} if quick else {}
                payload[section] = scaling.coreset_scaling(threads=threads, **kwargs)
            elif section == "stage1":
                payload[section] = speed_bench.stage1_vs_k(work, threads=threads, **small)
            elif section == "capacity":
                sizes = (10, 20, 40) if quick else (60, 120, 240)
                payload[section] = scaling.capacity(sizes, threads=threads)
            logger.info("speed: %s done in %.0f s", section, time.perf_counter() - start)
    markdown = speed_bench.speed_markdown(payload)
    _write(out, "speed", payload, markdown)
    typer.echo(markdown)
    typer.echo(f"results: {out / 'speed.json'}", err=True)
