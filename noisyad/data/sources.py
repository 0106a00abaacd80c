"""Data sources: turn a dataset on disk into a :class:`~noisyad.data.manifest.Manifest`.

Three layouts are read, and :func:`open_source` tells them apart:

- **MVTec AD** (:func:`read_mvtec`): ``<root>/<category>/train/good/*``,
  ``<root>/<category>/test/<good|defect>/*``, ``<root>/<category>/ground_truth/<defect>/
  <name>_mask.png``; ``root`` may also be one category folder.
- **Real-IAD** (:func:`read_realiad`): a split file ``realiad_jsons*/<category>.json`` with
  ``train`` and ``test`` record lists; images under ``realiad_<res>/<category>/``.
- **A plain folder** (:func:`read_folder`) of unlabelled images, searched recursively: the
  production case.

An ``s3://bucket/prefix`` source is first mirrored into a local cache folder
(:mod:`noisyad.data.s3`) and then read as one of the above.

Training images are always unlabelled (``label=None``): in this product the "good" training
set may hold defects, and training code must never see labels for it, even where the source
has them. Test images carry labels and masks where the source provides them.

Readers check that files exist but decode nothing, so a manifest of 100k images builds in
seconds; unreadable pixels surface later in :func:`~noisyad.data.images.load_images`. Under
``BadInputPolicy.skip`` a missing file is left out, logged and listed in ``manifest.skipped``.

Example:
    >>> manifest = open_source("/data/mvtec", category="bottle")
    >>> len(manifest.select(split="train")), manifest.categories()
    (209, ['bottle'])
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from noisyad.data.images import BadInputPolicy, record_skip
from noisyad.data.manifest import ANOMALOUS, NORMAL, Manifest, Sample

if TYPE_CHECKING:
    from noisyad.data.s3 import S3Settings

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_LAYOUTS = (
    "a folder of images (searched recursively), an MVTec AD root or category folder "
    "(<category>/train/good, <category>/test/<type>), or a Real-IAD split file <category>.json"
)
_SKIP_HINT = "Restore the file, or pass --bad-input skip (policy='skip') to leave it out."


class DataSourceError(ValueError):
    """A data source is missing, empty, malformed or does not match any known layout."""


def _is_image(path: Path) -> bool:
    """Whether ``path`` names an image file we read (by extension, case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _images_in(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name; empty if it does not exist."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and _is_image(p))


def _subdirs(folder: Path) -> list[Path]:
    """Visible subfolders of ``folder``, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _existing(path: str | Path, what: str, expected: str = _LAYOUTS) -> Path:
    """Return ``path`` made absolute, or raise if it does not exist."""
    resolved = Path(os.path.abspath(Path(path).expanduser()))
    if not resolved.exists():
        raise DataSourceError(f"{what} {resolved} does not exist. Expected {expected}.")
    return resolved


def _as_list(categories: str | Sequence[str] | None) -> list[str] | None:
    """Accept one category name as well as a list of them."""
    if categories is None:
        return None
    return [categories] if isinstance(categories, str) else list(categories)


def _check_categories(wanted: list[str] | None, available: Sequence[str], where: Path) -> None:
    """Raise if a requested category is not in the source."""
    unknown = sorted(set(wanted or ()) - set(available))
    if unknown:
        raise DataSourceError(
            f"Unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)} in "
            f"{where}. Available: {', '.join(sorted(available)) or '(none)'}."
        )


def _bad_input(
    policy: BadInputPolicy, skipped: list[dict[str, str]], path: Path, reason: str
) -> None:
    """Apply ``policy`` to a file that cannot be used: raise, or record and warn."""
    if policy is BadInputPolicy.error:
        raise DataSourceError(f"{path}: {reason}. {_SKIP_HINT}")
    record_skip(skipped, path, reason)


def _summarise(manifest: Manifest, what: str) -> Manifest:
    """Refuse an empty manifest; log what was found."""
    if not manifest.samples and manifest.skipped:
        raise DataSourceError(
            f"No usable images in {what} {manifest.root}: all {len(manifest.skipped)} were left "
            f"out (first: {manifest.skipped[0]['path']}: {manifest.skipped[0]['reason']})."
        )
    if not manifest.samples:
        raise DataSourceError(
            f"No images found in {what} {manifest.root}. Accepted extensions: "
            f"{', '.join(IMAGE_EXTENSIONS)} (any case). Accepted layouts: {_LAYOUTS}."
        )
    logger.info(
        "%s %s: %d train and %d test images in %d categor%s; %d skipped",
        what,
        manifest.root,
        len(manifest.select(split="train")),
        len(manifest.select(split="test")),
        len(manifest.categories()),
        "y" if len(manifest.categories()) == 1 else "ies",
        len(manifest.skipped),
    )
    return manifest


# MVTec AD ------------------------------------------------------------------------------------


def _mvtec_category_dirs(root: Path) -> dict[str, Path]:
    """Map category name to folder: ``root`` itself if it has ``train/``, else its children."""
    if (root / "train").is_dir():
        return {root.name: root}
    return {d.name: d for d in _subdirs(root) if (d / "train").is_dir()}


def _mask_finder(defect_dir: Path) -> Callable[[str], Path | None]:
    """Return a lookup of ``<stem>_mask.<ext>`` (else ``<stem>.<ext>``) in ``defect_dir``.

    The folder is listed once; names and extensions match case-insensitively.
    """
    by_name = {p.stem.lower(): p for p in _images_in(defect_dir)}

    def find(stem: str) -> Path | None:
        return by_name.get(f"{stem}_mask".lower()) or by_name.get(stem.lower())

    return find


def _read_mvtec_category(
    name: str, folder: Path, policy: BadInputPolicy, manifest: Manifest
) -> None:
    """Append one MVTec AD category's samples to ``manifest``."""
    train = [
        Sample(path=str(p), split="train", category=name)
        for p in _images_in(folder / "train" / "good")
    ]
    if not train:
        logger.warning("%s: no images in train/good; this category has no training data.", name)
    ignored = [d for d in _subdirs(folder / "train") if d.name != "good" and _images_in(d)]
    if ignored or _images_in(folder / "train"):
        logger.warning(
            "%s: only train/good is read; images elsewhere under %s are ignored (%s).",
            name,
            folder / "train",
            ", ".join(d.name for d in ignored) or "loose files in train/",
        )
    manifest.samples.extend(train)

    ground_truth = folder / "ground_truth"
    has_ground_truth = ground_truth.is_dir()
    if (folder / "test").is_dir() and not has_ground_truth:
        logger.info("%s: no ground_truth folder; test defects get no pixel masks.", name)
    for type_dir in _subdirs(folder / "test"):
        is_good = type_dir.name == "good"
        find_mask = _mask_finder(ground_truth / type_dir.name)
        for path in _images_in(type_dir):
            if is_good:
                manifest.samples.append(
                    Sample(path=str(path), split="test", category=name, label=NORMAL)
                )
                continue
            mask = None
            if has_ground_truth:
                mask = find_mask(path.stem)
                if mask is None:
                    expected = ground_truth / type_dir.name / f"{path.stem}_mask.png"
                    _bad_input(policy, manifest.skipped, path, f"its mask {expected} is missing")
                    continue
            manifest.samples.append(
                Sample(
                    path=str(path),
                    split="test",
                    category=name,
                    label=ANOMALOUS,
                    mask_path=str(mask) if mask else None,
                    defect_type=type_dir.name,
                )
            )


def read_mvtec(
    root: str | Path,
    categories: str | Sequence[str] | None = None,
    policy: BadInputPolicy | str = BadInputPolicy.error,
) -> Manifest:
    """Read a dataset in the MVTec AD layout.

    Training images (``train/good``) get ``label=None``; test images get 0 (``test/good``) or 1
    with ``defect_type`` set to their folder name and ``mask_path`` to
    ``ground_truth/<defect>/<name>_mask.png``. A category without a ``ground_truth`` folder has
    image-level labels only (``mask_path=None``); with one, a missing mask is a bad input.
    Order: category, then train before test, then folder and file name.

    Args:
        root: The dataset root (holding category folders) or one category folder.
        categories: Category names to read; None reads all.
        policy: What to do with a test defect whose mask is missing.

    Returns:
        The manifest (``source="mvtec"``).

    Raises:
        DataSourceError: If ``root`` is missing, has no category, a requested category is
            unknown, no image is found, or a mask is missing under the ``error`` policy.
    """
    policy = BadInputPolicy(policy)
    root_path = _existing(root, "MVTec AD root")
    category_dirs = _mvtec_category_dirs(root_path)
    if not category_dirs:
        raise DataSourceError(
            f"{root_path} is not in the MVTec AD layout: neither it nor any subfolder has a "
            f"train/ folder. Expected <category>/train/good and <category>/test/<type>."
        )
    wanted = _as_list(categories)
    _check_categories(wanted, list(category_dirs), root_path)

    manifest = Manifest(root=str(root_path), source="mvtec")
    for name, folder in sorted(category_dirs.items()):
        if wanted is None or name in wanted:
            _read_mvtec_category(name, folder, policy, manifest)
    return _summarise(manifest, "MVTec AD dataset")


# Real-IAD ------------------------------------------------------------------------------------


def _load_split_file(json_path: Path) -> dict[str, Any]:
    """Parse a Real-IAD split file and check its top-level shape."""
    try:
        document = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataSourceError(f"{json_path} is not valid JSON ({exc}).") from exc
    if not isinstance(document, dict):
        raise DataSourceError(
            f"{json_path}: expected a JSON object with 'train' and 'test' lists, "
            f"got {type(document).__name__}."
        )
    if "train" not in document and "test" not in document:
        raise DataSourceError(f"{json_path}: missing key 'train' (and 'test'); not a split file.")
    for key in ("train", "test"):
        if not isinstance(document.get(key, []), list):
            raise DataSourceError(f"{json_path}: key '{key}' must be a list of records.")
    return document


def _field(record: Any, key: str, json_path: Path, where: str) -> str | None:
    """Return a record's string field (None if absent or empty), rejecting other types."""
    if not isinstance(record, dict):
        raise DataSourceError(f"{json_path}: {where} is not an object: {record!r}.")
    value = record.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise DataSourceError(f"{json_path}: {where} key '{key}' must be a string: {value!r}.")
    return value


def _required(record: Any, key: str, json_path: Path, where: str) -> str:
    """Like :func:`_field` but the key must be present and non-empty."""
    value = _field(record, key, json_path, where)
    if value is None:
        raise DataSourceError(f"{json_path}: {where} has no key '{key}' (or it is empty).")
    return value


def _find_image_root(json_path: Path, category: str) -> Path:
    """Find the ``realiad_<res>`` folder for a split file (see :func:`read_realiad`)."""
    for level in (json_path.parent.parent, json_path.parent.parent.parent):
        candidates = [
            d
            for d in _subdirs(level)
            if d.name.startswith("realiad_") and not d.name.startswith("realiad_jsons")
        ]
        holding = [d for d in candidates if (d / category).is_dir()]
        if len(holding) == 1:
            logger.info("Real-IAD images for %s: %s", json_path.name, holding[0])
            return holding[0]
        if len(holding) > 1:
            raise DataSourceError(
                f"Several Real-IAD image folders hold '{category}': "
                f"{', '.join(str(d) for d in holding)}. Pass image_root= to choose one."
            )
    raise DataSourceError(
        f"No Real-IAD image folder (realiad_<res>/{category}/) found next to {json_path.parent}. "
        f"Pass image_root= (the realiad_<res> folder)."
    )


def _resolve(image_root: Path, category: str, relative: str) -> Path | None:
    """Find a record's file: relative to ``<image_root>/<category>``, then ``<image_root>``."""
    relative = relative.replace("\\", "/")
    for base in (image_root / category, image_root):
        candidate = base / relative
        if candidate.is_file():
            return candidate
    return None


def read_realiad(
    json_path: str | Path,
    image_root: str | Path | None = None,
    policy: BadInputPolicy | str = BadInputPolicy.error,
    categories: str | Sequence[str] | None = None,
) -> Manifest:
    """Read a Real-IAD split file (``realiad_jsons*/<category>.json``).

    Records hold ``image_path``, ``mask_path`` (may be empty), ``anomaly_class`` (the normal class
    is ``meta.normal_class``, default ``"OK"``) and ``category`` (default: the file's name).
    An ``image_path`` is looked up under ``<image_root>/<category>/`` (the official layout) and
    then under ``<image_root>/``. Without ``image_root``, the ``realiad_<res>`` folder that holds
    the category is searched next to the json folder (in its parent, then its grandparent;
    ``realiad_jsons*`` folders are not candidates); if several resolutions are there, pass
    ``image_root``.

    Train records become unlabelled samples: ``anomaly_class`` and ``mask_path`` of training
    records are not read at all, because the FUIAD splits put unlabelled defects into ``train``.
    Test records get label 0 (normal, no mask) or 1 with ``defect_type`` = ``anomaly_class``
    and the mask when the record names one.

    Args:
        json_path: The split file.
        image_root: The ``realiad_<res>`` folder; None searches for it as described above.
        policy: What to do with a record whose image or mask file is missing.
        categories: Keep only records of these categories; None keeps all.

    Returns:
        The manifest (``source="realiad"``) in file order: train records, then test records.

    Raises:
        DataSourceError: If the file is missing, malformed (naming the record and key), the image
            folder cannot be found, a category is unknown, or a file is missing under ``error``.
    """
    policy = BadInputPolicy(policy)
    json_file = _existing(json_path, "Real-IAD split file")
    if not json_file.is_file():
        raise DataSourceError(f"{json_file} is a folder; pass one realiad_jsons*/<category>.json.")
    document = _load_split_file(json_file)
    meta = document.get("meta") if isinstance(document.get("meta"), dict) else {}
    normal_class = meta.get("normal_class") or "OK"
    splits = {key: document.get(key, []) for key in ("train", "test")}

    # Validate every record first, so a malformed file fails before any file is looked up.
    record_category: dict[tuple[str, int], str] = {}
    for key, records in splits.items():
        for index, record in enumerate(records):
            where = f"record {key}[{index}]"
            _required(record, "image_path", json_file, where)
            if key == "test":
                _required(record, "anomaly_class", json_file, where)
            category = _field(record, "category", json_file, where) or json_file.stem
            record_category[(key, index)] = category
    available = sorted(set(record_category.values()))
    wanted = _as_list(categories)
    _check_categories(wanted, available, json_file)

    roots: dict[str, Path] = {}
    manifest = Manifest(root=str(json_file), source="realiad")
    split_file = _SplitFile(json_file, normal_class, policy, manifest.skipped)
    for key, records in splits.items():
        for index, record in enumerate(records):
            category = record_category[(key, index)]
            if wanted is not None and category not in wanted:
                continue
            if category not in roots:
                roots[category] = (
                    _existing(image_root, "Real-IAD image root", "the realiad_<res> folder")
                    if image_root is not None
                    else _find_image_root(json_file, category)
                )
            where = f"record {key}[{index}]"
            sample = _realiad_sample(split_file, record, key, where, category, roots[category])
            if sample is not None:
                manifest.samples.append(sample)
    return _summarise(manifest, "Real-IAD split")


@dataclass(frozen=True)
class _SplitFile:
    """What every record of one Real-IAD split file is read against."""

    path: Path
    normal_class: str
    policy: BadInputPolicy
    skipped: list[dict[str, str]]


def _realiad_sample(
    split_file: _SplitFile,
    record: dict[str, Any],
    split: str,
    where: str,
    category: str,
    image_root: Path,
) -> Sample | None:
    """Build one sample from a Real-IAD record, or None if its files are missing (skip)."""
    json_file, policy, skipped = split_file.path, split_file.policy, split_file.skipped
    relative = _required(record, "image_path", json_file, where)
    path = _resolve(image_root, category, relative)
    if path is None:
        missing = image_root / category / relative
        _bad_input(policy, skipped, missing, f"listed in {json_file.name} ({where}) but missing")
        return None
    if split == "train":
        return Sample(path=str(path), split="train", category=category)

    anomaly_class = _required(record, "anomaly_class", json_file, where)
    if anomaly_class == split_file.normal_class:
        return Sample(path=str(path), split="test", category=category, label=NORMAL)
    mask = None
    mask_relative = _field(record, "mask_path", json_file, where)
    if mask_relative is not None:
        mask = _resolve(image_root, category, mask_relative)
        if mask is None:
            reason = f"its mask {mask_relative} ({json_file.name} {where}) is missing"
            _bad_input(policy, skipped, path, reason)
            return None
    return Sample(
        path=str(path),
        split="test",
        category=category,
        label=ANOMALOUS,
        mask_path=str(mask) if mask else None,
        defect_type=anomaly_class,
    )


# Plain folder --------------------------------------------------------------------------------


def read_folder(
    root: str | Path,
    category: str | None = None,
    policy: BadInputPolicy | str = BadInputPolicy.error,
) -> Manifest:
    """Read a folder of unlabelled images, recursively, as training data.

    Hidden files and folders (names starting with ``.``) and files with other extensions are
    ignored. Order: sorted relative path.

    Args:
        root: The folder.
        category: Name for the images; defaults to the folder's name.
        policy: What to do with a subfolder that cannot be listed.

    Returns:
        The manifest (``source="folder"``); every sample is ``split="train"``, ``label=None``.

    Raises:
        DataSourceError: If ``root`` is missing, not a folder, holds no image, or a subfolder
            cannot be listed under the ``error`` policy.
    """
    policy = BadInputPolicy(policy)
    root_path = _existing(root, "Image folder")
    if not root_path.is_dir():
        raise DataSourceError(f"{root_path} is not a folder. Expected {_LAYOUTS}.")
    name = category or root_path.name
    manifest = Manifest(root=str(root_path), source="folder")

    def unreadable(exc: OSError) -> None:
        _bad_input(policy, manifest.skipped, Path(exc.filename or root_path), str(exc.strerror))

    found: list[Path] = []
    ignored = 0
    for folder, subfolders, files in os.walk(root_path, onerror=unreadable):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for file_name in files:
            path = Path(folder) / file_name
            if _is_image(path):
                found.append(path)
            else:
                ignored += 1
    if ignored:
        logger.debug("%s: ignored %d files that are not images by extension", root_path, ignored)

    found.sort(key=lambda p: p.relative_to(root_path).parts)
    manifest.samples = [Sample(path=str(p), split="train", category=name) for p in found]
    return _summarise(manifest, "Image folder")


# Dispatch ------------------------------------------------------------------------------------


def _looks_like_mvtec(folder: Path) -> bool:
    """Whether ``folder`` or one of its subfolders has a ``train/`` folder."""
    return bool(_mvtec_category_dirs(folder))


def open_source(
    uri: str | Path,
    category: str | None = None,
    policy: BadInputPolicy | str = BadInputPolicy.error,
    image_root: str | Path | None = None,
    s3: S3Settings | None = None,
) -> Manifest:
    """Read any supported data source, recognising its layout.

    A ``.json`` file is a Real-IAD split; a folder that has ``train/`` (or whose subfolders do)
    is MVTec AD; any other folder is a plain folder of unlabelled images. An ``s3://`` URI is
    first mirrored into a local cache folder (:func:`noisyad.data.s3.sync_prefix`; a rerun
    downloads only changed objects), and that copy is read as above: the manifest's ``root``
    and sample paths are local.

    Args:
        uri: A local path (``file://`` allowed) or ``s3://bucket/prefix``.
        category: For MVTec AD and Real-IAD, keep only this category (an unknown one is an
            error listing the available ones). For a plain folder, the name given to its images.
        policy: What to do with missing files (see :class:`BadInputPolicy`).
        image_root: Real-IAD only: the ``realiad_<res>`` folder (see :func:`read_realiad`);
            ``s3://`` allowed, and required when the split file itself is on S3.
        s3: Endpoint, credentials, region and cache folder for ``s3://`` URIs; None takes them
            from the standard AWS environment variables (see :class:`~noisyad.data.s3.S3Settings`).

    Returns:
        The manifest.

    Raises:
        DataSourceError: If the path is missing, of an unsupported kind, the reader fails, or
            an S3 bucket or prefix is missing or refuses access (the message says which).
    """
    text = str(uri)
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme == "s3":
            return _open_s3(text, category, policy, image_root, s3)
        if scheme != "file":
            raise DataSourceError(f"{text}: unsupported URI scheme '{scheme}://'.")
        text = text.split("://", 1)[1]
    path = _existing(text, "Data source")

    if path.is_file():
        if path.suffix.lower() != ".json":
            raise DataSourceError(
                f"{path} is a file but not a .json split file. Expected {_LAYOUTS}."
            )
        return read_realiad(path, image_root=image_root, policy=policy, categories=category)
    if _looks_like_mvtec(path):
        return read_mvtec(path, categories=category, policy=policy)
    return read_folder(path, category=category, policy=policy)


def _open_s3(
    uri: str,
    category: str | None,
    policy: BadInputPolicy | str,
    image_root: str | Path | None,
    settings: S3Settings | None,
) -> Manifest:
    """Mirror an ``s3://`` source (and an ``s3://`` Real-IAD image root) locally, then read it."""
    from noisyad.data.s3 import sync_prefix

    is_split_file = uri.lower().endswith(".json")
    if is_split_file and image_root is None:
        # Limitation: the sibling realiad_<res> folder is not searched for on S3, since listing
        # a whole Real-IAD bucket is slow; naming the image prefix lifts the ambiguity.
        raise DataSourceError(
            f"{uri}: a Real-IAD split file on S3 needs image_root, the realiad_<res> prefix "
            f"(for example s3://bucket/realiad_1024)."
        )
    if image_root is not None and str(image_root).lower().startswith("s3://"):
        image_root = sync_prefix(str(image_root), settings)
    local = sync_prefix(uri, settings)
    logger.info("Reading %s from its local copy %s", uri, local)
    return open_source(local, category=category, policy=policy, image_root=image_root)
