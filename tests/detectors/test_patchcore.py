"""Tests of the PatchCore detector: behaviour on real tiles, and its parts against brute force.

Behaviour (on the session's trained model and real demo tiles): a pasted defect raises the
image score and the anomaly map peaks inside it; scores do not depend on what else is in the
batch. Parts (on tiny synthetic inputs): the coreset is the farthest-first sequence, the
chunked nearest-neighbour search equals a full distance matrix, the leave-one-image-out
calibration equals a recomputation, and save/load is pickle-free and exact.
"""

from __future__ import annotations

import itertools
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch

from noisyad.data import LoadedImages
from noisyad.detectors import PatchCore, ScoreResult, load_detector
from noisyad.detectors.patchcore import greedy_coreset, nearest_sq_distance

# ----------------------------------------------------------------------------- behaviour


def normal_tiles(test_set: LoadedImages, count: int) -> np.ndarray:
    """The first ``count`` normal test tiles (real brick photographs, never trained on)."""
    normal = [i for i, s in enumerate(test_set.samples) if s.label == 0]
    return test_set.images[normal[:count]]


def paste_foreign_texture(image: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Paste a 24 x 24 gravel patch (a texture the brick model never saw)."""
    region = (slice(40, 64), slice(70, 94))
    gravel = np.asarray(skimage.data.gravel())[100:124, 100:124]
    out = image.copy()
    out[region] = gravel[..., None]
    return out, region


def paste_scratch(image: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Draw a bright horizontal scratch, 4 px wide and 80 px long."""
    region = (slice(90, 94), slice(20, 100))
    out = image.copy()
    out[region] = 255
    return out, region


@pytest.mark.parametrize("paste", [paste_foreign_texture, paste_scratch])
def test_pasted_defect_raises_the_score_and_the_map_peaks_inside_it(
    detector: PatchCore, test_set: LoadedImages, paste
) -> None:
    clean = normal_tiles(test_set, 2)
    pasted, regions = zip(*(paste(image) for image in clean), strict=True)
    result = detector.score(detector.embed(np.concatenate([clean, np.stack(pasted)])))

    clean_scores, defect_scores = result.image_scores[:2], result.image_scores[2:]
    assert np.all(defect_scores > clean_scores + 0.5), (clean_scores, defect_scores)
    # Direction of the label too: clean tiles below the model's threshold, defects above.
    assert np.all(clean_scores < detector.threshold)
    assert np.all(defect_scores > detector.threshold)
    for amap, (rows, cols) in zip(result.anomaly_maps[2:], regions, strict=True):
        peak_row, peak_col = np.unravel_index(np.argmax(amap), amap.shape)
        assert rows.start <= peak_row < rows.stop and cols.start <= peak_col < cols.stop


def test_scores_do_not_depend_on_the_batch(detector: PatchCore, test_set: LoadedImages) -> None:
    images = test_set.images
    alone = detector.score(detector.embed(images[3:4]))
    again = detector.score(detector.embed(images[3:4]))
    mixed = detector.score(detector.embed(images[[10, 3, 0, 15, 7]]))

    np.testing.assert_array_equal(alone.image_scores, again.image_scores)
    np.testing.assert_allclose(mixed.image_scores[1], alone.image_scores[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(mixed.anomaly_maps[1], alone.anomaly_maps[0], rtol=0, atol=1e-5)


def test_score_shapes_and_image_score_is_the_map_maximum(
    detector: PatchCore, test_result: ScoreResult, test_set: LoadedImages
) -> None:
    n, size = len(test_set), detector.input_size
    assert test_result.anomaly_maps.shape == (n, size, size)
    assert test_result.image_scores.shape == (n,)
    assert test_result.anomaly_maps.dtype == np.float32
    np.testing.assert_array_equal(
        test_result.image_scores, test_result.anomaly_maps.reshape(n, -1).max(axis=1)
    )


def test_embed_rejects_images_of_the_wrong_size_or_type(detector: PatchCore) -> None:
    with pytest.raises(ValueError, match=r"\(N, 128, 128, 3\)"):
        detector.embed(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="float32"):
        detector.embed(np.zeros((1, 128, 128, 3), np.float32))


def test_unfitted_detector_refuses_to_score_and_to_fit_nothing(detector: PatchCore) -> None:
    fresh = detector.spawn()
    with pytest.raises(RuntimeError, match="not fitted"):
        fresh.score(np.zeros((1, 4, 2, 2), np.float32))
    with pytest.raises(ValueError, match="zero images"):
        fresh.fit(np.zeros((0, 4, 2, 2), np.float32))


# ----------------------------------------------------------------------------- coreset


def brute_force_farthest_first(points: np.ndarray, start: int, n_select: int) -> list[int]:
    """k-center greedy from ``start``: each step adds the point farthest from the chosen set."""
    chosen = [start]
    while len(chosen) < n_select:
        pairwise = np.linalg.norm(points[:, None, :] - points[None, chosen, :], axis=2)
        chosen.append(int(np.argmax(pairwise.min(axis=1))))
    return chosen


def covering_radius(points: np.ndarray, centers: list[int] | tuple[int, ...]) -> float:
    """The largest distance from a point to its nearest center."""
    pairwise = np.linalg.norm(points[:, None, :] - points[None, list(centers), :], axis=2)
    return float(pairwise.min(axis=1).max())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_coreset_is_the_farthest_first_sequence(seed: int) -> None:
    points = np.random.default_rng(seed).normal(size=(40, 5)).astype(np.float32)

    selected = greedy_coreset(torch.from_numpy(points), 8, seed=seed).tolist()

    assert selected == brute_force_farthest_first(points.astype(np.float64), selected[0], 8)
    assert greedy_coreset(torch.from_numpy(points), 8, seed=seed).tolist() == selected


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_greedy_coreset_is_within_twice_the_optimal_k_center_radius(seed: int) -> None:
    points = np.random.default_rng(10 + seed).uniform(size=(12, 2)).astype(np.float32)
    optimal = min(covering_radius(points, c) for c in itertools.combinations(range(12), 3))

    selected = greedy_coreset(torch.from_numpy(points), 3, seed=seed).tolist()

    assert covering_radius(points, selected) <= 2.0 * optimal + 1e-6


def test_greedy_coreset_with_projection_is_valid_and_seeded() -> None:
    points = torch.from_numpy(np.random.default_rng(0).normal(size=(200, 100)).astype(np.float32))

    first = greedy_coreset(points, 20, seed=5, projection_dim=16)

    assert len(set(first.tolist())) == 20
    assert torch.equal(first, greedy_coreset(points, 20, seed=5, projection_dim=16))
    assert not torch.equal(first, greedy_coreset(points, 20, seed=6, projection_dim=16))
    assert torch.equal(greedy_coreset(points, 500, seed=0), torch.arange(200))


# ----------------------------------------------------------------------------- nearest neighbour


@pytest.mark.parametrize("chunk", [1, 5, 16, 36, 37, 1000])
def test_chunked_nearest_distance_equals_the_full_distance_matrix(chunk: int) -> None:
    rng = np.random.default_rng(0)
    bank = torch.from_numpy(rng.normal(size=(37, 6)))
    patches = torch.from_numpy(rng.normal(size=(50, 6)))
    patches[7] = bank[20]  # an exact match: the expanded formula must not go negative

    got = nearest_sq_distance(patches, bank, (bank * bank).sum(dim=1), chunk)

    expected = torch.cdist(patches, bank).pow(2).min(dim=1).values
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    assert 0.0 <= float(got[7]) < 1e-12
    assert bool((got >= 0).all())


def test_chunked_nearest_distance_in_float32_matches_float64() -> None:
    rng = np.random.default_rng(1)
    bank = rng.normal(size=(300, 24)).astype(np.float32)
    patches = rng.normal(size=(64, 24)).astype(np.float32)
    bank32 = torch.from_numpy(bank)

    got = nearest_sq_distance(torch.from_numpy(patches), bank32, (bank32 * bank32).sum(1), 16)

    expected = torch.cdist(torch.from_numpy(patches).double(), bank32.double()).pow(2).amin(1)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- calibration


def test_calibration_scores_equal_a_leave_one_image_out_recomputation(
    detector: PatchCore,
) -> None:
    config = detector.config.model_copy(update={"nn_chunk": 16, "coreset_ratio": 0.5})
    small = PatchCore(config, backbone=detector.embedder.backbone)
    embeddings = np.random.default_rng(0).normal(size=(5, 8, 4, 4)).astype(np.float32)
    small.fit(embeddings)
    assert small.bank_size == 40  # 3 chunks of 16: the own-image mask crosses chunk borders

    calibration = small.calibration_scores()

    bank = small.head.memory_bank.double()
    expected = []
    for i in range(5):
        patches = torch.from_numpy(embeddings[i]).double().reshape(8, 16).T
        others = bank[torch.from_numpy(small.bank_owner != i)]
        nearest = torch.cdist(patches, others).min(dim=1).values.reshape(1, 4, 4)
        expected.append(float(small.head.anomaly_map(nearest.float()).max()))
    np.testing.assert_allclose(calibration, expected, rtol=1e-5)
    # Holding an image out can only move its patches away from the bank.
    in_sample = small.score(embeddings).image_scores
    assert np.all(calibration >= in_sample - 1e-6)
    assert np.any(calibration > in_sample + 1e-3)


# ----------------------------------------------------------------------------- save / load


def test_save_load_round_trip_is_exact_and_pickle_free(
    detector: PatchCore,
    test_embeddings: np.ndarray,
    test_result: ScoreResult,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    detector.save(tmp_path / "copy")

    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    raw = (tmp_path / "copy" / "model.safetensors").read_bytes()
    (header_size,) = struct.unpack("<Q", raw[:8])  # safetensors: u64 size + JSON header
    header = json.loads(raw[8 : 8 + header_size])
    assert {"memory_bank", "bank_owner"} <= set(header)
    assert not raw.startswith((b"PK", b"\x80"))  # neither a torch zip nor a raw pickle

    def refuse(*args, **kwargs):
        raise AssertionError("loading a model must not unpickle anything")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    for loaded in (PatchCore.load(tmp_path / "copy"), load_detector(str(tmp_path / "copy"))):
        assert loaded.threshold == detector.threshold
        assert loaded.bank_size == detector.bank_size
        np.testing.assert_array_equal(loaded.bank_owner, detector.bank_owner)
        result = loaded.score(test_embeddings)
        np.testing.assert_array_equal(result.image_scores, test_result.image_scores)
        np.testing.assert_array_equal(result.anomaly_maps, test_result.anomaly_maps)
