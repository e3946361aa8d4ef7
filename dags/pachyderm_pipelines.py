"""Pachyderm pipelines, Airflow DAGs: one DAG per spec stored with `trainyard pipeline create -f SPEC.json`.

Each stored spec (`pps/pipelines/<name>.json` in the store, read when this file is parsed; nothing is generated
into dags/) becomes the DAG `pps_<name>`: plan -> process (mapped over chunks of datums) -> collect, scheduled on
the Assets of its input repos, so a commit to any input starts it and its own output repo (named after the
pipeline) starts the pipelines that read it. See operators/pps.py and the README's "Pachyderm pipeline specs".
"""

from operators.pps import pipeline_dags

globals().update(pipeline_dags())
