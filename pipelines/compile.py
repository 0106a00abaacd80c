"""Compile the pipeline to the YAML package the Kubeflow Pipelines UI uploads, and check it.

The check is kfp's own round trip: the YAML is loaded back as a component and compiled
again, and both pipeline specs must be identical. It also reports the facts a reviewer
looks for (the ParallelFor fan-out, the collected fan-in, the parameters, the image).

Example:
    >>> facts = compile_pipeline(Path("pipeline.yaml"))                        # doctest: +SKIP
    >>> facts["parallel_for"], facts["round_trip"]                              # doctest: +SKIP
    (True, True)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml


def _tasks(spec: dict):
    """Every (component name, task name, task) of the pipeline spec, nested DAGs included."""
    for name, component in {"root": spec["root"], **spec["components"]}.items():
        for task_name, task in component.get("dag", {}).get("tasks", {}).items():
            yield name, task_name, task


def pipeline_facts(spec: dict) -> dict:
    """What the compiled pipeline contains."""
    tasks = list(_tasks(spec))
    executors = spec["deploymentSpec"]["executors"].values()
    return {
        "name": spec["pipelineInfo"]["name"],
        "parallel_for": any("parameterIterator" in task for _, _, task in tasks),
        "collected": any(
            "artifactSelectors" in value.get("taskOutputArtifact", {})
            or "artifactSelectors" in value
            for _, _, task in tasks
            for value in task.get("inputs", {}).get("artifacts", {}).values()
        )
        or any(
            "artifactSelectors" in output
            for component in spec["components"].values()
            for output in component.get("dag", {}).get("outputs", {}).get("artifacts", {}).values()
        ),
        "steps": sorted(
            {
                task["componentRef"]["name"]
                for _, _, task in tasks
                if "executorLabel" in (spec["components"].get(task["componentRef"]["name"], {}))
            }
        ),
        "parameters": sorted(spec["root"]["inputDefinitions"]["parameters"]),
        "images": sorted({e["container"]["image"] for e in executors}),
    }


def round_trip(path: Path) -> bool:
    """Load the YAML back with kfp and compile it again: True when the specs are identical."""
    from kfp import compiler, components

    loaded = components.load_component_from_file(str(path))
    with tempfile.TemporaryDirectory() as tmp:
        again = Path(tmp) / "again.yaml"
        compiler.Compiler().compile(loaded, str(again))
        return yaml.safe_load(again.read_text()) == yaml.safe_load(path.read_text())


def compile_pipeline(out: Path, image: str | None = None) -> dict:
    """Write the pipeline YAML to ``out`` (components in ``image`` when given); return facts.

    Raises:
        RuntimeError: The round trip through kfp's loader changed the pipeline.
    """
    from kfp import compiler, dsl

    import components
    from pipelines import purification_pipeline as definition

    pipeline = definition.purification_pipeline
    previous = {c: c.component_spec.implementation.container.image for c in components.ALL}
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if image:
            # The tasks copied the image when the pipeline was defined: define it again.
            components.set_base_image(image)
            pipeline = dsl.pipeline(
                name=definition.PIPELINE_NAME, description=pipeline.description
            )(pipeline.pipeline_func)
        compiler.Compiler().compile(pipeline, str(out))
    finally:
        for component, old in previous.items():
            component.component_spec.implementation.container.image = old
    facts = pipeline_facts(yaml.safe_load(out.read_text()))
    facts["round_trip"] = round_trip(out)
    if not facts["round_trip"]:
        raise RuntimeError(f"{out}: kfp's load and compile round trip changed the pipeline")
    return facts
