"""PatchCore: a memory bank of normal patch features and nearest-neighbour patch distances.

Roth et al., "Towards Total Recall in Industrial Anomaly Detection" (CVPR 2022). Each image
becomes a grid of locally aggregated mid-level backbone features (one vector per patch). The
fit keeps a greedy k-center coreset of all training patches as the memory bank. A patch's
anomaly score is its distance to the nearest bank entry; the patch scores, upsampled and
smoothed with a Gaussian, are the anomaly map, and the image score is the map's maximum.

One torch module (:class:`PatchCoreModule`) computes scores both at training time and in the
exported ONNX graph, so the two cannot drift apart. Its nearest-neighbour search walks the
memory bank in chunks and keeps a running minimum, so no patches x bank distance matrix is
ever held in memory at once.

Example:
    >>> detector = PatchCore(PatchCoreConfig(weights="random"))
    >>> emb = detector.embed(np.zeros((4, 128, 128, 3), np.uint8))
    >>> detector.fit(emb)
    >>> detector.score(emb).image_scores.shape
    (4,)
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from noisyad.backbones import (
    DEFAULT_BACKBONE,
    FeatureExtractor,
    backbone_architecture,
    create_backbone,
    default_layers,
)
from noisyad.detectors.base import Detector, ScoreResult

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class PatchCoreConfig(BaseModel):
    """Settings of a PatchCore detector (saved with the model)."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = DEFAULT_BACKBONE
    weights: str = Field("imagenet", description="'imagenet', 'random' or a checkpoint path")
    layers: tuple[int, ...] | None = None
    input_size: int = Field(128, ge=32, le=1024)
    coreset_ratio: float = Field(0.1, gt=0.0, le=1.0)
    coreset_projection: int = Field(
        64, ge=8, description="random-projection width for coreset distances"
    )
    pool_size: int = Field(3, ge=1, description="local aggregation window (zero-padded)")
    patch_stride: int = Field(8, ge=1, description="input pixels per patch-grid cell")
    blur_sigma: float = Field(4.0, ge=0.0)
    nn_chunk: int = Field(2048, ge=16, description="memory-bank rows per distance chunk")
    batch_size: int = Field(32, ge=1)
    seed: int = 0
    device: str = "cpu"


def progress_enabled() -> bool:
    """Show progress bars only when a person is watching a terminal."""
    return sys.stderr.isatty()


