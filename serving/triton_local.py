"""A real Triton Inference Server on this machine, from the ``nvidia-pytriton`` wheel.

The wheel bundles ``tritonserver`` (with only the python backend) and its shared libraries.
``scripts/setup-triton.sh`` installs it into ``.venv-triton`` (it needs numpy<2). This module
starts that binary the way pytriton itself does, without pytriton's Python layer:

* the backend folder gets the python backend plus the ``triton_python_backend_stub`` built for
  the venv's Python version (the wheel keeps one stub per version under
  ``python_backend_stubs/<major.minor>/``);
* ``LD_LIBRARY_PATH`` gets the wheel's ``nvidia_pytriton.libs`` and the folder holding the
  venv interpreter's ``libpython``, which the stub links against;
* ``PATH`` starts with the venv's ``bin``, so the stub's embedded Python finds the venv (and
  its numpy and onnxruntime) through ``pyvenv.cfg``.

Example:
    >>> with LocalTriton("model_repository") as triton:                 # doctest: +SKIP
    ...     client = tritonclient.http.InferenceServerClient(triton.http_url)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_VENV = Path(__file__).resolve().parent.parent / ".venv-triton"

_PROBE = """
import importlib.util, json, sys, sysconfig
spec = importlib.util.find_spec("pytriton")
print(json.dumps({
    "pytriton": None if spec is None else spec.submodule_search_locations[0],
    "version": f"{sys.version_info[0]}.{sys.version_info[1]}",
    "libdir": sysconfig.get_config_var("LIBDIR"),
}))
"""


class TritonUnavailable(RuntimeError):  # noqa: N818 (a state, not an error of the caller)
    """No runnable tritonserver here; the message says why."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the bundled tritonserver and its parts live."""

    venv: Path
    binary: Path
    libs: Path
    python_backend: Path
    stub: Path
    libpython_dir: Path


def find_triton(venv: str | Path = DEFAULT_VENV) -> TritonInstall:
    """Locate tritonserver inside the pytriton venv.

    Raises:
        TritonUnavailable: When the venv, the wheel or one of its parts is missing.
    """
    venv = Path(venv)
    python = venv / "bin" / "python"
    if not python.is_file():
        raise TritonUnavailable(f"{venv} does not exist; run scripts/setup-triton.sh")
    probe = subprocess.run(
        [str(python), "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    info = json.loads(probe.stdout)
    if info["pytriton"] is None:
        raise TritonUnavailable(f"nvidia-pytriton is not installed in {venv}")
    root = Path(info["pytriton"])
    install = TritonInstall(
        venv=venv,
        binary=root / "tritonserver" / "bin" / "tritonserver",
        libs=root.parent / "nvidia_pytriton.libs",
        python_backend=root / "tritonserver" / "backends" / "python",
        stub=root
        / "tritonserver"
        / "python_backend_stubs"
        / info["version"]
        / "triton_python_backend_stub",
        libpython_dir=Path(info["libdir"]),
    )
    for part in (install.binary, install.libs, install.python_backend, install.stub):
        if not part.exists():
            raise TritonUnavailable(f"the pytriton wheel in {venv} lacks {part}")
    return install


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalTriton:
    """Run tritonserver on a model repository, on loopback ports, as a context manager.

    Args:
        repository: The model repository (``serving.triton.write_triton_repository``).
        install: Where tritonserver is (default :func:`find_triton`).
        startup_timeout: Seconds to wait for the server and its models to be ready.
    """

    def __init__(
        self,
        repository: str | Path,
        install: TritonInstall | None = None,
        startup_timeout: float = 120.0,
    ) -> None:
        self.repository = Path(repository)
        self.install = install or find_triton()
        self.startup_timeout = startup_timeout
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.process: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self._log = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def log_text(self) -> str:
        """What the server printed so far."""
        if self._workdir is None:
            return ""
        return (self._workdir / "tritonserver.log").read_text(errors="replace")

    def _backend_dir(self) -> Path:
        """A backend folder holding the python backend with the stub for this Python."""
        backends = self._workdir / "backends"
        python = backends / "python"
        shutil.copytree(self.install.python_backend, python)
        shutil.copy2(self.install.stub, python / "triton_python_backend_stub")
        return backends

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(self.install.libs), str(self.install.libpython_dir)]
        if env.get("LD_LIBRARY_PATH"):
            paths.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = ":".join(paths)
        env["PATH"] = f"{self.install.venv / 'bin'}:{env.get('PATH', '')}"
        for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            env.pop(key, None)
        return env

    def start(self) -> LocalTriton:
        """Start the server and wait until it (and every model) is ready."""
        self._workdir = Path(tempfile.mkdtemp(prefix="noisyad-triton-"))
        command = [
            str(self.install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={self._backend_dir()}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            "--exit-timeout-secs=10",
        ]
        self._log = (self._workdir / "tritonserver.log").open("wb")
        logger.info("Starting tritonserver on %s: %s", self.http_url, " ".join(command))
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=self._environment()
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.log_text
                self.stop()
                raise TritonUnavailable(
                    f"tritonserver exited with code {self.process.returncode}:\n{log[-3000:]}"
                )
            if self._ready():
                return self
            time.sleep(0.5)
        log = self.log_text
        self.stop()
        raise TritonUnavailable(f"tritonserver not ready in {self.startup_timeout} s:\n{log}")

    def _ready(self) -> bool:
        url = f"http://{self.http_url}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its working folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> LocalTriton:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
