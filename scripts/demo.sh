#!/usr/bin/env bash
# Train the mnist template end to end with `airflow dags test train_pipeline` (local runner, file:// store).
set -euo pipefail
cd "$(dirname "$0")/.."
source env.sh
echo "== uploading the mnist source and data bundles to $(trainyard config store)"
trainyard deploy -s templates/mnist/model-train -d templates/mnist/data --upload-only
echo "== airflow dags test train_pipeline"
airflow dags test train_pipeline -c '{"source": "mnist", "data": "features"}' > "$AIRFLOW_HOME/demo-run.log" 2>&1 || {
  tail -50 "$AIRFLOW_HOME/demo-run.log"; echo "demo run failed; full log: $AIRFLOW_HOME/demo-run.log" >&2; exit 1; }
grep -E '\] (training model|metrics: \{"|model .* registered)' "$AIRFLOW_HOME/demo-run.log" \
  | sed -E 's/^.*\] (training model|metrics: |model )/\1/; s/ \[airflow\.task.*$//' || true
echo "== result"
trainyard list --limit 1
trainyard info --model "$(trainyard list --limit 1 --json | python -c 'import json,sys; print(json.load(sys.stdin)[0]["model_id"])')"
