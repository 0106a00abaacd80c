"""Image and mask decoding: the one path by which pixels enter noisyad.

Training, evaluation and serving all decode with :func:`read_image`, so a model sees the same
pixels at every stage. :func:`load_images` turns the samples of a manifest into one uint8 array
and deals with bad files (truncated, not an image, too large) according to a
:class:`BadInputPolicy`: stop at the first one, or leave it out and say so.

Decoding rules:

- Any PIL mode becomes 8-bit RGB. Alpha is dropped (the stored colour is kept, nothing is
  composited). Integer modes deeper than 8 bits (``I;16``, ``I``) are read as 16-bit and scaled
  to 8 bits (``value / 257``); float images (``F``) are clipped to 0..255.
- The stored pixel orientation is used as is (EXIF orientation is ignored) so that masks, which
  carry no EXIF, stay aligned. Multi-frame files give their first frame.
- A ``size`` of ``n`` means ``n x n``; a tuple means ``(height, width)``. Images are resized
  bilinearly, masks with nearest neighbour; a mask pixel above 127 (in any channel) is a defect.
- Files with more pixels than the limit (64 megapixels unless ``max_pixels`` or the environment
  variable ``NOISYAD_MAX_IMAGE_PIXELS`` says otherwise) are refused before decoding.

Example:
    >>> from noisyad.data import open_source, load_images, BadInputPolicy
    >>> manifest = open_source("/data/mvtec/bottle")
    >>> train = load_images(manifest.select(split="train"), size=128, policy="skip")
    >>> train.images.shape, len(train.skipped)
    ((209, 128, 128, 3), 0)
"""

from __future__ import annotations

import logging
import operator
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from noisyad.data.manifest import NORMAL, Sample

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 64_000_000
MAX_PIXELS_ENV = "NOISYAD_MAX_IMAGE_PIXELS"
# Individual warnings per skipped file up to this many; later ones go to DEBUG.
MAX_SKIP_WARNINGS = 20

_SKIP_HINT = (
    "Fix or remove the file, or pass --bad-input skip (policy='skip') to leave bad files out."
)

Size = int | tuple[int, int] | None


class ImageLoadError(ValueError):
    """A file could not be used as an image or mask.

    The message names the file, what is wrong with it and what to do about it.

    Attributes:
        path: The offending file.
        reason: What is wrong with it.
        hint: What the user can do.
    """

    def __init__(self, path: str | Path, reason: str, hint: str = _SKIP_HINT) -> None:
        super().__init__(str(path), reason, hint)
        self.path = str(path)
        self.reason = reason
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}. {self.hint}"


class BadInputPolicy(StrEnum):
    """What to do with a file that cannot be used.

    ``error`` raises on the first bad file. ``skip`` leaves it out, logs a WARNING naming it and
    records it (path and reason) in the result's ``skipped`` list.
    """

    error = "error"
    skip = "skip"


@dataclass
class LoadedImages:
    """Decoded images of a list of samples.

    Attributes:
        images: ``(N, H, W, 3)`` uint8 RGB.
        samples: The samples that were kept, in input order; ``samples[i]`` is ``images[i]``.
        skipped: Samples left out under the ``skip`` policy, as ``{"path", "reason"}`` dicts.
        masks: ``(N, H, W)`` bool defect masks, when loaded with ``with_masks=True``.
        has_mask: ``(N,)`` bool, when masks were loaded: whether ``masks[i]`` is known. It is
            False for unlabelled images and for anomalous images without a mask file; their
            mask is all False and pixel metrics should leave them out.
    """

    images: np.ndarray
    samples: list[Sample]
    skipped: list[dict[str, str]] = field(default_factory=list)
    masks: np.ndarray | None = None
    has_mask: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.samples)


def record_skip(skipped: list[dict[str, str]], path: str | Path, reason: str) -> None:
    """Record a left-out file and warn about it.

    The first :data:`MAX_SKIP_WARNINGS` files are logged one by one at WARNING; after that a
    single WARNING says the rest go to DEBUG, so a broken dataset does not flood the log.

    Args:
        skipped: The list to append ``{"path", "reason"}`` to.
        path: The file left out.
        reason: Why.
    """
    skipped.append({"path": str(path), "reason": reason})
    if len(skipped) <= MAX_SKIP_WARNINGS:
        logger.warning("Skipping %s: %s", path, reason)
        if len(skipped) == MAX_SKIP_WARNINGS:
            logger.warning("Further skipped files are logged at DEBUG; all are recorded.")
    else:
        logger.debug("Skipping %s: %s", path, reason)


