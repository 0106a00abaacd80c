"""Data: sources, manifests and image decoding.

Example:
    >>> from noisyad.data import open_source, load_images
    >>> manifest = open_source("/data/parts")
    >>> train = load_images(manifest.select(split="train"), size=128, policy="skip")
"""

from noisyad.data.images import (
    BadInputPolicy,
    ImageLoadError,
    LoadedImages,
    load_images,
    read_image,
    read_mask,
)
from noisyad.data.manifest import Manifest, Sample
from noisyad.data.sources import (
    DataSourceError,
    open_source,
    read_folder,
    read_mvtec,
    read_realiad,
)

__all__ = [
    "BadInputPolicy",
    "DataSourceError",
    "ImageLoadError",
    "LoadedImages",
    "Manifest",
    "Sample",
    "load_images",
    "open_source",
    "read_folder",
    "read_image",
    "read_mask",
    "read_mvtec",
    "read_realiad",
]
