#!/usr/bin/env bash
# Create the secrets the dev overlay references, with random values, in namespace noisyad.
# Idempotent: existing secrets are kept (delete them first to rotate). Dev only: the S3
# client credentials are MinIO's root credentials; production uses a scoped MinIO user.
set -euo pipefail
NAMESPACE="${NAMESPACE:-noisyad}"
random() { LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c "${1:-32}"; }

kubectl get namespace "$NAMESPACE" >/dev/null 2>&1 || kubectl create namespace "$NAMESPACE"
create() {
    local name="$1"; shift
    if kubectl -n "$NAMESPACE" get secret "$name" >/dev/null 2>&1; then
        echo "secret/$name exists, kept"
    else
        kubectl -n "$NAMESPACE" create secret generic "$name" "$@"
    fi
}
MINIO_USER="noisyad-$(random 8)"
MINIO_PASSWORD="$(random 32)"
create noisyad-minio \
    --from-literal=MINIO_ROOT_USER="$MINIO_USER" --from-literal=MINIO_ROOT_PASSWORD="$MINIO_PASSWORD"
if ! kubectl -n "$NAMESPACE" get secret noisyad-s3 >/dev/null 2>&1; then
    MINIO_USER="$(kubectl -n "$NAMESPACE" get secret noisyad-minio -o jsonpath='{.data.MINIO_ROOT_USER}' | base64 -d)"
    MINIO_PASSWORD="$(kubectl -n "$NAMESPACE" get secret noisyad-minio -o jsonpath='{.data.MINIO_ROOT_PASSWORD}' | base64 -d)"
fi
create noisyad-s3 \
    --from-literal=AWS_ACCESS_KEY_ID="$MINIO_USER" --from-literal=AWS_SECRET_ACCESS_KEY="$MINIO_PASSWORD"
create noisyad-postgres \
    --from-literal=POSTGRES_USER=mlflow --from-literal=POSTGRES_PASSWORD="$(random 32)"