def resolve_max_pixels(max_pixels: int | None = None) -> int:
    """Return the pixel limit: ``max_pixels``, else the environment variable, else the default.

    Args:
        max_pixels: An explicit limit, or None.

    Returns:
        The limit in pixels (width x height).

    Raises:
        ValueError: If the limit is not a positive integer.
    """
    if max_pixels is None:
        raw = os.environ.get(MAX_PIXELS_ENV)
        if raw is None:
            return DEFAULT_MAX_PIXELS
        try:
            max_pixels = int(raw)
        except ValueError:
            msg = f"{MAX_PIXELS_ENV}={raw!r} is not an integer; set it to a pixel count."
            raise ValueError(msg) from None
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}.")
    return max_pixels


def _target_hw(size: Size) -> tuple[int, int] | None:
    """Turn ``size`` into ``(height, width)`` or None, rejecting nonsense early."""
    if size is None:
        return None
    values = tuple(size) if isinstance(size, tuple | list) else (size, size)
    try:
        hw = tuple(operator.index(v) for v in values)
    except TypeError:
        hw = ()
    if len(hw) != 2 or min(hw) <= 0:
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}.")
    return hw[0], hw[1]


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (alpha dropped, 16-bit scaled down)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I"):
        # 16-bit (and 32-bit integer) grey: map 0..65535 onto 0..255.
        values = np.asarray(img.convert("I"), dtype=np.float64)
        grey = np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "F":
        grey = np.rint(np.clip(np.asarray(img), 0, 255)).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "P" and "transparency" in img.info:
        # Going through RGBA resolves the palette's transparency entry before alpha is dropped.
        img = img.convert("RGBA")
    return img.convert("RGB")


