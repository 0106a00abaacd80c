"""Score image files with the noisyad model over HTTP, on Triton or on ``noisyad serve``.

The client speaks the KServe v2 protocol through ``tritonclient.http`` with binary tensors,
so the same call works against both servers. Images are decoded and resized with noisyad's
own ``read_image``, exactly as in training, before they are sent.

Usage:
    python serving/triton_python/client.py --url 127.0.0.1:8000 --model brick a.png b.png
"""

import argparse

import numpy as np
import tritonclient.http as httpclient

from noisyad.data import read_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+")
    parser.add_argument("--url", default="127.0.0.1:8000")
    parser.add_argument("--model", default="brick")
    args = parser.parse_args()

    client = httpclient.InferenceServerClient(args.url)
    # The model metadata says which size the model takes: [-1, S, S, 3].
    metadata = client.get_model_metadata(args.model)
    size = metadata["inputs"][0]["shape"][1]
    batch = np.stack([read_image(path, size) for path in args.images])

    image = httpclient.InferInput("image", list(batch.shape), "UINT8")
    image.set_data_from_numpy(batch)  # binary tensor extension (the default)
    wanted = [httpclient.InferRequestedOutput(n) for n in ("image_score", "label")]
    result = client.infer(args.model, [image], outputs=wanted)

    # Per-image outputs come back as (batch, 1), as declared in config.pbtxt.
    scores = result.as_numpy("image_score")[:, 0]
    labels = result.as_numpy("label")[:, 0]
    for path, score, label in zip(args.images, scores, labels, strict=True):
        print(f"{path}\t{score:.4f}\t{'anomalous' if label else 'normal'}")


if __name__ == "__main__":
    main()
