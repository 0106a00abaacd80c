# syntax=docker/dockerfile:1
# MLflow tracking server with the PostgreSQL driver and boto3 (S3 artifact store), for k8s/.
#
# Build from the repository root:
#   docker build -f docker/mlflow.Dockerfile -t noisyad-mlflow:3.17.2 .
# The version matches the MLflow client the project installs, so that the registry's schema
# migrations are the ones the client expects.

# Base: the python:3.11.14-slim-bookworm multi-architecture index, pinned by digest.
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS build
ARG MLFLOW_VERSION=3.17.2
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir "mlflow==${MLFLOW_VERSION}" psycopg2-binary==2.9.13 boto3==1.44.8

FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
LABEL org.opencontainers.image.title="noisyad-mlflow" \
      org.opencontainers.image.description="MLflow tracking server (PostgreSQL store, S3 artifacts)"
RUN groupadd --gid 10001 mlflow \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin mlflow
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
WORKDIR /tmp
USER 10001:10001
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
ENTRYPOINT ["mlflow", "server"]
CMD ["--host", "0.0.0.0", "--port", "5000"]
