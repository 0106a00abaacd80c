"""Kubeflow components, one per pipeline step; each is a thin shell around noisyad.stages.

The work happens in the library (:mod:`noisyad.stages`, :mod:`noisyad.tracking`); a component
only maps parameters and artifact paths onto it, logs to MLflow and fills the typed outputs
the Kubeflow UI renders (Metrics, ClassificationMetrics, HTML, Markdown). Components import
the library inside their function body and run in the project's image (``components.image``).

Example:
    >>> from components import ingest
    >>> ingest.component_spec.name
    'ingest'
"""

from components.aggregate_filter import aggregate_filter
from components.evaluate import evaluate
from components.export_onnx import export_onnx
from components.image import BASE_IMAGE, DEFAULT_IMAGE
from components.ingest import ingest
from components.partition import partition
from components.train_final import train_final
from components.train_submodel import train_submodel

ALL = (ingest, partition, train_submodel, aggregate_filter, train_final, evaluate, export_onnx)


def set_base_image(image: str) -> None:
    """Run every component in ``image`` (call before compiling the pipeline)."""
    for component in ALL:
        component.component_spec.implementation.container.image = image


__all__ = [
    "ALL",
    "BASE_IMAGE",
    "DEFAULT_IMAGE",
    "aggregate_filter",
    "evaluate",
    "export_onnx",
    "ingest",
    "partition",
    "set_base_image",
    "train_final",
    "train_submodel",
]
