"""Serving: the exported detector over the KServe v2 / Triton HTTP protocol.

* :mod:`serving.app`: the FastAPI service (``noisyad serve``): v2 health, metadata and
  inference with JSON or binary tensors, an image-upload endpoint, Prometheus metrics;
* :mod:`serving.protocol`: the v2 codec and Triton's binary tensor extension;
* :mod:`serving.batcher`: server-side dynamic batching on worker threads;
* :mod:`serving.model`: loading an ONNX export by path or ``models:/`` MLflow URI;
* :mod:`serving.triton`: the Triton model repository writer (``noisyad export --triton``);
* :mod:`serving.triton_local`: a real ``tritonserver`` (from nvidia-pytriton) for tests;
* ``serving/triton_python/``: the python-backend model, its config and a client.

Example:
    >>> from serving.model import load_model
    >>> from serving.app import create_app
    >>> app = create_app(load_model("brick.onnx"))                   # doctest: +SKIP
"""
