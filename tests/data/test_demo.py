"""Tests of the built-in demo dataset: layout, determinism, contamination protocol, defects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from noisyad.data.demo import (
    DEFECT_TYPES,
    SIDECAR_NAME,
    TEXTURES,
    DemoSummary,
    make_defect_example,
    make_demo_dataset,
    n_defective_for,
    read_contamination_sidecar,
    split_regions,
)

SMALL = {
    "categories": ("brick", "gravel"),
    "n_train_normal": 20,
    "n_test_normal": 5,
    "n_test_defective": 10,
}


def _build(root: Path, contamination: float, seed: int) -> DemoSummary:
    return make_demo_dataset(root, contamination=contamination, seed=seed, **SMALL)


def _files(folder: Path) -> dict[str, bytes]:
    """Map every file under ``folder`` (relative path) to its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, DemoSummary]]:
    """The same small demo at alpha 0 and 0.2 (twice), and at another seed."""
    built = {}
    for key, alpha, seed in [
        ("clean", 0.0, 0),
        ("noisy", 0.2, 0),
        ("noisy_again", 0.2, 0),
        ("other_seed", 0.2, 1),
    ]:
        root = tmp_path_factory.mktemp(key) / "demo"
        built[key] = (root, _build(root, alpha, seed))
    return built


def test_layout_and_counts(datasets):
    root, summary = datasets["noisy"]
    n_def = n_defective_for(0.2, SMALL["n_train_normal"])
    assert n_def == 5
    assert (root / "README.txt").is_file()
    assert "scikit-image" in (root / "README.txt").read_text()

    for cat in SMALL["categories"]:
        cat_dir = root / cat
        train = sorted((cat_dir / "train" / "good").glob("*.png"))
        assert [p.name for p in train] == [f"{i:03d}.png" for i in range(20 + n_def)]
        assert len(list((cat_dir / "test" / "good").glob("*.png"))) == 5
        assert not (cat_dir / "ground_truth" / "good").exists()
        for image_path in [*train, *(cat_dir / "test").rglob("*.png")]:
            image = Image.open(image_path)
            assert image.mode == "L" and image.size == (128, 128)

        defective = [p for p in (cat_dir / "test").rglob("*.png") if p.parent.name != "good"]
        assert len(defective) == 10
        kinds = sorted({p.parent.name for p in defective})
        assert kinds == sorted(DEFECT_TYPES)
        assert all(len(list((cat_dir / "test" / k).glob("*.png"))) == 2 for k in kinds)
        for image_path in defective:
            mask_path = (
                cat_dir / "ground_truth" / image_path.parent.name / (image_path.stem + "_mask.png")
            )
            mask = Image.open(mask_path)
            assert mask.mode == "L" and mask.size == (128, 128)
            values = np.unique(np.asarray(mask))
            assert set(values.tolist()) == {0, 255}

        counts = summary.categories[cat]
        assert (counts.n_train, counts.n_train_defective) == (25, 5)
        assert (counts.n_test_good, counts.n_test_defective) == (5, 10)
    assert summary.n_images == 2 * (25 + 5 + 10)


def test_same_seed_same_bytes_other_seed_differs(datasets):
    root, _ = datasets["noisy"]
    again, _ = datasets["noisy_again"]
    other, _ = datasets["other_seed"]
    first = _files(root)
    assert first == _files(again)
    assert (root / "brick" / SIDECAR_NAME).read_bytes() == (
        again / "brick" / SIDECAR_NAME
    ).read_bytes()
    assert (root / "README.txt").read_bytes() == (again / "README.txt").read_bytes()
    differing = _files(other)
    assert first.keys() == differing.keys()
    assert all(first[k] != differing[k] for k in first if k.startswith("brick/test/good"))


def test_test_set_and_normal_train_tiles_do_not_depend_on_contamination(datasets):
    clean_root, _ = datasets["clean"]
    noisy_root, _ = datasets["noisy"]
    for cat in SMALL["categories"]:
        clean = _files(clean_root / cat)
        noisy = _files(noisy_root / cat)
        for part in ("test/", "ground_truth/"):
            assert {k: v for k, v in clean.items() if k.startswith(part)} == {
                k: v for k, v in noisy.items() if k.startswith(part)
            }

        # The sidecar names exactly the files that are not among the clean training tiles.
        clean_train = {v for k, v in clean.items() if k.startswith("train/")}
        assert len(clean_train) == SMALL["n_train_normal"]
        hidden = read_contamination_sidecar(noisy_root / cat)
        assert hidden is not None
        cat_dir = (noisy_root / cat).resolve()
        for rel, data in noisy.items():
            if rel.startswith("train/"):
                assert (str(cat_dir / rel) in hidden) == (data not in clean_train), rel
        assert sorted(set(hidden.values())) == sorted(DEFECT_TYPES)

        # Defective training tiles differ in pixels from every normal training tile.
        normal = [_load(clean_root / cat / k) for k in clean if k.startswith("train/")]
        for path in hidden:
            image = _load(Path(path))
            assert all(np.any(image != n) for n in normal)

        sidecar = json.loads((noisy_root / cat / SIDECAR_NAME).read_text())
        assert sidecar["contamination"] == 0.2 and sidecar["seed"] == 0
        assert (sidecar["n_train"], sidecar["n_defective"]) == (25, 5)


