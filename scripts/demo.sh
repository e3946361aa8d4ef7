#!/usr/bin/env bash
# Train the mnist template end to end with `airflow dags test train_pipeline` (local runner, file:// store).
set -euo pipefail
cd "$(dirname "$0")/.."
source env.sh
echo "== uploading the mnist source and data bundles to $(trainyard config store)"
trainyard deploy -s templates/mnist/model-train -d templates/mnist/data --upload-only
echo "== airflow dags test train_pipeline (a 2-combination sweep over the SVC kernel)"
conf='{"source": "mnist", "data": "features", "hyperparams": {"kernel": ["rbf", "poly"]}, "metric": "accuracy_test"}'
airflow dags test train_pipeline -c "$conf" > "$AIRFLOW_HOME/demo-run.log" 2>&1 || {
  tail -50 "$AIRFLOW_HOME/demo-run.log"; echo "demo run failed; full log: $AIRFLOW_HOME/demo-run.log" >&2; exit 1; }
grep -E '\] (training model|metrics: \{"|model .* registered|cache hit|registry )' "$AIRFLOW_HOME/demo-run.log" \
  | sed -E 's/^.*\] (training model|metrics: |model |cache hit|registry )/\1/; s/ \[airflow\.task.*$//' || true
echo "== result"
trainyard list --limit 3
trainyard info -i 0
trainyard models mnist
best=$(trainyard list --limit 1 --json | python -c 'import json,sys; print(json.load(sys.stdin)[0]["run_summary"]["outputs"]["best"]["model_id"])')
trainyard info --model "$best"
