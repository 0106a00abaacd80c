"""Tests for noisyad.data.images: decoding, conversion, resizing, masks and bad-file policies."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from noisyad.data import (
    BadInputPolicy,
    ImageLoadError,
    Sample,
    load_images,
    read_image,
    read_mask,
)
from noisyad.data.images import MAX_PIXELS_ENV, resolve_max_pixels


def _save(path: Path, image: Image.Image) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return str(path)


def _noise_png(path: Path, size: tuple[int, int] = (64, 48), seed: int = 0) -> str:
    """A real RGB PNG whose compressed data is large enough to cut in half."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return _save(path, Image.fromarray(pixels))


def _truncated_png(path: Path) -> str:
    full = path.with_name("full_" + path.name)
    _noise_png(full)
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


# Mode conversion -----------------------------------------------------------------------------


def test_grey_l_becomes_equal_rgb_channels(tmp_path: Path) -> None:
    path = _save(tmp_path / "grey.png", Image.new("L", (10, 6), 77))
    image = read_image(path)
    assert image.dtype == np.uint8
    assert image.shape == (6, 10, 3)
    assert (image == 77).all()


def test_rgba_alpha_is_dropped_not_composited(tmp_path: Path) -> None:
    path = _save(tmp_path / "rgba.png", Image.new("RGBA", (5, 5), (10, 20, 30, 0)))
    assert read_image(path)[2, 2].tolist() == [10, 20, 30]


def test_la_alpha_is_dropped(tmp_path: Path) -> None:
    path = _save(tmp_path / "la.png", Image.new("LA", (5, 5), (90, 0)))
    assert (read_image(path) == 90).all()


def test_palette_is_expanded(tmp_path: Path) -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * (3 * 254))
    image.putpixel((1, 2), 1)
    path = _save(tmp_path / "p.png", image)
    pixels = read_image(path)
    assert pixels[2, 1].tolist() == [200, 100, 50]
    assert pixels[0, 0].tolist() == [0, 0, 0]


def test_palette_with_transparency_keeps_colours(tmp_path: Path) -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * (3 * 254))
    image.info["transparency"] = 1
    path = _save(tmp_path / "pt.png", image)
    assert (read_image(path) == [200, 100, 50]).all()


def test_sixteen_bit_grey_is_scaled_to_eight_bits(tmp_path: Path) -> None:
    pixels = np.full((6, 7), 77 * 257, dtype=np.uint16)
    pixels[0, 0] = 65535
    pixels[0, 1] = 0
    path = _save(tmp_path / "deep.png", Image.fromarray(pixels))
    assert Image.open(path).mode.startswith("I")
    image = read_image(path)
    assert image.shape == (6, 7, 3)
    assert image[3, 3].tolist() == [77, 77, 77]
    assert image[0, 0].tolist() == [255, 255, 255]
    assert image[0, 1].tolist() == [0, 0, 0]


def test_float_image_is_clipped(tmp_path: Path) -> None:
    pixels = np.array([[-5.0, 12.4, 300.0]], dtype=np.float32)
    path = _save(tmp_path / "float.tif", Image.fromarray(pixels, mode="F"))
    assert read_image(path)[0, :, 0].tolist() == [0, 12, 255]


def test_cmyk_and_bilevel(tmp_path: Path) -> None:
    cmyk = _save(tmp_path / "c.jpg", Image.new("CMYK", (8, 8), (0, 0, 0, 0)))
    assert (read_image(cmyk).astype(int) >= 250).all()
    bilevel = _save(tmp_path / "b.png", Image.new("1", (3, 3), 1))
    assert (read_image(bilevel) == 255).all()


# Resizing ------------------------------------------------------------------------------------


