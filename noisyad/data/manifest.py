"""The manifest: one validated list of images that every data source produces.

A manifest says, for each image, where it lives, which split it belongs to, whether it is
known to be normal or anomalous, where its pixel mask is, and which category it shows.
Everything downstream (partition, training, evaluation) reads manifests, never folders.

Example:
    >>> m = Manifest(root="/data", source="folder",
    ...              samples=[Sample(path="/data/a.png", split="train", category="parts")])
    >>> len(m.select(split="train"))
    1
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

Split = Literal["train", "test"]

NORMAL = 0
ANOMALOUS = 1


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    Attributes:
        path: Absolute path (or URI) of the image file.
        split: ``"train"`` or ``"test"``.
        category: Product or texture category the image shows.
        label: ``0`` normal, ``1`` anomalous, ``None`` unknown (unlabelled training data).
        mask_path: Pixel mask of the defect (white = defect), when known.
        defect_type: Name of the defect class for anomalous images, when known.
    """

    path: str
    split: Split
    category: str
    label: int | None = None
    mask_path: str | None = None
    defect_type: str | None = None


@dataclass
class Manifest:
    """An ordered list of samples plus where they came from.

    Attributes:
        root: The dataset root the samples were read from.
        source: Which reader produced it (``"mvtec"``, ``"realiad"``, ``"folder"``, ...).
        samples: The images, in a stable order.
        skipped: Files that were found but left out, each with the reason (never silent).
    """

    root: str
    source: str
    samples: list[Sample] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def select(self, split: Split | None = None, category: str | None = None) -> list[Sample]:
        """Return the samples of one split and/or category, in manifest order."""
        return [
            s
            for s in self.samples
            if (split is None or s.split == split) and (category is None or s.category == category)
        ]

    def categories(self) -> list[str]:
        """Return the sorted category names present in the manifest."""
        return sorted({s.category for s in self.samples})

    def subset(self, samples: Iterable[Sample]) -> Manifest:
        """Return a manifest with the same origin holding only ``samples``."""
        return Manifest(root=self.root, source=self.source, samples=list(samples))

    def to_dict(self) -> dict:
        """Return a JSON-ready dict."""
        return {
            "root": self.root,
            "source": self.source,
            "samples": [asdict(s) for s in self.samples],
            "skipped": list(self.skipped),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        """Inverse of :meth:`to_dict`."""
        return cls(
            root=data["root"],
            source=data["source"],
            samples=[Sample(**s) for s in data["samples"]],
            skipped=list(data.get("skipped", [])),
        )

    def save(self, path: str | Path) -> None:
        """Write the manifest as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read a manifest written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))
