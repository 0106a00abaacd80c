"""Component partition: split the training images into K disjoint seeded subsets."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def partition(
    dataset: Input[Dataset],
    subsets: int,
    keep_fraction: str,
    seed: int,
    tracking_uri: str,
    assignment: Output[Artifact],
) -> list[int]:
    """Write the subset id of every training image; return ``[0, ..., K-1]`` to fan out over.

    K and the keep fraction are checked against the training set here, before any fit.
    """
    from noisyad import stages, tracking

    stages.log_to_stderr()
    run_id = dataset.metadata["mlflow_run_id"]
    with tracking.step(tracking_uri, run_id, "partition") as log:
        ids = stages.partition_step(dataset.path, subsets, keep_fraction, seed, assignment.path)
        log.log_params({"subsets": subsets, "keep_fraction": keep_fraction, "seed": seed})
    assignment.metadata["subsets"] = subsets
    return ids
