"""Shared fixtures for the deployment checks: rendered overlays, once per session.

The rendered object counts per overlay are printed in pytest's closing summary.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from deploy_support import DOCKERFILES, OVERLAYS, Rendered, render, rendered_counts


@pytest.fixture(scope="session")
def rendered() -> dict[str, Rendered]:
    """Every overlay under k8s/overlays, rendered once."""
    return {overlay: render(overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="session")
def rendered_dir(rendered: dict[str, Rendered], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding each overlay's YAML (``<overlay>.yaml``) and a copy of each Dockerfile."""
    folder = tmp_path_factory.mktemp("rendered")
    for overlay, result in rendered.items():
        (folder / f"{overlay}.yaml").write_text(result.text)
    for dockerfile in DOCKERFILES:
        shutil.copy(dockerfile, folder / dockerfile.name)
    return folder


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print how many objects each overlay rendered, by kind."""
    if not rendered_counts:
        return
    terminalreporter.section("rendered Kubernetes objects per overlay")
    for overlay, counts in sorted(rendered_counts.items()):
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))
        terminalreporter.write_line(f"{overlay}: {sum(counts.values())} objects ({kinds})")