def check_device(device: str) -> None:
    """Reject a device string torch cannot use here, saying what to pass instead."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device = {device!r}: use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device = {device!r}: no CUDA GPU is available here; use --device cpu")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device = {device!r}: only {torch.cuda.device_count()} GPU(s) found")


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian kernel covering +-4 sigma."""
    radius = max(1, int(4.0 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


class PatchEmbedder(nn.Module):
    """uint8 images -> patch features ``(N, D, h, w)`` on a grid of stride ``patch_stride``.

    Each stage's feature map is averaged over a ``pool_size`` window with zero padding
    (local aggregation). Finer stages are average-pooled down to the grid, coarser stages
    upsampled bilinearly, and all are concatenated.
    """

    def __init__(self, backbone: FeatureExtractor, pool_size: int, patch_stride: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool_size = pool_size
        self.patch_stride = patch_stride
        self.reductions = backbone.reductions

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embed a uint8 ``(N, H, W, 3)`` batch."""
        feats = self.backbone(images)
        pad = self.pool_size // 2
        feats = [
            F.avg_pool2d(f, self.pool_size, stride=1, padding=pad, count_include_pad=True)
            for f in feats
        ]
        size = (images.shape[1] // self.patch_stride, images.shape[2] // self.patch_stride)
        resized = []
        for f, reduction in zip(feats, self.reductions, strict=True):
            if reduction < self.patch_stride:
                factor = self.patch_stride // reduction
                f = F.avg_pool2d(f, factor, stride=factor)
            elif reduction > self.patch_stride:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            resized.append(f)
        return torch.cat(resized, dim=1)


def nearest_sq_distance(
    patches: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Squared distance of each patch ``(P, D)`` to its nearest bank row ``(M, D)``.

    The bank is walked in slices of ``chunk`` rows with a running minimum, so memory holds at
    most ``P x chunk`` distances at once (the slices unroll into the exported graph).
    """
    patch_sq = (patches * patches).sum(dim=1, keepdim=True)
    best = None
    for start in range(0, bank.shape[0], chunk):
        rows = bank[start : start + chunk]
        d2 = patch_sq - 2.0 * patches @ rows.T + bank_sq[start : start + chunk].unsqueeze(0)
        low = d2.min(dim=1).values
        best = low if best is None else torch.minimum(best, low)
    return best.clamp_min(0.0)


class PatchCoreHead(nn.Module):
    """Patch features -> (anomaly map, image score, label)."""

    def __init__(
        self,
        memory_bank: torch.Tensor,
        input_size: int,
        blur_sigma: float,
        nn_chunk: int,
        threshold: float,
    ) -> None:
        super().__init__()
        self.register_buffer("memory_bank", memory_bank.contiguous())
        self.register_buffer("bank_sq", (memory_bank * memory_bank).sum(dim=1))
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        self.register_buffer("kernel", gaussian_kernel(blur_sigma) if blur_sigma > 0 else None)
        self.input_size = input_size
        self.nn_chunk = nn_chunk

    def patch_scores(self, embedding: torch.Tensor) -> torch.Tensor:
        """Nearest-neighbour distances ``(N, h, w)`` of an embedding ``(N, D, h, w)``."""
        n, d, h, w = embedding.shape
        patches = embedding.permute(0, 2, 3, 1).reshape(-1, d)
        d2 = nearest_sq_distance(patches, self.memory_bank, self.bank_sq, self.nn_chunk)
        return d2.sqrt().reshape(n, h, w)

    def anomaly_map(self, scores: torch.Tensor) -> torch.Tensor:
        """Upsample patch scores ``(N, h, w)`` to the input size and smooth them."""
        size = (self.input_size, self.input_size)
        amap = F.interpolate(scores.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
        if self.kernel is not None:
            radius = self.kernel.shape[0] // 2
            amap = F.pad(amap, (radius, radius, radius, radius), mode="reflect")
            amap = F.conv2d(amap, self.kernel.view(1, 1, 1, -1))
            amap = F.conv2d(amap, self.kernel.view(1, 1, -1, 1))
        return amap.squeeze(1)

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return anomaly maps ``(N, H, W)``, image scores ``(N,)`` and labels ``(N,)``."""
        amap = self.anomaly_map(self.patch_scores(embedding))
        score = amap.flatten(1).amax(dim=1)
        label = (score > self.threshold).to(torch.int64)
        return amap, score, label


class PatchCoreModule(nn.Module):
    """The whole detector as one graph: uint8 ``(N, H, W, 3)`` -> map, score, label."""

    def __init__(self, embedder: PatchEmbedder, head: PatchCoreHead) -> None:
        super().__init__()
        self.embedder = embedder
        self.head = head

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Score a uint8 image batch."""
        return self.head(self.embedder(images))


def greedy_coreset(
    features: torch.Tensor, n_select: int, seed: int, projection_dim: int = 64
) -> torch.Tensor:
    """Indices of a greedy k-center coreset of ``features`` ``(N, D)``.

    Starts at a seeded random row and repeatedly adds the row farthest from everything chosen
    so far. Distances are measured after a seeded random projection to ``projection_dim``
    dimensions when the features are wider (Johnson-Lindenstrauss), as in the PatchCore paper.
    Cost: ``n_select`` passes over ``N x min(D, projection_dim)`` values; memory ``O(N)``.
    """
    n = features.shape[0]
    if n_select >= n:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    if features.shape[1] > projection_dim:
        matrix = torch.randn(features.shape[1], projection_dim, generator=generator)
        features = features @ matrix.to(features.device) / math.sqrt(projection_dim)
    sq = (features * features).sum(dim=1)
    start = int(torch.randint(n, (1,), generator=generator))
    selected = torch.empty(n_select, dtype=torch.long)
    selected[0] = start
    # Fused in-place updates: each step is one matrix-vector product over the features.
    min_d2 = torch.addmv(sq, features, features[start], alpha=-2.0).add_(sq[start])
    d2 = torch.empty_like(min_d2)
    bar = tqdm(range(1, n_select), desc="coreset", unit="pt", disable=not progress_enabled())
    # One thread: each step is a small memory-bound product, and thread hand-offs per step
    # cost more than they save (much more on a loaded machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i in bar:
            nxt = int(torch.argmax(min_d2))
            selected[i] = nxt
            torch.addmv(sq, features, features[nxt], alpha=-2.0, out=d2).add_(sq[nxt])
            torch.minimum(min_d2, d2, out=min_d2)
    finally:
        torch.set_num_threads(threads)
    return selected


class PatchCore(Detector):
    """PatchCore with a timm backbone; see the module docstring.

    Args:
        config: Detector settings.
        backbone: An already built feature extractor to share (sub-models share one).
    """

    family = "patchcore"

    def __init__(self, config: PatchCoreConfig, backbone: FeatureExtractor | None = None) -> None:
        check_device(config.device)
        if config.layers is None:  # pin the default so a saved model never changes meaning
            config = config.model_copy(update={"layers": default_layers(config.backbone)})
        self.config = config
        self.device = torch.device(config.device)
        if backbone is None:
            backbone = create_backbone(config.backbone, config.weights, config.layers)
        embedder = PatchEmbedder(backbone, config.pool_size, config.patch_stride)
        self.embedder = embedder.to(self.device).eval()
        self.head: PatchCoreHead | None = None
        self.bank_owner: np.ndarray | None = None
        self._threshold: float | None = None
        self._train_embeddings: np.ndarray | None = None
        self._calibration: np.ndarray | None = None

    @property
    def input_size(self) -> int:
        """Square input side in pixels."""
        return self.config.input_size

    @property
    def threshold(self) -> float | None:
        """Image-score threshold for the label, once set."""
        return self._threshold

    @property
    def bank_size(self) -> int:
        """Number of patch features in the memory bank (0 before fit)."""
        return 0 if self.head is None else int(self.head.memory_bank.shape[0])

    def spawn(self) -> PatchCore:
        """An unfitted PatchCore with the same settings sharing this backbone."""
        return PatchCore(self.config, backbone=self.embedder.backbone)

    @torch.inference_mode()
    def embed(self, images: np.ndarray) -> np.ndarray:
        """Patch features ``(N, D, h, w)`` float32 of uint8 ``(N, S, S, 3)`` images."""
        self._check_images(images)
        out = []
        size = self.config.batch_size
        starts = range(0, len(images), size)
        for start in tqdm(starts, desc="features", unit="batch", disable=not progress_enabled()):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + size]))
            out.append(self.embedder(batch.to(self.device)).cpu())
        return torch.cat(out).numpy()

    def _check_images(self, images: np.ndarray) -> None:
        s = self.config.input_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise ValueError(
                f"expected uint8 images of shape (N, {s}, {s}, 3), got {images.dtype} "
                f"{images.shape}; load them with noisyad.data.load_images(size={s})"
            )

    @torch.no_grad()
    def fit(self, embeddings: np.ndarray) -> None:
        """Build the memory bank: a greedy coreset of all training patch features."""
        if len(embeddings) == 0:
            raise ValueError("cannot fit PatchCore on zero images")
        n, d, h, w = embeddings.shape
        patches = torch.from_numpy(embeddings).permute(0, 2, 3, 1).reshape(-1, d)
        owner = np.repeat(np.arange(n), h * w)
        n_select = max(1, math.ceil(self.config.coreset_ratio * len(patches)))
        chosen = greedy_coreset(
            patches.to(self.device), n_select, self.config.seed, self.config.coreset_projection
        ).cpu()
        bank = patches[chosen].clone()
        self.bank_owner = owner[chosen.numpy()]
        self.head = self._make_head(bank, self._threshold or math.inf)
        self._train_embeddings = embeddings
        self._calibration = None
        logger.debug("memory bank %d x %d from %d patches", len(bank), d, len(patches))

    def _make_head(self, bank: torch.Tensor, threshold: float) -> PatchCoreHead:
        c = self.config
        head = PatchCoreHead(bank, c.input_size, c.blur_sigma, c.nn_chunk, threshold)
        return head.to(self.device).eval()

    def _require_fit(self) -> PatchCoreHead:
        if self.head is None:
            raise RuntimeError("PatchCore is not fitted: call fit() or load a saved model")
        return self.head

    @torch.inference_mode()
    def score(self, embeddings: np.ndarray) -> ScoreResult:
        """Anomaly maps and image scores of embeddings from :meth:`embed`."""
        head = self._require_fit()
        maps, scores = [], []
        for start in range(0, len(embeddings), self.config.batch_size):
            batch = torch.from_numpy(embeddings[start : start + self.config.batch_size])
            amap, score, _ = head(batch.to(self.device))
            maps.append(amap.cpu())
            scores.append(score.cpu())
        return ScoreResult(torch.cat(maps).numpy(), torch.cat(scores).numpy())

    @torch.inference_mode()
    def calibration_scores(self) -> np.ndarray:
        """Leave-one-image-out image scores of the training images.

        Each training image is scored against the memory bank without the bank entries that
        came from that image, which is what a new normal image meets.
        """
        head = self._require_fit()
        if self._calibration is not None:
            return self._calibration
        if self._train_embeddings is None:
            raise RuntimeError("calibration scores need the training embeddings (fit again)")
        emb = self._train_embeddings
        n, d, h, w = emb.shape
        owner = torch.from_numpy(self.bank_owner).to(self.device)
        scores = []
        for start in range(0, n, self.config.batch_size):
            batch = torch.from_numpy(emb[start : start + self.config.batch_size]).to(self.device)
            ids = torch.arange(start, start + len(batch), device=self.device)
            patches = batch.permute(0, 2, 3, 1).reshape(len(batch), h * w, d)
            d2 = torch.full((len(batch), h * w), math.inf, device=self.device)
            for lo in range(0, self.bank_size, self.config.nn_chunk):
                rows = head.memory_bank[lo : lo + self.config.nn_chunk]
                own = owner[lo : lo + self.config.nn_chunk].unsqueeze(0) == ids.unsqueeze(1)
                dist = (
                    (patches * patches).sum(-1, keepdim=True)
                    - 2.0 * patches @ rows.T
                    + head.bank_sq[lo : lo + self.config.nn_chunk]
                )
                dist = dist.masked_fill(own.unsqueeze(1), math.inf)
                d2 = torch.minimum(d2, dist.min(dim=2).values)
            patch = d2.clamp_min(0.0).sqrt().reshape(len(batch), h, w)
            scores.append(head.anomaly_map(patch).flatten(1).amax(dim=1).cpu())
        self._calibration = torch.cat(scores).numpy()
        return self._calibration

    def set_threshold(self, threshold: float) -> None:
        """Carry ``threshold`` in the model (and in its exported graph)."""
        self._threshold = float(threshold)
        if self.head is not None:
            self.head.threshold.fill_(self._threshold)

    def inference_module(self) -> PatchCoreModule:
        """The detector as one torch module (uint8 images in), for scoring and export."""
        return PatchCoreModule(self.embedder, self._require_fit()).eval()

    def save(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` (backbone + memory bank)."""
        head = self._require_fit()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"backbone.{k}": v for k, v in self.embedder.backbone.state_dict().items()}
        tensors["memory_bank"] = head.memory_bank
        tensors["bank_owner"] = torch.from_numpy(self.bank_owner.astype(np.int64))
        cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        save_file(cpu, str(directory / "model.safetensors"))
        meta = {
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "config": self.config.model_dump(mode="json"),
            "threshold": self._threshold,
            "bank_size": self.bank_size,
            "feature_dim": int(head.memory_bank.shape[1]),
        }
        (directory / "config.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> PatchCore:
        """Read a model written by :meth:`save` (no pickle, no network, no weights wheel)."""
        directory = Path(directory)
        meta = json.loads((directory / "config.json").read_text())
        if meta.get("family") != cls.family:
            raise ValueError(f"{directory} holds a {meta.get('family')!r} model, not PatchCore")
        config = PatchCoreConfig(**meta["config"])
        if device is not None:
            config = config.model_copy(update={"device": device})
        tensors = load_file(str(directory / "model.safetensors"))
        backbone = backbone_architecture(config.backbone, config.layers)
        prefix = "backbone."
        backbone.load_state_dict(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        )
        detector = cls(config, backbone=backbone)
        detector.bank_owner = tensors["bank_owner"].numpy()
        threshold = meta.get("threshold")
        detector._threshold = threshold
        detector.head = detector._make_head(
            tensors["memory_bank"], math.inf if threshold is None else threshold
        )
        return detector
