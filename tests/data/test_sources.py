"""Tests for noisyad.data.sources: MVTec AD, Real-IAD and plain-folder readers, and dispatch."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from noisyad.data import (
    DataSourceError,
    Manifest,
    load_images,
    open_source,
    read_folder,
    read_mvtec,
    read_realiad,
)


def _img(path: Path, value: int = 100, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (6, 6), value).save(path)
    return path


def _rel(manifest: Manifest, root: Path) -> list[str]:
    return [Path(s.path).relative_to(root).as_posix() for s in manifest.samples]


# MVTec AD ------------------------------------------------------------------------------------


def _mvtec(root: Path) -> Path:
    """Two categories; files are created out of order to exercise sorting."""
    for category in ("cable", "bottle"):
        base = root / category
        for name in ("001.png", "000.png", "002.PNG"):
            _img(base / "train" / "good" / name)
        _img(base / "test" / "good" / "000.png")
        for defect in ("scratch", "broken"):
            for name in ("001.png", "000.png"):
                _img(base / "test" / defect / name, 200)
                _img(base / "ground_truth" / defect / name.replace(".", "_mask."), 255)
        (base / "train" / "good" / "notes.txt").write_text("not an image")
        (base / "license.txt").write_text("x")
    return root


def test_mvtec_reads_labels_masks_and_order(tmp_path: Path) -> None:
    root = _mvtec(tmp_path / "mvtec")
    manifest = read_mvtec(root)

    assert manifest.source == "mvtec" and manifest.root == str(root)
    assert manifest.categories() == ["bottle", "cable"]
    assert _rel(manifest, root)[:10] == [
        "bottle/train/good/000.png",
        "bottle/train/good/001.png",
        "bottle/train/good/002.PNG",
        "bottle/test/broken/000.png",
        "bottle/test/broken/001.png",
        "bottle/test/good/000.png",
        "bottle/test/scratch/000.png",
        "bottle/test/scratch/001.png",
        "cable/train/good/000.png",
        "cable/train/good/001.png",
    ]
    train = manifest.select(split="train", category="bottle")
    assert len(train) == 3
    assert all(s.label is None and s.mask_path is None and s.defect_type is None for s in train)

    test = manifest.select(split="test", category="bottle")
    assert [s.label for s in test] == [1, 1, 0, 1, 1]
    assert [s.defect_type for s in test] == ["broken", "broken", None, "scratch", "scratch"]
    assert test[0].mask_path == str(root / "bottle/ground_truth/broken/000_mask.png")
    assert test[2].mask_path is None
    assert read_mvtec(root).samples == manifest.samples


def test_mvtec_category_folder_and_filter(tmp_path: Path) -> None:
    root = _mvtec(tmp_path / "mvtec")
    single = read_mvtec(root / "cable")
    assert single.categories() == ["cable"] and len(single.samples) == 8

    only = read_mvtec(root, categories="bottle")
    assert only.categories() == ["bottle"] and len(only.samples) == 8

    with pytest.raises(DataSourceError, match="Unknown category carpet.*bottle, cable"):
        read_mvtec(root, categories=["carpet"])


def test_mvtec_missing_mask_follows_policy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _mvtec(tmp_path / "mvtec")
    gone = root / "bottle" / "ground_truth" / "scratch" / "001_mask.png"
    gone.unlink()

    with pytest.raises(DataSourceError, match=str(gone)):
        read_mvtec(root)

    with caplog.at_level(logging.WARNING):
        manifest = read_mvtec(root, policy="skip")
    image = root / "bottle" / "test" / "scratch" / "001.png"
    assert manifest.skipped == [{"path": str(image), "reason": f"its mask {gone} is missing"}]
    assert str(image) not in {s.path for s in manifest.samples}
    assert len(manifest.select(split="test", category="bottle")) == 4
    assert "001.png" in caplog.text


def test_mvtec_without_ground_truth_has_image_labels_only(tmp_path: Path) -> None:
    root = tmp_path / "parts"
    _img(root / "train" / "good" / "a.png")
    _img(root / "test" / "good" / "b.png")
    _img(root / "test" / "dent" / "c.jpg")
    manifest = read_mvtec(root)
    dent = manifest.select(split="test")[0]
    assert (dent.label, dent.defect_type, dent.mask_path) == (1, "dent", None)


def test_mvtec_not_a_layout(tmp_path: Path) -> None:
    _img(tmp_path / "flat" / "a.png")
    with pytest.raises(DataSourceError, match="train/"):
        read_mvtec(tmp_path / "flat")


def test_mvtec_empty_category_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataSourceError, match=r"No images found .*\.tiff"):
        read_mvtec(tmp_path / "empty")


# Real-IAD ------------------------------------------------------------------------------------


def _realiad(root: Path, json_dir: str = "realiad_jsons_fuiad_0.1") -> Path:
    """A tiny Real-IAD copy: one category with normal and defective samples."""
    images = root / "realiad_256" / "audiojack"
    for rel in ("OK/S0001/a.jpg", "NG/AK/S0002/b.jpg", "OK/S0003/c.jpg", "NG/QS/S0004/d.jpg"):
        _img(images / rel)
    _img(images / "NG/QS/S0004/d_mask.png", 255)
    _img(images / "NG/AK/S0005/e.jpg")
    document = {
        "meta": {"prefix": "", "normal_class": "OK"},
        "train": [
            {"category": "audiojack", "anomaly_class": "OK", "image_path": "OK/S0001/a.jpg"},
            {
                "category": "audiojack",
                "anomaly_class": "AK",
                "image_path": "NG/AK/S0002/b.jpg",
                "mask_path": "NG/AK/S0002/b_mask.png",
            },
        ],
        "test": [
            {
                "category": "audiojack",
                "anomaly_class": "OK",
                "image_path": "OK/S0003/c.jpg",
                "mask_path": None,
            },
            {
                "category": "audiojack",
                "anomaly_class": "QS",
                "image_path": "NG/QS/S0004/d.jpg",
                "mask_path": "NG/QS/S0004/d_mask.png",
            },
            {
                "category": "audiojack",
                "anomaly_class": "AK",
                "image_path": "audiojack/NG/AK/S0005/e.jpg",
                "mask_path": "",
            },
        ],
    }
    path = root / json_dir / "audiojack.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


def test_realiad_labels_hidden_for_train(tmp_path: Path) -> None:
    json_path = _realiad(tmp_path / "Real-IAD")
    images = tmp_path / "Real-IAD" / "realiad_256" / "audiojack"
    manifest = read_realiad(json_path)

    assert manifest.source == "realiad"
    assert [s.path for s in manifest.samples] == [
        str(images / rel)
        for rel in (
            "OK/S0001/a.jpg",
            "NG/AK/S0002/b.jpg",
            "OK/S0003/c.jpg",
            "NG/QS/S0004/d.jpg",
            "NG/AK/S0005/e.jpg",
        )
    ]
    train = manifest.select(split="train")
    assert [(s.label, s.defect_type, s.mask_path) for s in train] == [(None, None, None)] * 2
    test = manifest.select(split="test")
    assert [s.label for s in test] == [0, 1, 1]
    assert [s.defect_type for s in test] == [None, "QS", "AK"]
    assert test[1].mask_path == str(images / "NG/QS/S0004/d_mask.png")
    assert test[0].mask_path is None and test[2].mask_path is None
    assert {s.category for s in manifest.samples} == {"audiojack"}


def test_realiad_image_root_discovery(tmp_path: Path) -> None:
    nested = _realiad(tmp_path / "Real-IAD", json_dir="realiad_jsons/realiad_jsons")
    assert len(read_realiad(nested).samples) == 5

    explicit = read_realiad(nested, image_root=tmp_path / "Real-IAD" / "realiad_256")
    assert explicit.samples == read_realiad(nested).samples

    _img(tmp_path / "Real-IAD" / "realiad_512" / "audiojack" / "OK/S0001/a.jpg")
    with pytest.raises(DataSourceError, match="Pass image_root="):
        read_realiad(nested)

    lonely = tmp_path / "elsewhere" / "jsons" / "audiojack.json"
    lonely.parent.mkdir(parents=True)
    lonely.write_text(nested.read_text())
    with pytest.raises(DataSourceError, match=r"No Real-IAD image folder .*image_root"):
        read_realiad(lonely)


def test_realiad_missing_file_follows_policy(tmp_path: Path) -> None:
    json_path = _realiad(tmp_path / "Real-IAD")
    images = tmp_path / "Real-IAD" / "realiad_256" / "audiojack"
    (images / "OK/S0003/c.jpg").unlink()
    (images / "NG/QS/S0004/d_mask.png").unlink()

    with pytest.raises(DataSourceError, match=r"OK/S0003/c\.jpg: listed in audiojack\.json"):
        read_realiad(json_path)

    manifest = read_realiad(json_path, policy="skip")
    assert len(manifest.samples) == 3
    assert [entry["path"] for entry in manifest.skipped] == [
        str(images / "OK/S0003/c.jpg"),
        str(images / "NG/QS/S0004/d.jpg"),
    ]
    assert "test[0]" in manifest.skipped[0]["reason"]
    assert "d_mask.png" in manifest.skipped[1]["reason"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"meta": {}}', "missing key 'train'"),
        ('{"train": {}, "test": []}', "'train' must be a list"),
        ('{"train": [{"category": "x"}], "test": []}', r"train\[0\] has no key 'image_path'"),
        ('{"train": [], "test": [{"image_path": "a.jpg"}]}', r"test\[0\].*'anomaly_class'"),
        ('{"train": ["a.jpg"], "test": []}', r"train\[0\] is not an object"),
        ('{"train": [{"image_path": 3}], "test": []}', "'image_path' must be a string"),
    ],
)
def test_realiad_malformed_json(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "realiad_jsons" / "cat.json"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(DataSourceError, match=match) as info:
        read_realiad(path, image_root=tmp_path)
    assert str(path) in str(info.value)


def test_realiad_unknown_category(tmp_path: Path) -> None:
    json_path = _realiad(tmp_path / "Real-IAD")
    with pytest.raises(DataSourceError, match="Unknown category pcb.*Available: audiojack"):
        read_realiad(json_path, categories=["pcb"])


# Plain folder --------------------------------------------------------------------------------


def test_folder_is_recursive_sorted_and_unlabelled(tmp_path: Path) -> None:
    root = tmp_path / "line3"
    for rel in ("b/2.jpg", "a.PNG", "b/1.tif", "c.bmp", "a/z.jpeg"):
        _img(root / rel)
    _img(root / ".cache" / "x.png")
    (root / "readme.md").write_text("hi")

    manifest = read_folder(root)
    assert manifest.source == "folder"
    assert _rel(manifest, root) == ["a/z.jpeg", "a.PNG", "b/1.tif", "b/2.jpg", "c.bmp"]
    assert {(s.split, s.label, s.category) for s in manifest.samples} == {("train", None, "line3")}
    assert read_folder(root, category="housing").categories() == ["housing"]


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(DataSourceError) as info:
        read_folder(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(info.value)
    assert ".png" in str(info.value) and ".tiff" in str(info.value)

    with pytest.raises(DataSourceError, match="does not exist"):
        read_folder(tmp_path / "missing")
    with pytest.raises(DataSourceError, match="does not exist"):
        open_source(str(tmp_path / "missing"))


def test_folder_bad_image_surfaces_when_loading(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _img(root / "good.png", 42)
    (root / "broken.png").write_text("this is text")
    manifest = read_folder(root)
    assert len(manifest.samples) == 2

    loaded = load_images(manifest.samples, size=4, policy="skip")
    assert loaded.images.shape == (1, 4, 4, 3)
    assert np.all(loaded.images == 42)
    assert loaded.skipped[0]["path"] == str(root / "broken.png")


# Dispatch ------------------------------------------------------------------------------------


def test_open_source_dispatch(tmp_path: Path) -> None:
    mvtec = _mvtec(tmp_path / "mvtec")
    json_path = _realiad(tmp_path / "Real-IAD")
    folder = tmp_path / "plain"
    _img(folder / "x.png")

    assert open_source(str(mvtec)).source == "mvtec"
    assert open_source(mvtec / "bottle").categories() == ["bottle"]
    assert open_source(str(mvtec), category="cable").categories() == ["cable"]
    assert open_source(f"file://{json_path}").source == "realiad"
    assert open_source(str(json_path), category="audiojack").source == "realiad"
    plain = open_source(str(folder), category="parts")
    assert (plain.source, plain.categories()) == ("folder", ["parts"])

    with pytest.raises(DataSourceError, match="Available: bottle, cable"):
        open_source(str(mvtec), category="nut")
    with pytest.raises(DataSourceError, match="not a .json split file"):
        open_source(str(folder / "x.png"))


def test_open_source_rejects_bad_uris() -> None:
    # Reading from S3 itself is tested against a real server in tests/data/test_s3.py.
    with pytest.raises(DataSourceError, match="names no bucket"):
        open_source("s3://")
    with pytest.raises(DataSourceError, match="unsupported URI scheme"):
        open_source("gs://bucket/parts")


def test_all_files_skipped_is_still_an_error(tmp_path: Path) -> None:
    json_path = _realiad(tmp_path / "Real-IAD")
    for image in (tmp_path / "Real-IAD" / "realiad_256").rglob("*.jpg"):
        image.unlink()
    with pytest.raises(DataSourceError, match="all 5 were left out"):
        read_realiad(json_path, policy="skip")
