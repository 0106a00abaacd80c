"""The same model on a real Triton Inference Server: same contract, same scores.

Triton comes from the nvidia-pytriton wheel in ``.venv-triton`` (``scripts/setup-triton.sh``);
its bundled ``tritonserver`` has only the python backend, so the repository is written with
``backend="python"`` (``serving/triton_python/model.py`` runs ONNX Runtime on model.onnx).
tritonclient must get identical metadata and scores from Triton, from ``noisyad serve`` and
from the ONNX file run directly.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serving.triton import write_triton_repository
from serving.triton_local import LocalTriton, TritonUnavailable, find_triton

pytestmark = pytest.mark.slow
OUTPUTS = ("anomaly_map", "image_score", "label")


@pytest.fixture(scope="module")
def triton(onnx_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """tritonserver on the python-backend repository (max batch 8), on loopback ports."""
    try:
        install = find_triton()
    except TritonUnavailable as exc:
        pytest.skip(f"no real Triton here: {exc}")
    repo = tmp_path_factory.mktemp("triton") / "repo"
    write_triton_repository(onnx_path, repo, backend="python", max_batch_size=8)
    with LocalTriton(repo, install) as server:
        yield server


def _infer(url: str, images: np.ndarray, binary: bool = True) -> dict[str, np.ndarray]:
    client = httpclient.InferenceServerClient(url)
    try:
        tensor = httpclient.InferInput("image", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images, binary_data=binary)
        wanted = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in OUTPUTS]
        result = client.infer("brick", [tensor], outputs=wanted)
        return {name: result.as_numpy(name) for name in OUTPUTS}
    finally:
        client.close()


def test_triton_and_noisyad_serve_present_the_same_contract(triton, server) -> None:
    real = httpclient.InferenceServerClient(triton.http_url)
    ours = httpclient.InferenceServerClient(server.url)
    try:
        assert real.is_server_live() and real.is_server_ready()
        assert real.is_model_ready("brick")
        theirs, mine = real.get_model_metadata("brick"), ours.get_model_metadata("brick")
        for key in ("name", "versions", "inputs", "outputs"):
            assert theirs[key] == mine[key], key
        assert real.get_model_config("brick")["max_batch_size"] == 8
    finally:
        real.close()
        ours.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_same_scores_from_triton_noisyad_serve_and_onnx(
    triton, server, images, direct, binary: bool
) -> None:
    from_triton = _infer(triton.http_url, images, binary)
    from_serve = _infer(server.url, images, binary)

    for name in OUTPUTS:
        assert from_triton[name].shape == from_serve[name].shape
        assert from_triton[name].dtype == from_serve[name].dtype
    np.testing.assert_array_equal(from_triton["label"][:, 0], direct["label"])
    np.testing.assert_array_equal(from_serve["image_score"][:, 0], direct["image_score"])
    # Triton's venv has an older onnxruntime (numpy<2): allow float rounding differences.
    np.testing.assert_allclose(from_triton["image_score"][:, 0], direct["image_score"], rtol=1e-5)
    np.testing.assert_allclose(from_triton["anomaly_map"], direct["anomaly_map"], rtol=1e-5)


def test_triton_dynamic_batching_returns_each_request_its_rows(triton, images, direct) -> None:
    """Concurrent single-image requests may be merged by Triton; each gets its own score."""
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: _infer(triton.http_url, images[i : i + 1]), range(4)))
    scores = [r["image_score"][0, 0] for r in results]
    np.testing.assert_allclose(scores, direct["image_score"], rtol=1e-5)


def test_both_refuse_an_oversized_batch(triton, server) -> None:
    too_big = np.zeros((9, 128, 128, 3), np.uint8)
    for url in (triton.http_url, server.url):
        with pytest.raises(InferenceServerException) as caught:
            _infer(url, too_big)
        assert caught.value.status() == "400"
        assert "8" in caught.value.message()
