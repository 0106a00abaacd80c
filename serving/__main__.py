"""``python -m serving --model ...``: the ``noisyad serve`` command without the training stack.

The main ``noisyad`` command line imports the training code (and with it PyTorch); a serving
container only needs ONNX Runtime, so its entry point can be this module instead.
"""

import typer

from serving.cli import serve

if __name__ == "__main__":
    typer.run(serve)
