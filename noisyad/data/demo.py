"""The built-in demo dataset: real textures, synthetic defects, a chosen contamination.

The demo cuts tiles from scikit-image's CC0 texture photographs (``brick``, ``grass``,
``gravel``; 512 x 512 grayscale) and writes them in the MVTec AD layout, so every reader
and pipeline step can be exercised without downloading anything::

    <out>/README.txt
    <out>/<category>/train/good/000.png ...           normal tiles + hidden defective tiles
    <out>/<category>/test/good/000.png ...
    <out>/<category>/test/<defect_type>/000.png ...
    <out>/<category>/ground_truth/<defect_type>/000_mask.png   (0 / 255, mode L)
    <out>/<category>/train_contamination.json         evaluation-only sidecar

Train and test tiles come from disjoint quadrants of each texture (train: top-left and
bottom-right, test: top-right and bottom-left), so both splits see the near and the far
part of the brick wall's perspective while never sharing a pixel. Defects are synthesised
with pixel masks: ``pasted`` texture, ``scratch``, ``stain``, ``hole`` and ``smudge``.

Contamination ``alpha`` follows the FUIAD protocol of Real-IAD: all ``n_train_normal``
normal tiles are kept and ``round(alpha * n / (1 - alpha))`` defective tiles, built on
training-region crops and never shown in the test set, are added to ``train/good`` under
names indistinguishable from the normal ones. Every tile is drawn from its own random
stream, keyed by seed, texture, stream purpose and index: the test set and the normal
training tiles are byte-identical for every ``alpha`` at a given seed, so results across
contamination levels are comparable.

``train_contamination.json`` records which training files are defective. It exists for
evaluating the purification stage only; training code never reads it.

Example:
    >>> from pathlib import Path
    >>> summary = make_demo_dataset(Path("/tmp/demo"), contamination=0.1, overwrite=True)
    >>> summary.categories["brick"].n_train_defective
    13
    >>> hidden = read_contamination_sidecar(Path("/tmp/demo/brick"))
    >>> len(hidden)
    13
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage, spatial, special

logger = logging.getLogger(__name__)

TEXTURES: tuple[str, ...] = ("brick", "grass", "gravel")
"""Texture names the demo can use; their order fixes each texture's random-stream key."""

DEFECT_TYPES: tuple[str, ...] = ("pasted", "scratch", "stain", "hole", "smudge")
"""Synthetic defect types, in the round-robin order used to balance them."""

SIDECAR_NAME = "train_contamination.json"

MASK_ALPHA = 0.3
"""A pixel belongs to the defect mask where the defect's blend weight exceeds this."""

# Random-stream purposes: each tile's generator is keyed (seed, texture, purpose, index).
_STREAM_TRAIN_GOOD = 0
_STREAM_TRAIN_DEFECT = 1
_STREAM_TEST_GOOD = 2
_STREAM_TEST_DEFECT = 3
_STREAM_TRAIN_ORDER = 4
_STREAM_TRAIN_TYPES = 5

Rect = tuple[int, int, int, int]
"""A region of a texture as (row0, col0, row1, col1), end exclusive."""


@dataclass(frozen=True)
class TileRecord:
    """Where one written tile came from.

    Attributes:
        path: File path relative to the category folder, e.g. ``"test/scratch/003.png"``.
        split: ``"train"`` or ``"test"``.
        row: Top row of the crop in the source texture.
        col: Left column of the crop in the source texture.
        size: Side length of the (square) crop.
        defect_type: The synthetic defect, or ``None`` for a normal tile.
    """

    path: str
    split: str
    row: int
    col: int
    size: int
    defect_type: str | None = None


@dataclass
class CategorySummary:
    """What was written for one texture category.

    Attributes:
        name: Category (texture) name.
        n_train: Training images, normal plus hidden defective.
        n_train_defective: Defective images hidden in ``train/good``.
        n_test_good: Normal test images.
        n_test_defective: Defective test images.
        test_defect_counts: Defective test images per defect type.
        train_defect_counts: Hidden defective training images per defect type.
        tiles: Crop record of every written image (for checks and debugging).
    """

    name: str
    n_train: int
    n_train_defective: int
    n_test_good: int
    n_test_defective: int
    test_defect_counts: dict[str, int] = field(default_factory=dict)
    train_defect_counts: dict[str, int] = field(default_factory=dict)
    tiles: list[TileRecord] = field(default_factory=list)


