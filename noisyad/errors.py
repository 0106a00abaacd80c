"""Errors a user can fix, shared by the library and the command line.

They live in a module with no heavy imports so that the command line can name them without
loading PyTorch.
"""


class BackboneWeightsError(RuntimeError):
    """The requested backbone weights cannot be found or do not match."""


class PurificationError(ValueError):
    """Purification settings that cannot work on this training set."""
