"""train_pipeline: source bundle + data bundle (+ hyperparameters) = trained, registered model."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from operators import ResolveInputsOperator, TrainyardStepOperator, build_step
from operators.train import train_step
from trainyard.resources import CPU_PATTERN, MEMORY_PATTERN

REPO = r"^[a-z0-9][a-z0-9._-]{0,62}$"
REF = r"^(latest|[a-z0-9][a-z0-9._-]{0,62}|[0-9a-f]{5,64})$"
RESOLVED = "ti.xcom_pull(task_ids='resolve')"

with DAG(
    dag_id="train_pipeline",
    description="Resolve inputs, build the training environment, train, register the model",
    doc_md=__doc__ + """

Trigger with conf, e.g. `{"source": "mnist", "data": "features", "hyperparams": {"C": 10}}`.
Every input is a Param, so the web UI's trigger form works. Conf never chooses the image, namespace or volumes,
and is passed to steps as separate argv items, never through a shell.
""",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["trainyard", "training"],
    default_args={"retries": 1, "retry_delay": pendulum.duration(seconds=10)},
    params={
        "source": Param("mnist", type="string", pattern=REPO, description="source repo (the bundle's name)"),
        "source_ref": Param("latest", type="string", pattern=REF, description="'latest' or a commit short id"),
        "data": Param("features", type="string", pattern=REPO, description="data repo"),
        "data_ref": Param("latest", type="string", pattern=REF, description="'latest' or a commit short id"),
        "hyperparams": Param({}, type="object", description="hyperparameters merged over params.json"),
        "cpu": Param("1", type="string", pattern=CPU_PATTERN, description="CPU cores for training (0.5, 2, 500m)"),
        "memory": Param("2Gi", type="string", pattern=MEMORY_PATTERN, description="memory, e.g. 512Mi, 2Gi, 1G"),
        "gpu": Param(0, type="integer", minimum=0, maximum=64, description="GPUs for training"),
    },
) as dag:
    resolve = ResolveInputsOperator(
        task_id="resolve",
        source="{{ params.source }}", source_ref="{{ params.source_ref }}",
        data="{{ params.data }}", data_ref="{{ params.data_ref }}",
    )
    build = build_step(task_id="build", source=f"{{{{ {RESOLVED}['source'] }}}}",
                       image=f"{{{{ {RESOLVED}['image'] }}}}")
    train = train_step(
        task_id="train",
        source=f"{{{{ {RESOLVED}['source'] }}}}", data=f"{{{{ {RESOLVED}['data'] }}}}",
        image=f"{{{{ {RESOLVED}['image'] }}}}",
        hyperparams="{{ params.hyperparams | tojson }}",
        cpu="{{ params.cpu }}", memory="{{ params.memory }}", gpu="{{ params.gpu }}",
    )
    register = TrainyardStepOperator(
        task_id="register", step="register", cpu="0.25", memory="256Mi",
        arguments=["--train-result", "{{ ti.xcom_pull(task_ids='train') | tojson }}", "--pipeline", "{{ dag.dag_id }}"],
    )
    resolve >> build >> train >> register
