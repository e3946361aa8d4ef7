# Source me: `source env.sh`. Points Airflow and trainyard at this checkout (embedded default).
TRAINYARD_HOME="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"
export TRAINYARD_HOME
export AIRFLOW_HOME="${AIRFLOW_HOME:-$TRAINYARD_HOME/.airflow}"
export AIRFLOW_CONFIG="${AIRFLOW_CONFIG:-$TRAINYARD_HOME/airflow.cfg}"
if [ -d "$TRAINYARD_HOME/.venv/bin" ]; then PATH="$TRAINYARD_HOME/.venv/bin:$PATH"; export PATH; fi
