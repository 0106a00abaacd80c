"""Run the pipeline on this machine with ``kfp.local`` (SubprocessRunner, current environment).

Every step runs as a subprocess of the current interpreter, so the installed ``noisyad``
is what the steps import (no virtual environment per task, no pip install). kfp >= 2.16 runs
``dsl.ParallelFor`` (two iterations at a time) and ``dsl.Collected`` locally, and with caching
on, a step whose component, arguments and input artifacts are unchanged is not run again:
its earlier outputs are reused as long as their files still exist.

Layout under ``pipeline_root``: ``<pipeline name>-<timestamp>/<task>/<output>`` per run, the
full log in ``pipeline.log``. The step cache lives in ``cache_root``, shared across runs.

Example:
    >>> outputs = run_pipeline({"data_uri": "demo", "category": "brick"}, Path("runs/x"),
    ...                        Path("runs/.kfp_cache"))                      # doctest: +SKIP
    >>> json.loads(outputs["registration"])["version"]                      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

# kfp.local's console lines worth showing while a person watches; the rest goes to the log file.
PROGRESS = re.compile(r"Executing task|finished with status|cache hit| noisyad\.| WARNING | ERROR ")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class LogTee(io.TextIOBase):
    """A stdout replacement: every line to the log file, progress lines to the console."""

    def __init__(self, log_file: Path, console: io.TextIOBase | None, prefix: str = "") -> None:
        self.file = log_file.open("a", encoding="utf-8")
        self.console = console
        self.prefix = prefix
        self.lock = threading.Lock()
        self.pending = ""

    def write(self, text: str) -> int:
        with self.lock:
            self.file.write(ANSI.sub("", text))
            self.pending += text
            *lines, self.pending = self.pending.split("\n")
            if self.console is not None:
                for line in lines:
                    if PROGRESS.search(line):
                        self.console.write(self.prefix + line.strip() + "\n")
                self.console.flush()
        return len(text)

    def flush(self) -> None:
        with self.lock:
            if not self.file.closed:
                self.file.flush()

    def close(self) -> None:
        super().close()  # flushes first
        self.file.close()


def run_pipeline(
    arguments: dict[str, Any],
    pipeline_root: Path,
    cache_root: Path,
    enable_caching: bool = True,
    quiet: bool = False,
    prefix: str = "",
) -> dict[str, Any]:
    """Run the pipeline locally and return its outputs.

    Args:
        arguments: Pipeline parameters (see :func:`pipelines.purification_pipeline`).
        pipeline_root: Folder for this run's artifacts and ``pipeline.log``.
        cache_root: The step cache, shared by every run that should reuse steps.
        enable_caching: Reuse steps whose inputs did not change.
        quiet: Show nothing on the console (the log file still gets everything).
        prefix: Put in front of every console line (which category it is about).

    Returns:
        ``registration`` (JSON text), ``onnx_model``, ``evaluation`` and ``purification``
        (kfp artifacts: ``.path``, ``.metadata``).

    Raises:
        RuntimeError: A step failed (kfp names it; the step's error is in the log and MLflow).
    """
    from kfp import local

    from pipelines.purification_pipeline import purification_pipeline

    pipeline_root.mkdir(parents=True, exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        raise_on_error=True,
        enable_caching=enable_caching,
        cache_root=str(cache_root),
    )
    tee = LogTee(pipeline_root / "pipeline.log", None if quiet else sys.stderr, prefix)
    # kfp.local swaps the root logger's handlers per task and, with ParallelFor threads
    # overlapping, can leave one of its handlers (bound to ``tee``) behind: restore them.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(tee):
            # The steps run in this interpreter, not in the image the components name, and
            # the cluster's resource requests mean nothing here: kfp warns about both.
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
            task = purification_pipeline(**arguments)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        tee.close()
    return dict(task.outputs)