def test_defective_training_files_are_not_all_at_the_end(datasets):
    root, _ = datasets["noisy"]
    for cat in SMALL["categories"]:
        hidden = read_contamination_sidecar(root / cat)
        names = sorted(Path(p).name for p in hidden)
        assert names != [f"{i:03d}.png" for i in range(20, 25)]


def test_clean_dataset_has_an_empty_sidecar(datasets):
    root, _ = datasets["clean"]
    assert read_contamination_sidecar(root / "brick") == {}
    assert read_contamination_sidecar(root / "no-such-category") is None


@pytest.mark.parametrize(("alpha", "n_train_normal"), [(0.05, 40), (0.1, 30), (0.4, 12)])
def test_number_of_defective_training_tiles_follows_the_formula(tmp_path, alpha, n_train_normal):
    summary = make_demo_dataset(
        tmp_path / "demo",
        contamination=alpha,
        categories=("grass",),
        n_train_normal=n_train_normal,
        n_test_normal=0,
        n_test_defective=0,
    )
    expected = round(alpha * n_train_normal / (1 - alpha))
    assert summary.categories["grass"].n_train_defective == expected
    assert len(read_contamination_sidecar(tmp_path / "demo" / "grass")) == expected
    n_files = len(list((tmp_path / "demo" / "grass" / "train" / "good").glob("*.png")))
    assert n_files == n_train_normal + expected


def test_train_and_test_crops_come_from_disjoint_regions(datasets):
    import skimage.data

    _, summary = datasets["noisy"]
    for cat in SMALL["categories"]:
        tiles = summary.categories[cat].tiles
        train = [t for t in tiles if t.split == "train"]
        test = [t for t in tiles if t.split == "test"]
        assert len(train) == 25 and len(test) == 15
        for a in test:
            for b in train:
                rows_overlap = a.row < b.row + b.size and b.row < a.row + a.size
                cols_overlap = a.col < b.col + b.size and b.col < a.col + a.size
                assert not (rows_overlap and cols_overlap), (a, b)

        # The recorded crop positions are where the normal tiles really come from.
        texture = getattr(skimage.data, cat)().astype(np.float64)
        root = datasets["noisy"][0] / cat
        for t in tiles:
            if t.defect_type is None:
                tile = _load(root / t.path).astype(np.float64)
                crop = texture[t.row : t.row + t.size, t.col : t.col + t.size]
                assert np.corrcoef(tile.ravel(), crop.ravel())[0, 1] > 0.99


def test_split_regions_do_not_overlap():
    regions = split_regions((512, 512))
    covered = np.zeros((512, 512), dtype=int)
    for rects in regions.values():
        for r0, c0, r1, c1 in rects:
            covered[r0:r1, c0:c1] += 1
    assert covered.max() == 1


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_defect_changes_pixels_inside_its_mask(kind):
    for category in TEXTURES:
        for seed in range(3):
            clean, defective, mask = make_defect_example(category, kind, seed)
            assert clean.shape == defective.shape == mask.shape == (128, 128)
            assert 30 <= mask.sum() <= 40 * 40
            diff = np.abs(defective.astype(np.float64) - clean)
            inside, outside = diff[mask].mean(), diff[~mask].mean()
            assert inside > 5.0, (category, seed, inside)
            assert inside > 20 * outside, (category, seed, inside, outside)


@pytest.mark.parametrize("alpha", [1.0, -0.1, 1.5])
def test_contamination_out_of_range_is_refused(tmp_path, alpha):
    with pytest.raises(ValueError, match=r"contamination .* must be in \[0, 1\)"):
        make_demo_dataset(tmp_path / "demo", contamination=alpha)
    assert not (tmp_path / "demo").exists()


def test_non_empty_folder_needs_overwrite(tmp_path):
    root = tmp_path / "demo"
    root.mkdir()
    (root / "keep.txt").write_text("not ours")
    small = {"categories": ("brick",), "n_train_normal": 4, "n_test_normal": 1}
    with pytest.raises(FileExistsError, match="overwrite"):
        make_demo_dataset(root, n_test_defective=1, **small)

    make_demo_dataset(root, n_test_defective=5, overwrite=True, **small)
    make_demo_dataset(root, n_test_defective=1, overwrite=True, **small)
    assert (root / "keep.txt").read_text() == "not ours"
    defective = [p for p in (root / "brick" / "test").rglob("*.png") if p.parent.name != "good"]
    assert len(defective) == 1
    assert len(list((root / "brick" / "ground_truth").rglob("*.png"))) == 1


def test_unknown_category_is_refused(tmp_path):
    with pytest.raises(ValueError, match="categories"):
        make_demo_dataset(tmp_path / "demo", categories=("marble",))
