#!/usr/bin/env bash
# The main job: set up, then run the Kubeflow pipeline on this machine (kfp.local) on the demo
# data (real textures, contamination 0.2), one pipeline run per category, tracked in MLflow
# (./mlflow.db; browse with `mlflow ui`), each ONNX model registered; then compile the same
# pipeline to the YAML package a Kubeflow cluster runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT="${1:-runs/pipeline}"
.venv/bin/noisyad pipeline run --out "$OUT" --json "$OUT/results.json"
.venv/bin/noisyad pipeline compile --out "$OUT/pipeline.yaml" > "$OUT/pipeline-facts.json"
echo "Kubeflow package: $OUT/pipeline.yaml ($(.venv/bin/python -c "import json,sys; f=json.load(open(sys.argv[1])); print('ParallelFor' if f['parallel_for'] else 'no ParallelFor', '+ round trip ok' if f['round_trip'] else '')" "$OUT/pipeline-facts.json"))"
