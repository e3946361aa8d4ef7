"""predict, an Airflow DAG: caption new images with a registered model (Pachyderm's predict, a cross).

Images committed to `inpredict` (`trainyard data put inpredict image.png`) are crossed with the chosen version
of the `captioning` model (default: latest), which is first published to the repo `captioning-model`. Each
pairing writes `<image>.txt` into `predictions`. A pairing already processed is skipped, so a new image costs
one prediction. `trainyard info --file predictions:image.png.txt` shows the model that produced it.
"""

from airflow.sdk import DAG, Param

from operators.datums import datum_step
from operators.models import PublishModelOperator
from operators.pipeline import dag_defaults

with DAG(
    dag_id="predict",
    description="Cross new images with a registered captioning model; one caption file per image",
    doc_md=__doc__,
    schedule=None,
    tags=["trainyard", "predict", "datums"],
    **dag_defaults(),
    params={"model": Param("latest", type="string", pattern=r"^(latest|best|[0-9]+\.[0-9]+)$",
                           description="registry version of the captioning model: latest, best or e.g. 1.2")},
) as dag:
    model = PublishModelOperator(task_id="model", name="captioning", version="{{ params.model }}",
                                 repo="captioning-model")
    predict_plan, _, _ = datum_step(
        "predict", combine="cross", code_repo="captioning", transform="steps/predict/transform",
        code_paths=["steps/common"], output_repo="predictions",
        inputs=[{"name": "images", "repo": "inpredict", "glob": "/*"},
                {"name": "model", "repo": "captioning-model", "glob": "/"}])
    model >> predict_plan
