# syntax=docker/dockerfile:1
# The noisyad inference server: KServe v2 protocol over HTTP, Prometheus metrics on /metrics.
#
# Build from the repository root:
#   docker build -f docker/serving.Dockerfile -t noisyad-serving:0.1.0-cpu .
#   docker build -f docker/serving.Dockerfile --build-arg VARIANT=gpu -t noisyad-serving:0.1.0-gpu .
# Run:
#   docker run -p 8080:8080 -e MLFLOW_TRACKING_URI=http://mlflow:5000 noisyad-serving:0.1.0-cpu \
#       --model models:/noisyad-brick@champion --host 0.0.0.0 --port 8080
#
# The entry point is `python -m serving` (the `noisyad serve` command without the training
# stack): no PyTorch, only ONNX Runtime. VARIANT=gpu installs onnxruntime-gpu with its CUDA and
# cuDNN libraries as pip packages; the node's driver comes from the NVIDIA container runtime.
# Start it with --device cuda (falls back to the CPU when no GPU is visible).

# Base: the python:3.11.14-slim-bookworm multi-architecture index, pinned by digest.
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS build
ARG VARIANT=cpu
ARG ONNXRUNTIME_VERSION=1.31.1
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY docker/serving-requirements.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && if [ "$VARIANT" = "gpu" ]; then \
        pip install --no-cache-dir "onnxruntime-gpu[cuda,cudnn]==${ONNXRUNTIME_VERSION}"; \
    else \
        pip install --no-cache-dir "onnxruntime==${ONNXRUNTIME_VERSION}"; \
    fi

# The project's code only: its other dependencies (torch, kfp, the training stack) stay out.
COPY . /src
RUN pip install --no-cache-dir --no-deps /src

FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="noisyad-serving" \
      org.opencontainers.image.description="noisyad KServe v2 inference server (${VARIANT})" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 noisyad \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin noisyad
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080
# Ready means a model is loaded; Kubernetes uses its own probes (k8s/), this one is for docker.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=4)"]
ENTRYPOINT ["python", "-m", "serving"]
CMD ["--model", "/models/model", "--host", "0.0.0.0", "--port", "8080"]