def test_resize_int_and_tuple_follow_pil_bilinear(tmp_path: Path) -> None:
    path = _noise_png(tmp_path / "noise.png", size=(40, 30))
    assert read_image(path).shape == (30, 40, 3)
    assert read_image(path, 16).shape == (16, 16, 3)

    resized = read_image(path, (8, 12))
    assert resized.shape == (8, 12, 3)
    with Image.open(path) as img:
        expected = np.asarray(img.convert("RGB").resize((12, 8), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(resized, expected)


@pytest.mark.parametrize("size", [0, -3, (4,), (4, 0), (2.5, 3)])
def test_bad_size_is_refused(tmp_path: Path, size: object) -> None:
    path = _save(tmp_path / "a.png", Image.new("L", (4, 4)))
    with pytest.raises(ValueError, match="size"):
        read_image(path, size)  # type: ignore[arg-type]


# Bad files -----------------------------------------------------------------------------------


def test_truncated_png_names_the_file(tmp_path: Path) -> None:
    path = _truncated_png(tmp_path / "cut.png")
    with pytest.raises(ImageLoadError, match="truncated") as info:
        read_image(path)
    assert info.value.path == path
    assert "cut.png" in str(info.value)
    assert "policy='skip'" in str(info.value)


def test_text_file_with_png_extension(tmp_path: Path) -> None:
    path = tmp_path / "fake.png"
    path.write_text("not an image")
    with pytest.raises(ImageLoadError, match=r"fake\.png: not a readable image"):
        read_image(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="does not exist"):
        read_image(tmp_path / "nope.png")


def test_oversized_image_is_refused_with_the_way_out(tmp_path: Path) -> None:
    path = _save(tmp_path / "big.png", Image.new("L", (20, 10)))
    with pytest.raises(ImageLoadError) as info:
        read_image(path, max_pixels=100)
    message = str(info.value)
    assert "big.png" in message
    assert "200 pixels" in message and "limit of 100" in message
    assert "max_pixels" in message and MAX_PIXELS_ENV in message
    assert read_image(path, max_pixels=200).shape == (10, 20, 3)


def test_pixel_limit_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(tmp_path / "big.png", Image.new("L", (20, 10)))
    monkeypatch.setenv(MAX_PIXELS_ENV, "150")
    assert resolve_max_pixels() == 150
    with pytest.raises(ImageLoadError, match="limit of 150"):
        read_image(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=MAX_PIXELS_ENV):
        resolve_max_pixels()


def test_image_load_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(ImageLoadError("/data/a.png", "is broken")))
    assert (error.path, error.reason) == ("/data/a.png", "is broken")
    assert str(error).startswith("/data/a.png: is broken. ")


# Masks ---------------------------------------------------------------------------------------


def test_read_mask_thresholds_and_resizes_nearest(tmp_path: Path) -> None:
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:4, 4:] = 255
    mask[7, 0] = 127  # not above the threshold
    path = _save(tmp_path / "m.png", Image.fromarray(mask))

    full = read_mask(path)
    assert full.dtype == bool and full.shape == (8, 8)
    assert full.sum() == 16 and full[0, 7] and not full[7, 0]

    small = read_mask(path, 4)
    assert small.tolist() == [
        [False, False, True, True],
        [False, False, True, True],
        [False, False, False, False],
        [False, False, False, False],
    ]


def test_read_mask_colour_and_none(tmp_path: Path) -> None:
    path = _save(tmp_path / "red.png", Image.new("RGB", (3, 2), (255, 0, 0)))
    assert read_mask(path).all()
    empty = read_mask(None, (5, 6))
    assert empty.shape == (5, 6) and not empty.any()
    with pytest.raises(ValueError, match="size"):
        read_mask(None)


# load_images ---------------------------------------------------------------------------------


def _grey_samples(tmp_path: Path, values: list[int]) -> list[Sample]:
    return [
        Sample(
            path=_save(tmp_path / f"{i:02d}.png", Image.new("L", (12, 10), v)),
            split="train",
            category="c",
        )
        for i, v in enumerate(values)
    ]


def test_load_images_keeps_order_and_size(tmp_path: Path) -> None:
    samples = _grey_samples(tmp_path, [10, 20, 30])
    loaded = load_images(samples, size=(6, 8))
    assert loaded.images.shape == (3, 6, 8, 3)
    assert loaded.images[:, 0, 0, 0].tolist() == [10, 20, 30]
    assert loaded.samples == samples
    assert loaded.skipped == [] and loaded.masks is None and loaded.has_mask is None
    assert len(loaded) == 3