@dataclass
class DemoSummary:
    """Result of :func:`make_demo_dataset`.

    Attributes:
        root: The dataset root that was written.
        contamination: Share of defective images in each training set (``alpha``).
        seed: The data seed.
        tile: Tile side length in pixels.
        categories: Per-category counts, keyed by category name.
    """

    root: Path
    contamination: float
    seed: int
    tile: int
    categories: dict[str, CategorySummary] = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        """Total number of images written over all categories."""
        return sum(c.n_train + c.n_test_good + c.n_test_defective for c in self.categories.values())


def n_defective_for(contamination: float, n_train_normal: int) -> int:
    """Return how many defective tiles make ``contamination`` of the training set.

    Args:
        contamination: Target share ``alpha`` of defective training images, in [0, 1).
        n_train_normal: Number of normal training images (all kept).

    Returns:
        ``round(alpha * n / (1 - alpha))``.
    """
    _check_contamination(contamination)
    return int(round(contamination * n_train_normal / (1.0 - contamination)))


def make_demo_dataset(
    out: Path,
    contamination: float = 0.0,
    seed: int = 0,
    categories: Sequence[str] = TEXTURES,
    n_train_normal: int = 120,
    n_test_normal: int = 30,
    n_test_defective: int = 30,
    tile: int = 128,
    defect_types: Sequence[str] = DEFECT_TYPES,
    overwrite: bool = False,
) -> DemoSummary:
    """Write the demo dataset in the MVTec AD layout.

    Args:
        out: Dataset root to create.
        contamination: Share ``alpha`` of defective images in each training set, in [0, 1).
        seed: Data seed (non-negative); the same seed gives the same bytes.
        categories: Textures to write, a subset of :data:`TEXTURES`.
        n_train_normal: Normal training tiles per category (kept at every ``alpha``).
        n_test_normal: Normal test tiles per category.
        n_test_defective: Defective test tiles per category, defect types in round robin.
        tile: Tile side length in pixels (16 to half the texture size).
        defect_types: Defect types to use, a subset of :data:`DEFECT_TYPES`.
        overwrite: Allow a non-empty ``out``; only the category folders written here and
            ``README.txt`` are replaced.

    Returns:
        Counts per category and the crop record of every tile.

    Raises:
        ValueError: On an out-of-range parameter or an unknown category or defect type.
        FileExistsError: When ``out`` is not empty and ``overwrite`` is false.
    """
    spec = _validated_spec(
        contamination,
        seed,
        categories,
        n_train_normal,
        n_test_normal,
        n_test_defective,
        tile,
        defect_types,
    )
    out = Path(out)
    _prepare_root(out, spec.categories, overwrite)

    started = time.perf_counter()
    textures = {name: _load_texture(name) for name in TEXTURES}
    summary = DemoSummary(root=out, contamination=spec.contamination, seed=spec.seed, tile=tile)
    for name in spec.categories:
        cat = _write_category(out / name, name, textures, spec)
        summary.categories[name] = cat
        logger.info(
            "demo %s: %d train (%d defective hidden), %d test good, %d test defective -> %s",
            name,
            cat.n_train,
            cat.n_train_defective,
            cat.n_test_good,
            cat.n_test_defective,
            out / name,
        )

    _write_readme(out, summary, spec)
    logger.info(
        "demo dataset: %d images in %d categories at contamination %.3g written to %s in %.1f s",
        summary.n_images,
        len(spec.categories),
        spec.contamination,
        out,
        time.perf_counter() - started,
    )
    return summary


