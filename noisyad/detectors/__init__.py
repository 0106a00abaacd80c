"""Anomaly detector families behind one interface (:class:`Detector`)."""

from noisyad.detectors.base import Detector, ScoreResult
from noisyad.detectors.patchcore import PatchCore, PatchCoreConfig

__all__ = ["Detector", "PatchCore", "PatchCoreConfig", "ScoreResult", "load_detector"]


def load_detector(directory: str, device: str | None = None) -> Detector:
    """Load a saved detector of any family from ``directory``."""
    import json
    from pathlib import Path

    config = Path(directory) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(
            f"{directory} holds no trained model (no config.json); train one with noisyad train"
        )
    family = json.loads(config.read_text()).get("family")
    if family == PatchCore.family:
        return PatchCore.load(directory, device=device)
    raise ValueError(f"{directory}: unknown detector family {family!r}")