def _decode(path: Path, max_pixels: int, finish: Callable[[Image.Image], np.ndarray]) -> np.ndarray:
    """Open, size-check and fully decode ``path``, then turn it into an array with ``finish``.

    Every failure becomes an :class:`ImageLoadError` naming the file.
    """
    if not path.is_file():
        reason = "is a folder, not an image" if path.is_dir() else "the file does not exist"
        hint = "Check the path, or pass --bad-input skip (policy='skip')."
        raise ImageLoadError(path, reason, hint)
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageLoadError(
                    path,
                    f"{width}x{height} = {width * height} pixels exceeds the limit of "
                    f"{max_pixels} pixels (a guard against decompression bombs)",
                    f"If the file is trusted, raise the limit with max_pixels=... or the "
                    f"environment variable {MAX_PIXELS_ENV}.",
                )
            # load() forces the whole decode here, so a truncated file fails now, not later.
            img.load()
            return finish(img)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(
            path,
            f"PIL refused it as a possible decompression bomb ({exc})",
            "If the file is trusted, raise PIL.Image.MAX_IMAGE_PIXELS and max_pixels.",
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(path, "not a readable image (unknown or corrupt format)") from exc
    except Exception as exc:
        raise ImageLoadError(path, f"could not be decoded ({type(exc).__name__}: {exc})") from exc


def read_image(path: str | Path, size: Size = None, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file into RGB pixels.

    Args:
        path: The image file.
        size: ``n`` for ``n x n``, ``(height, width)``, or None for the native size.
        max_pixels: Refuse files with more pixels than this (see :func:`resolve_max_pixels`).

    Returns:
        ``(H, W, 3)`` uint8 array.

    Raises:
        ImageLoadError: If the file is missing, not an image, truncated or too large.
    """
    hw = _target_hw(size)

    def finish(img: Image.Image) -> np.ndarray:
        rgb = _to_rgb(img)
        if hw is not None and rgb.size != (hw[1], hw[0]):
            rgb = rgb.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8).copy()

    return _decode(Path(path), resolve_max_pixels(max_pixels), finish)


def read_mask(
    path: str | Path | None, size: Size = None, *, max_pixels: int | None = None
) -> np.ndarray:
    """Decode a defect mask (white = defect) into booleans.

    Args:
        path: The mask file, or None for "no defect": an all-False mask of ``size``.
        size: ``n`` for ``n x n``, ``(height, width)``, or None for the native size.
        max_pixels: Refuse files with more pixels than this (see :func:`resolve_max_pixels`).

    Returns:
        ``(H, W)`` bool array, True where any channel is above 127.

    Raises:
        ImageLoadError: If the file is missing, not an image, truncated or too large.
        ValueError: If ``path`` and ``size`` are both None.
    """
    hw = _target_hw(size)
    if path is None:
        if hw is None:
            raise ValueError("read_mask(None, ...) needs a size for the empty mask.")
        return np.zeros(hw, dtype=bool)

    def finish(img: Image.Image) -> np.ndarray:
        grey = Image.fromarray(np.asarray(_to_rgb(img)).max(axis=2))
        if hw is not None and grey.size != (hw[1], hw[0]):
            grey = grey.resize((hw[1], hw[0]), Image.Resampling.NEAREST)
        return np.asarray(grey) > 127

    return _decode(Path(path), resolve_max_pixels(max_pixels), finish)


def _load_mask_for(sample: Sample, hw: tuple[int, int], max_pixels: int) -> tuple[np.ndarray, bool]:
    """Return a sample's mask at ``hw`` and whether it is known (see :class:`LoadedImages`)."""
    if sample.mask_path:
        return read_mask(sample.mask_path, hw, max_pixels=max_pixels), True
    return np.zeros(hw, dtype=bool), sample.label == NORMAL


def load_images(
    samples: Sequence[Sample],
    size: Size,
    policy: BadInputPolicy | str = BadInputPolicy.error,
    *,
    with_masks: bool = False,
    max_pixels: int | None = None,
) -> LoadedImages:
    """Decode the images (and optionally masks) of ``samples`` into arrays.

    With ``with_masks=True``: a sample with a ``mask_path`` gets that mask (a missing or broken
    mask file makes the whole sample a bad input); a normal sample without one gets an all-False
    mask that counts as known; any other sample (unlabelled, or anomalous without a mask) gets an
    all-False mask with ``has_mask`` False.

    Args:
        samples: The images to load, usually ``manifest.select(...)``.
        size: ``n`` for ``n x n``, ``(height, width)``, or None to keep the native size (then all
            images must share one size).
        policy: :class:`BadInputPolicy` (or its value) for bad files.
        with_masks: Also load defect masks.
        max_pixels: Refuse files with more pixels than this (see :func:`resolve_max_pixels`).

    Returns:
        The decoded images, the kept samples and the skipped ones.

    Raises:
        ImageLoadError: On the first bad file under the ``error`` policy.
        ValueError: If ``size`` is None and the images differ in size.
    """
    policy = BadInputPolicy(policy)
    hw = _target_hw(size)
    limit = resolve_max_pixels(max_pixels)
    total = len(samples)
    logger.info("Decoding %d images (size %s, policy %s)", total, hw or "native", policy.value)

    images: np.ndarray | None = None
    masks: np.ndarray | None = None
    has_mask = np.zeros(total, dtype=bool)
    kept: list[Sample] = []
    skipped: list[dict[str, str]] = []
    progress = tqdm(samples, desc="Decoding images", unit="img", disable=not sys.stderr.isatty())
    for sample in progress:
        try:
            image = read_image(sample.path, hw, max_pixels=limit)
            if with_masks:
                mask, known = _load_mask_for(sample, image.shape[:2], limit)
        except ImageLoadError as exc:
            if policy is BadInputPolicy.error:
                raise
            where = "" if exc.path == str(sample.path) else f"mask {exc.path}: "
            record_skip(skipped, sample.path, where + exc.reason)
            continue

        if images is None:
            # Allocate once the first image fixes the shape; trimmed below if files are skipped.
            images = np.empty((total, *image.shape), dtype=np.uint8)
            if with_masks:
                masks = np.empty((total, *image.shape[:2]), dtype=bool)
        elif image.shape != images.shape[1:]:
            raise ValueError(
                f"{sample.path} is {image.shape[1]}x{image.shape[0]} but earlier images are "
                f"{images.shape[2]}x{images.shape[1]}; pass size= to resize them to one size."
            )
        index = len(kept)
        images[index] = image
        if with_masks:
            masks[index] = mask
            has_mask[index] = known
        kept.append(sample)

    return _finish(images, masks, has_mask, kept, skipped, hw, with_masks)


def _finish(
    images: np.ndarray | None,
    masks: np.ndarray | None,
    has_mask: np.ndarray,
    kept: list[Sample],
    skipped: list[dict[str, str]],
    hw: tuple[int, int] | None,
    with_masks: bool,
) -> LoadedImages:
    """Trim the preallocated arrays to the kept samples and report the outcome."""
    count = len(kept)
    if images is None:
        height, width = hw or (0, 0)
        images = np.zeros((0, height, width, 3), dtype=np.uint8)
        masks = np.zeros((0, height, width), dtype=bool) if with_masks else None
    elif count < len(images):
        images = images[:count].copy()
        masks = masks[:count].copy() if masks is not None else None

    if skipped:
        logger.warning(
            "Left out %d of %d images as unreadable (listed as skipped in training.json).",
            len(skipped),
            count + len(skipped),
        )
    if count == 0 and skipped:
        logger.warning("No image could be decoded: check the data source.")
    logger.info("Decoded %d images of %s", count, "x".join(map(str, images.shape[1:3])))
    return LoadedImages(
        images=images,
        samples=kept,
        skipped=skipped,
        masks=masks,
        has_mask=has_mask[:count].copy() if with_masks else None,
    )
