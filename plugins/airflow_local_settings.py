"""Airflow local settings for trainyard: preload the pod operator where LocalExecutor forks task processes from."""

from __future__ import annotations

import sys

# LocalExecutor forks every task process from the scheduler. Importing the Kubernetes client and the pod operator
# there once (about 0.5 s) means each mapped train task inherits them instead of importing them again while it
# parses the DAG. Other processes (CLI, api-server, dag-processor, tests) do not pay for it.
if len(sys.argv) > 1 and sys.argv[1] == "scheduler":
    import airflow.providers.cncf.kubernetes.operators.pod  # noqa: F401
