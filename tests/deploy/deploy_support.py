"""Helpers of the deployment checks: where things are, the tools, rendering an overlay.

Nothing here needs Docker or a cluster: ``kubectl kustomize`` renders the manifests offline,
and the checkers (kubernetes-validate, checkov, hadolint) read files.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
VENV_BIN = Path(sys.executable).parent
CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"

#: Objects per kind of every overlay rendered in this session (printed in the summary).
rendered_counts: dict[str, Counter] = {}


@dataclass(frozen=True)
class Rendered:
    """One overlay rendered by kustomize: its YAML text and the parsed objects."""

    overlay: str
    text: str
    objects: list[dict]

    def of_kind(self, kind: str) -> list[dict]:
        """The rendered objects of one kind, in output order."""
        return [o for o in self.objects if o["kind"] == kind]

    def named(self, kind: str, name: str) -> dict:
        """The one object of ``kind`` called ``name``."""
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: expected one {kind}/{name}, found {len(found)}"
        return found[0]


def tool(name: str) -> str:
    """Path of a command-line tool from the project venv or PATH; fails clearly if missing."""
    candidate = VENV_BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found in {VENV_BIN} or on PATH: run bash scripts/setup.sh")
    return found


def render(overlay: str) -> Rendered:
    """Run ``kubectl kustomize`` on one overlay."""
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"kustomize failed for {overlay}:\n{result.stderr}"
    objects = [o for o in yaml.safe_load_all(result.stdout) if o]
    rendered_counts[overlay] = Counter(o["kind"] for o in objects)
    return Rendered(overlay, result.stdout, objects)
