#!/usr/bin/env bash
# The main job: set up, build the demo dataset (contamination 0.2), train purified
# detectors for its three categories, evaluate them and export one to ONNX.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
RUN="${1:-runs/main}"
NOISYAD=.venv/bin/noisyad
mkdir -p "$RUN"
"$NOISYAD" demo-data --out "$RUN/demo" --contamination 0.2 --seed 0 --overwrite
"$NOISYAD" train --data "$RUN/demo" --out "$RUN/models" --json "$RUN/train.json" > /dev/null
"$NOISYAD" evaluate --model "$RUN/models" --data "$RUN/demo" --json "$RUN/metrics.json" > /dev/null
"$NOISYAD" export --model "$RUN/models/brick" --out "$RUN/brick.onnx"
.venv/bin/python - "$RUN/metrics.json" <<'PY'
import json, sys
metrics = json.load(open(sys.argv[1]))
print(f"{'category':<9} {'image AUROC':>11} {'pixel AUROC':>11} {'AUPRO':>6} {'removed':>8} {'kept':>5}")
for name, m in metrics.items():
    p = m.get("purification", {})
    print(f"{name:<9} {m['image_auroc']:>11.3f} {m['pixel_auroc']:>11.3f} {m['aupro']:>6.3f} "
          f"{p.get('defects_removed', float('nan')):>8.2f} {m['n_kept']:>5}")
PY
echo "metrics: $RUN/metrics.json"