def read_contamination_sidecar(category_dir: Path) -> dict[str, str] | None:
    """Return the hidden defective training images of one demo category.

    For evaluating purification only; training code must not call this.

    Args:
        category_dir: The category folder (``<out>/<category>``).

    Returns:
        ``{absolute image path: defect type}``, or ``None`` when there is no sidecar.

    Raises:
        ValueError: When the sidecar exists but is not valid.
    """
    sidecar = Path(category_dir) / SIDECAR_NAME
    if not sidecar.is_file():
        return None
    try:
        defective = json.loads(sidecar.read_text())["defective"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{sidecar} is not a valid contamination sidecar: {exc}") from exc
    base = Path(category_dir).resolve()
    return {str(base / rel): str(kind) for rel, kind in defective.items()}


def synthesize_defect(
    clean: np.ndarray, kind: str, rng: np.random.Generator, donor: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Add one synthetic defect to a grayscale tile.

    Args:
        clean: The tile, 2-D uint8.
        kind: One of :data:`DEFECT_TYPES`.
        rng: Source of randomness (shape, size, position, strength).
        donor: A crop of a different texture with the tile's shape; needed for ``pasted``.

    Returns:
        The defective tile (uint8, same shape) and its boolean pixel mask.

    Raises:
        ValueError: On an unknown ``kind`` or a missing ``donor`` for ``pasted``.
    """
    if kind not in _DEFECTS:
        raise ValueError(f"unknown defect type {kind!r}; choose from {DEFECT_TYPES}")
    if kind == "pasted" and (donor is None or donor.shape != clean.shape):
        raise ValueError("the 'pasted' defect needs a donor crop of the tile's shape")
    image = clean.astype(np.float64)
    scale = clean.shape[0] / 128.0
    for _ in range(20):
        defective, mask = _DEFECTS[kind](image, rng, scale, donor)
        if mask.sum() >= 12 * scale:
            break
    return _to_uint8(defective), mask


# ----------------------------------------------------------------------------- defects


def _random_center(
    shape: tuple[int, int], rng: np.random.Generator, radius: float
) -> tuple[float, float]:
    """A defect centre far enough from the border for most of the defect to show."""
    margin = min(radius * 0.8, shape[0] / 2 - 1, shape[1] / 2 - 1)
    return rng.uniform(margin, shape[0] - margin), rng.uniform(margin, shape[1] - margin)


def _blob_distance(
    shape: tuple[int, int],
    rng: np.random.Generator,
    radius: float,
    aspect: tuple[float, float],
    center: tuple[float, float] | None = None,
) -> tuple[np.ndarray, tuple[float, float]]:
    """Return the signed distance (pixels, > 0 inside) to a random irregular ellipse.

    The ellipse's outline is perturbed by a few low-frequency harmonics; its centre is
    returned with the distance map.
    """
    height, width = shape
    cy, cx = _random_center(shape, rng, radius) if center is None else center
    angle = rng.uniform(0.0, math.pi)
    ratio = rng.uniform(*aspect)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = (-dx * math.sin(angle) + dy * math.cos(angle)) / ratio
    rho = np.hypot(u, v)
    phi = np.arctan2(v, u)
    boundary = np.ones_like(rho)
    for k in (2, 3, 5):
        boundary += rng.uniform(0.0, 0.12) * np.cos(k * phi + rng.uniform(0.0, 2 * math.pi))
    # Distance along the ray, scaled back to pixels on the short axis.
    return (boundary * radius - rho) * ratio, (cy, cx)


def _soft_alpha(signed: np.ndarray, sigma: float) -> np.ndarray:
    """Blend weight of a hard shape blurred by a Gaussian of ``sigma`` pixels."""
    return 0.5 * (1.0 + special.erf(signed / (math.sqrt(2.0) * sigma)))


def _pasted(image, rng, scale, donor):
    """A patch of a different texture, matched to the surrounding brightness and contrast."""
    radius = rng.uniform(6.5, 17.0) * scale
    signed, _ = _blob_distance(image.shape, rng, radius, (0.5, 1.0))
    alpha = _soft_alpha(signed, rng.uniform(0.6, 1.4) * scale)
    inside = signed > 0
    around = signed > -6.0 * scale
    patch = donor.astype(np.float64)
    donor_std = max(patch[inside].std(), 1.0)
    # A flat surrounding (a brick face) would flatten the patch away: keep some contrast.
    host_std = max(image[around].std(), 0.5 * image.std(), 4.0) * rng.uniform(0.85, 1.15)
    patch = (patch - patch[inside].mean()) / donor_std * host_std + image[around].mean()
    return image * (1 - alpha) + patch * alpha, alpha > MASK_ALPHA


def _curve_distance(shape, rng, scale, start=None, heading=None):
    """Distance (pixels) to a random quadratic Bezier stroke; returns the stroke's end too."""
    height, width = shape
    length = rng.uniform(14.0, 35.0) * scale
    if start is None:
        start = rng.uniform(0.15, 0.85, size=2) * (height, width)
    if heading is None:
        heading = rng.uniform(0.0, 2 * math.pi)
    direction = np.array([math.sin(heading), math.cos(heading)])
    normal = np.array([direction[1], -direction[0]])
    end = start + direction * length
    bend = start + direction * length * rng.uniform(0.3, 0.7)
    control = bend + normal * length * rng.uniform(-0.35, 0.35)
    t = np.linspace(0.0, 1.0, int(length * 3) + 2)[:, None]
    points = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end
    yy, xx = np.mgrid[0:height, 0:width]
    grid = np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.float64)
    dist, _ = spatial.cKDTree(points).query(grid)
    return dist.reshape(shape), end


def _scratch(image, rng, scale, donor):
    """One or two thin bright or dark curved lines."""
    dist, end = _curve_distance(image.shape, rng, scale)
    if rng.random() < 0.35:
        second, _ = _curve_distance(image.shape, rng, scale, start=end + rng.normal(0, 3, 2))
        dist = np.minimum(dist, second)
    half_width = rng.uniform(0.4, 1.1) * scale
    alpha = np.clip(1.0 - (dist - half_width), 0.0, 1.0)
    strength = rng.uniform(0.55, 0.9)
    if rng.random() < 0.6:
        target = np.percentile(image, 99) + rng.uniform(10.0, 40.0)
    else:
        target = np.percentile(image, 1) - rng.uniform(5.0, 25.0)
    out = image * (1 - alpha * strength) + target * alpha * strength
    return out, alpha > MASK_ALPHA


def _stain(image, rng, scale, donor):
    """A soft, low-contrast, Gaussian-edged blob, darker or lighter than its surroundings."""
    radius = rng.uniform(6.0, 15.0) * scale
    signed, _ = _blob_distance(image.shape, rng, radius, (0.55, 1.0))
    alpha = _soft_alpha(signed, rng.uniform(0.2, 0.4) * radius)
    shift = rng.uniform(0.45, 0.9) * max(image.std(), 8.0) * rng.choice([-1.0, 1.0])
    flatten = rng.uniform(0.0, 0.35)
    local_mean = ndimage.uniform_filter(image, size=int(9 * scale) | 1, mode="reflect")
    out = image + alpha * (shift - flatten * (image - local_mean))
    return out, alpha > MASK_ALPHA


def _hole(image, rng, scale, donor):
    """A dark, sharp-edged pit with a lighter rim."""
    radius = rng.uniform(4.0, 11.0) * scale
    signed, (cy, cx) = _blob_distance(image.shape, rng, radius, (0.6, 1.0))
    alpha = _soft_alpha(signed, 0.5 * scale)
    rim_width = rng.uniform(1.5, 3.0) * scale
    rim = np.exp(-(((signed + rim_width / 2) / (rim_width / 2)) ** 2)) * (1 - alpha)

    # The pit's floor is dark and lit from one side.
    floor = np.percentile(image, 2) * rng.uniform(0.25, 0.6)
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    light = rng.uniform(0.0, 2 * math.pi)
    across = ((yy - cy) * math.sin(light) + (xx - cx) * math.cos(light)) / radius
    shade = 1.0 + 0.5 * np.clip(across, -1.0, 1.0)
    grain = ndimage.gaussian_filter(rng.normal(0.0, 6.0, image.shape), 1.0)
    inside = floor * shade + grain
    lift = rng.uniform(25.0, 50.0)
    out = image * (1 - alpha) + inside * alpha + rim * lift
    return out, (alpha > MASK_ALPHA) | (rim > MASK_ALPHA)


def _smudge(image, rng, scale, donor):
    """A locally smeared, blurred patch of the texture itself."""
    radius = rng.uniform(7.0, 17.0) * scale

    # Smearing a flat area changes nothing: put the smudge where the texture has structure.
    detail = ndimage.uniform_filter(ndimage.gaussian_gradient_magnitude(image, 1.0), int(radius))
    candidates = [_random_center(image.shape, rng, radius) for _ in range(6)]
    center = max(candidates, key=lambda c: detail[int(c[0]), int(c[1])])
    signed, _ = _blob_distance(image.shape, rng, radius, (0.45, 1.0), center)
    alpha = _soft_alpha(signed, rng.uniform(0.12, 0.25) * radius)

    heading = rng.uniform(0.0, math.pi)
    steps = int(rng.uniform(5.0, 11.0) * scale)
    pad = steps + 1
    padded = np.pad(image, pad, mode="reflect")
    smear = np.zeros_like(image)
    for step in range(-steps, steps + 1):
        dy = int(round(step * math.sin(heading)))
        dx = int(round(step * math.cos(heading)))
        smear += padded[pad + dy : pad + dy + image.shape[0], pad + dx : pad + dx + image.shape[1]]
    smear = ndimage.gaussian_filter(smear / (2 * steps + 1), 1.0 * scale)
    smear += rng.uniform(-0.25, 0.25) * max(image.std(), 8.0)
    return image * (1 - alpha) + smear * alpha, alpha > MASK_ALPHA


_DEFECTS = {
    "pasted": _pasted,
    "scratch": _scratch,
    "stain": _stain,
    "hole": _hole,
    "smudge": _smudge,
}


# ----------------------------------------------------------------------------- tiles


def _load_texture(name: str) -> np.ndarray:
    """Return one scikit-image texture as a 2-D uint8 array."""
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 3:
        image = image[..., :3].mean(axis=2).round().astype(np.uint8)
    return image


def split_regions(shape: tuple[int, int]) -> dict[str, tuple[Rect, ...]]:
    """Return the disjoint texture regions that train and test tiles are cut from.

    Args:
        shape: Texture height and width.

    Returns:
        ``{"train": (top-left, bottom-right), "test": (top-right, bottom-left)}`` quadrants
        as ``(row0, col0, row1, col1)``.
    """
    h2, w2 = shape[0] // 2, shape[1] // 2
    return {
        "train": ((0, 0, h2, w2), (h2, w2, shape[0], shape[1])),
        "test": ((0, w2, h2, shape[1]), (h2, 0, shape[0], w2)),
    }


def _random_crop(
    texture: np.ndarray, regions: tuple[Rect, ...], tile: int, rng: np.random.Generator
) -> tuple[np.ndarray, int, int]:
    """Cut one tile at a random offset inside a random region."""
    row0, col0, row1, col1 = regions[int(rng.integers(len(regions)))]
    row = int(rng.integers(row0, row1 - tile + 1))
    col = int(rng.integers(col0, col1 - tile + 1))
    return texture[row : row + tile, col : col + tile], row, col


def _jitter(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild brightness and contrast change, as between two exposures on a line."""
    gain = rng.uniform(0.96, 1.04)
    offset = rng.uniform(-4.0, 4.0)
    mean = crop.mean()
    return _to_uint8((crop - mean) * gain + mean + offset)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _normal_tile(
    textures: dict[str, np.ndarray], name: str, split: str, tile: int, rng: np.random.Generator
) -> tuple[np.ndarray, int, int]:
    """Return a jittered normal tile of texture ``name`` from ``split``'s region."""
    texture = textures[name]
    crop, row, col = _random_crop(texture, split_regions(texture.shape)[split], tile, rng)
    return _jitter(crop, rng), row, col


def _defective_tile(
    textures: dict[str, np.ndarray],
    name: str,
    split: str,
    tile: int,
    kind: str,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Return (clean, defective, mask, row, col) for one defective tile of ``split``."""
    clean, row, col = _normal_tile(textures, name, split, tile, rng)
    donor = None
    if kind == "pasted":
        others = [t for t in TEXTURES if t != name]
        donor_name = others[int(rng.integers(len(others)))]
        donor_texture = textures[donor_name]
        regions = split_regions(donor_texture.shape)[split]
        donor, _, _ = _random_crop(donor_texture, regions, tile, rng)
    defective, mask = synthesize_defect(clean, kind, rng, donor)
    return clean, defective, mask, row, col


def make_defect_example(
    category: str = "brick", kind: str = "scratch", seed: int = 0, tile: int = 128
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return one (clean, defective, mask) triple from the test region, for checks and plots.

    Args:
        category: Texture name from :data:`TEXTURES`.
        kind: Defect type from :data:`DEFECT_TYPES`.
        seed: Seed of this example.
        tile: Tile side length.

    Returns:
        The clean tile and the defective tile (uint8) and the boolean defect mask.

    Raises:
        ValueError: On an unknown category or defect type.
    """
    if category not in TEXTURES:
        raise ValueError(f"unknown category {category!r}; choose from {TEXTURES}")
    if kind not in DEFECT_TYPES:
        raise ValueError(f"unknown defect type {kind!r}; choose from {DEFECT_TYPES}")
    textures = {name: _load_texture(name) for name in TEXTURES}
    rng = np.random.default_rng([seed, TEXTURES.index(category), 99, DEFECT_TYPES.index(kind)])
    clean, defective, mask, _, _ = _defective_tile(textures, category, "test", tile, kind, rng)
    return clean, defective, mask


# ----------------------------------------------------------------------------- writing


def _save_png(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")


@dataclass(frozen=True)
class _Spec:
    """The parameters of one demo generation, validated."""

    contamination: float
    seed: int
    categories: tuple[str, ...]
    n_train_normal: int
    n_test_normal: int
    n_test_defective: int
    tile: int
    defect_types: tuple[str, ...]

    @property
    def n_defective(self) -> int:
        return n_defective_for(self.contamination, self.n_train_normal)

    def rng(self, texture: str, stream: int, *index: int) -> np.random.Generator:
        """The random stream of one purpose (and tile) of one texture."""
        return np.random.default_rng([self.seed, TEXTURES.index(texture), stream, *index])


def _write_category(
    cat_dir: Path, name: str, textures: dict[str, np.ndarray], spec: _Spec
) -> CategorySummary:
    """Write one category's train, test and ground-truth folders and its sidecar."""
    summary = CategorySummary(
        name=name,
        n_train=spec.n_train_normal + spec.n_defective,
        n_train_defective=spec.n_defective,
        n_test_good=spec.n_test_normal,
        n_test_defective=spec.n_test_defective,
    )
    _write_test_set(cat_dir, name, textures, spec, summary)
    defective = _write_train_set(cat_dir, name, textures, spec, summary)

    sidecar = {
        "contamination": spec.contamination,
        "seed": spec.seed,
        "n_train": summary.n_train,
        "n_defective": summary.n_train_defective,
        "defective": dict(sorted(defective.items())),
    }
    (cat_dir / SIDECAR_NAME).write_text(json.dumps(sidecar, indent=2) + "\n")
    return summary


def _write_test_set(
    cat_dir: Path,
    name: str,
    textures: dict[str, np.ndarray],
    spec: _Spec,
    summary: CategorySummary,
) -> None:
    """Write normal and defective test tiles and masks; nothing here depends on alpha."""
    tile = spec.tile
    for i in range(spec.n_test_normal):
        rng = spec.rng(name, _STREAM_TEST_GOOD, i)
        image, row, col = _normal_tile(textures, name, "test", tile, rng)
        rel = f"test/good/{i:03d}.png"
        _save_png(image, cat_dir / rel)
        summary.tiles.append(TileRecord(rel, "test", row, col, tile))

    for i in range(spec.n_test_defective):
        kind = spec.defect_types[i % len(spec.defect_types)]
        rng = spec.rng(name, _STREAM_TEST_DEFECT, i)
        _, image, mask, row, col = _defective_tile(textures, name, "test", tile, kind, rng)
        index = summary.test_defect_counts.get(kind, 0)
        summary.test_defect_counts[kind] = index + 1
        rel = f"test/{kind}/{index:03d}.png"
        _save_png(image, cat_dir / rel)
        mask_png = mask.astype(np.uint8) * 255
        _save_png(mask_png, cat_dir / f"ground_truth/{kind}/{index:03d}_mask.png")
        summary.tiles.append(TileRecord(rel, "test", row, col, tile, kind))


def _write_train_set(
    cat_dir: Path,
    name: str,
    textures: dict[str, np.ndarray],
    spec: _Spec,
    summary: CategorySummary,
) -> dict[str, str]:
    """Write normal plus hidden defective training tiles under one shuffled numbering.

    Returns:
        ``{path relative to the category folder: defect type}`` of the defective tiles.
    """
    tile = spec.tile
    train: list[tuple[np.ndarray, int, int, str | None]] = []
    for i in range(spec.n_train_normal):
        image, row, col = _normal_tile(
            textures, name, "train", tile, spec.rng(name, _STREAM_TRAIN_GOOD, i)
        )
        train.append((image, row, col, None))

    # Defective tile i is the same at every alpha that has one: the sets are nested.
    first_type = int(spec.rng(name, _STREAM_TRAIN_TYPES).integers(len(spec.defect_types)))
    for i in range(spec.n_defective):
        kind = spec.defect_types[(first_type + i) % len(spec.defect_types)]
        rng = spec.rng(name, _STREAM_TRAIN_DEFECT, i)
        _, image, _, row, col = _defective_tile(textures, name, "train", tile, kind, rng)
        train.append((image, row, col, kind))

    positions = spec.rng(name, _STREAM_TRAIN_ORDER).permutation(len(train))
    width = max(3, len(str(len(train) - 1)))
    defective: dict[str, str] = {}
    for (image, row, col, kind), position in zip(train, positions, strict=True):
        rel = f"train/good/{int(position):0{width}d}.png"
        _save_png(image, cat_dir / rel)
        summary.tiles.append(TileRecord(rel, "train", row, col, tile, kind))
        if kind is not None:
            defective[rel] = kind
            summary.train_defect_counts[kind] = summary.train_defect_counts.get(kind, 0) + 1
    return defective


def _write_readme(out: Path, summary: DemoSummary, spec: _Spec) -> None:
    lines = [
        "noisyad demo dataset",
        "",
        "Images are real photographs: the CC0 texture images brick, grass and gravel that",
        "ship with scikit-image (skimage.data). Tiles are cut from them; all defects are",
        "synthetic and drawn by noisyad.data.demo with pixel masks in ground_truth/.",
        "",
        "Train tiles come from the top-left and bottom-right quadrants of each texture, test",
        "tiles from the top-right and bottom-left quadrants: the splits share no pixel.",
        "train/good also holds hidden defective tiles (the contamination); each category's",
        f"{SIDECAR_NAME} lists them for evaluation only. Training code never reads it.",
        "",
        "Generated with noisyad.data.demo.make_demo_dataset(",
        f"    contamination={spec.contamination!r},",
        f"    seed={spec.seed},",
        f"    categories={spec.categories!r},",
        f"    n_train_normal={spec.n_train_normal},",
        f"    n_test_normal={spec.n_test_normal},",
        f"    n_test_defective={spec.n_test_defective},",
        f"    tile={spec.tile},",
        f"    defect_types={spec.defect_types!r},",
        ")",
        "",
        "category  train  hidden-defective  test-good  test-defective",
    ]
    for cat in summary.categories.values():
        lines.append(
            f"{cat.name:<9} {cat.n_train:>5}  {cat.n_train_defective:>16}  "
            f"{cat.n_test_good:>9}  {cat.n_test_defective:>14}"
        )
    (out / "README.txt").write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- checks


def _check_contamination(contamination: float) -> None:
    if not (isinstance(contamination, int | float) and 0.0 <= contamination < 1.0):
        raise ValueError(
            "contamination (the share of defective images in the training set) must be "
            f"in [0, 1); got {contamination!r}"
        )


def _validated_spec(
    contamination: float,
    seed: int,
    categories: Sequence[str],
    n_train_normal: int,
    n_test_normal: int,
    n_test_defective: int,
    tile: int,
    defect_types: Sequence[str],
) -> _Spec:
    """Check every parameter and return them as plain Python values."""
    _check_contamination(contamination)
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    categories = tuple(categories)
    if not categories or len(set(categories)) != len(categories) or set(categories) - set(TEXTURES):
        raise ValueError(f"categories must be distinct names from {TEXTURES}; got {categories}")
    defect_types = tuple(defect_types)
    if (
        not defect_types
        or len(set(defect_types)) != len(defect_types)
        or set(defect_types) - set(DEFECT_TYPES)
    ):
        raise ValueError(
            f"defect_types must be distinct names from {DEFECT_TYPES}; got {defect_types}"
        )
    counts = {
        "n_train_normal": n_train_normal,
        "n_test_normal": n_test_normal,
        "n_test_defective": n_test_defective,
    }
    for key, value in counts.items():
        if not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{key} must be a non-negative integer; got {value!r}")
    if n_train_normal < 1:
        raise ValueError("n_train_normal must be at least 1")
    if not isinstance(tile, int | np.integer) or not 16 <= tile <= 256:
        raise ValueError(f"tile must be an integer in [16, 256] (half a texture); got {tile!r}")
    return _Spec(
        contamination=float(contamination),
        seed=int(seed),
        categories=categories,
        n_train_normal=int(n_train_normal),
        n_test_normal=int(n_test_normal),
        n_test_defective=int(n_test_defective),
        tile=int(tile),
        defect_types=defect_types,
    )


def _prepare_root(out: Path, categories: tuple[str, ...], overwrite: bool) -> None:
    """Create ``out``, refusing a non-empty folder unless ``overwrite`` is set."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out} is not empty; pass --overwrite (overwrite=True) to replace its demo "
                "categories"
            )
        for name in categories:
            if (out / name).is_dir():
                logger.info("removing existing demo category %s", out / name)
                shutil.rmtree(out / name)
    out.mkdir(parents=True, exist_ok=True)