def test_load_images_error_policy_stops_at_first_bad_file(tmp_path: Path) -> None:
    samples = _grey_samples(tmp_path, [10, 20])
    bad = _truncated_png(tmp_path / "bad.png")
    samples.insert(1, Sample(path=bad, split="train", category="c"))
    with pytest.raises(ImageLoadError, match=r"bad\.png"):
        load_images(samples, size=8, policy=BadInputPolicy.error)


def test_load_images_skip_policy_records_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    samples = _grey_samples(tmp_path, [10, 20, 30])
    cut = _truncated_png(tmp_path / "cut.png")
    fake = tmp_path / "fake.png"
    fake.write_text("text")
    samples[1:1] = [Sample(path=cut, split="train", category="c")]
    samples.append(Sample(path=str(fake), split="train", category="c"))

    with caplog.at_level(logging.WARNING, logger="noisyad.data.images"):
        loaded = load_images(samples, size=8, policy="skip")

    assert loaded.images.shape == (3, 8, 8, 3)
    assert loaded.images[:, 0, 0, 0].tolist() == [10, 20, 30]
    assert [s.path for s in loaded.samples] == [samples[i].path for i in (0, 2, 3)]
    assert [entry["path"] for entry in loaded.skipped] == [cut, str(fake)]
    assert "truncated" in loaded.skipped[0]["reason"]
    assert "not a readable image" in loaded.skipped[1]["reason"]
    assert "cut.png" in caplog.text and "fake.png" in caplog.text
    assert "Left out 2 of 5" in caplog.text


def test_load_images_all_skipped_gives_empty_arrays(tmp_path: Path) -> None:
    fake = tmp_path / "fake.png"
    fake.write_text("text")
    loaded = load_images([Sample(path=str(fake), split="train", category="c")], 8, "skip")
    assert loaded.images.shape == (0, 8, 8, 3)
    assert loaded.samples == [] and len(loaded.skipped) == 1


def test_load_images_native_size_must_agree(tmp_path: Path) -> None:
    small = _save(tmp_path / "s.png", Image.new("L", (4, 4)))
    large = _save(tmp_path / "l.png", Image.new("L", (5, 4)))
    samples = [Sample(path=p, split="train", category="c") for p in (small, large)]
    with pytest.raises(ValueError, match="pass size="):
        load_images(samples, size=None)
    assert load_images(samples[:1], size=None).images.shape == (1, 4, 4, 3)


def test_load_images_with_masks(tmp_path: Path) -> None:
    image = Image.new("L", (8, 8), 50)
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, :4] = 255
    mask_path = _save(tmp_path / "gt" / "d_mask.png", Image.fromarray(mask))
    samples = [
        Sample(_save(tmp_path / "n.png", image), "test", "c", label=0),
        Sample(_save(tmp_path / "d.png", image), "test", "c", 1, mask_path, "scratch"),
        Sample(_save(tmp_path / "u.png", image), "test", "c", label=1),
        Sample(_save(tmp_path / "t.png", image), "train", "c"),
    ]
    loaded = load_images(samples, size=4, with_masks=True)
    assert loaded.masks is not None and loaded.masks.shape == (4, 4, 4)
    assert loaded.has_mask.tolist() == [True, True, False, False]
    assert loaded.masks.sum(axis=(1, 2)).tolist() == [0, 8, 0, 0]
    assert loaded.masks[1, :, :2].all() and not loaded.masks[1, :, 2:].any()


def test_load_images_missing_mask_follows_policy(tmp_path: Path) -> None:
    image = Image.new("L", (8, 8), 50)
    missing = str(tmp_path / "gt" / "gone_mask.png")
    samples = [
        Sample(_save(tmp_path / "n.png", image), "test", "c", label=0),
        Sample(_save(tmp_path / "d.png", image), "test", "c", 1, missing, "scratch"),
    ]
    with pytest.raises(ImageLoadError, match="gone_mask.png"):
        load_images(samples, size=4, with_masks=True)

    loaded = load_images(samples, size=4, policy="skip", with_masks=True)
    assert [s.label for s in loaded.samples] == [0]
    assert loaded.masks.shape == (1, 4, 4) and loaded.has_mask.tolist() == [True]
    assert loaded.skipped[0]["path"] == samples[1].path
    assert loaded.skipped[0]["reason"].startswith(f"mask {missing}: ")
