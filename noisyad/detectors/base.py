"""The detector interface that purification and the pipeline are written against.

A detector family (PatchCore today) implements :class:`Detector`. Purification never looks
inside a detector: it asks for embeddings once, fits sub-models on subsets of them, and
reads image scores back. So a second family plugs in without touching the purification code.

Typical use:
    >>> detector = PatchCore(PatchCoreConfig())           # doctest: +SKIP
    >>> emb = detector.embed(images)                        # once per image
    >>> sub = detector.spawn(); sub.fit(emb[:50])           # a sub-model on a subset
    >>> result = sub.score(emb)                             # maps and image scores
    >>> detector.fit(emb); detector.save("model/")          # the final model
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn


@dataclass
class ScoreResult:
    """What a detector says about a batch of images.

    Attributes:
        anomaly_maps: ``(N, H, W)`` float32, higher = more anomalous, at input resolution.
        image_scores: ``(N,)`` float32, the image score (the maximum of the anomaly map).
    """

    anomaly_maps: np.ndarray
    image_scores: np.ndarray


class Detector(ABC):
    """An unsupervised anomaly detector fitted on (mostly) normal images."""

    #: Registry name, stored in the saved model's config.
    family: str = "detector"

    @property
    @abstractmethod
    def input_size(self) -> int:
        """Square input side in pixels that :meth:`embed` expects."""

    @property
    @abstractmethod
    def threshold(self) -> float | None:
        """Image-score threshold above which an image is labelled anomalous."""

    @abstractmethod
    def embed(self, images: np.ndarray) -> np.ndarray:
        """Turn uint8 ``(N, H, W, 3)`` images into per-image features ``(N, ...)``."""

    @abstractmethod
    def spawn(self) -> Detector:
        """Return an unfitted detector with the same configuration and shared backbone."""

    @abstractmethod
    def fit(self, embeddings: np.ndarray) -> None:
        """Fit on the embeddings of the training images."""

    @abstractmethod
    def score(self, embeddings: np.ndarray) -> ScoreResult:
        """Score embeddings of any images."""

    @abstractmethod
    def calibration_scores(self) -> np.ndarray:
        """Image scores of the training images as if each had been held out of the fit.

        These are the scores that new normal images get, so the label threshold can be
        derived from them without any labelled anomaly.
        """

    @abstractmethod
    def set_threshold(self, threshold: float) -> None:
        """Set the image-score threshold carried by the model."""

    @abstractmethod
    def inference_module(self) -> nn.Module:
        """uint8 ``(N, H, W, 3)`` -> ``(anomaly_map, image_score, label)``, for export."""

    @abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write the fitted model to ``directory`` without pickle."""
