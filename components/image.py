"""The container image every component runs in (built from docker/components.Dockerfile).

Set ``NOISYAD_COMPONENT_IMAGE`` before importing the components, or pass ``--image`` to
``noisyad pipeline compile`` (see :func:`components.set_base_image`), to use another tag.
"""

import os

DEFAULT_IMAGE = "noisyad-components:0.1.0-cpu"
BASE_IMAGE = os.environ.get("NOISYAD_COMPONENT_IMAGE", DEFAULT_IMAGE)
