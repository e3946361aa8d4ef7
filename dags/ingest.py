"""ingest, an Airflow DAG: download a kaos data manifest in parallel, mapped over chunks of its lines.

Commit the manifest split into datums, e.g. `trainyard data put manifests features.mf --split line
--target-file-datums 50`, then trigger with `{"manifest": "features.mf", "repo": "features", "lines_per_datum": 50}`.
Each mapped task downloads its lines through the URL policy, checking size and sha256 and retrying transient
failures; the data commit is made only when every line has been downloaded, so a failed line commits nothing,
and the error names its line. Lines already downloaded (same line, same URL policy code) are not fetched again.
"""

from airflow.sdk import DAG, Param

from operators.datums import datum_step
from operators.pipeline import dag_defaults
from trainyard.options import REPO_PATTERN

with DAG(
    dag_id="ingest",
    description="Download a data manifest in parallel (mapped over chunks of lines) and commit it to a repo",
    doc_md=__doc__,
    schedule=None,
    tags=["trainyard", "data", "datums"],
    **dag_defaults(),
    params={
        "manifest": Param("features.mf", type="string", pattern=r"^[A-Za-z0-9._-]{1,128}$",
                          description="the manifest's file name in the manifests repo"),
        "repo": Param("features", type="string", pattern=REPO_PATTERN, description="data repo to commit the files to"),
        "lines_per_datum": Param(50, type="integer", minimum=1, description="the split size used by data put"),
    },
) as dag:
    datum_step(
        "fetch", transform="builtin:fetch-manifest", output_repo="{{ params.repo }}",
        inputs=[{"repo": "manifests", "glob": "/{{ params.manifest }}/*"}],
        env_vars={"TRAINYARD_LINES_PER_DATUM": "{{ params.lines_per_datum }}"},
    )
