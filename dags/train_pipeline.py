"""train_pipeline: source bundle + data bundle (+ a hyperparameter grid) = trained, registered models."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from operators import ResolveInputsOperator, TrainyardStepOperator, build_step
from operators.resolve import conf_json
from operators.train import train_step
from trainyard.metrics import SPEC_PATTERN
from trainyard.resources import CPU_PATTERN, MEMORY_PATTERN

REPO = r"^[a-z0-9][a-z0-9._-]{0,62}$"
REF = r"^(latest|[a-z0-9][a-z0-9._-]{0,62}|[0-9a-f]{5,64})$"
PLAN = "ti.xcom_pull(task_ids='resolve', key='plan')"
SCALAR = {"type": ["string", "number", "integer", "boolean", "null"]}

with DAG(
    dag_id="train_pipeline",
    description="Resolve inputs and plan the sweep, build the environment, train each combination, register",
    doc_md=__doc__ + """

Trigger with conf, e.g. `{"source": "mnist", "data": "features", "hyperparams": {"kernel": ["linear", "poly"]}}`.
`hyperparams` is a grid: every value is a list, and training is mapped over its cartesian product (one task per
combination, labelled like `kernel=poly`). Models already trained from the same source, data and params are cache
hits and are not trained again unless `no_cache` is set. `cpu`, `memory`, `gpu`, `timeout` and `metric` left empty
use what this pipeline remembered from its last run for the same source, then the `[trainyard]` defaults.
Every input is a Param, so the web UI's trigger form works. Conf never chooses the image, namespace or volumes,
and reaches steps as separate argv items, never through a shell or a template.
""",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["trainyard", "training"],
    default_args={"retries": 1, "retry_delay": pendulum.duration(seconds=5)},
    params={
        "source": Param("mnist", type="string", pattern=REPO, description="source repo (the bundle's name)"),
        "source_ref": Param("latest", type="string", pattern=REF, description="'latest' or a commit short id"),
        "data": Param("features", type="string", pattern=REPO, description="data repo"),
        "data_ref": Param("latest", type="string", pattern=REF, description="'latest' or a commit short id"),
        "hyperparams": Param({}, type="object", additionalProperties={"type": "array", "minItems": 1, "items": SCALAR},
                             description="grid: each hyperparameter is a list of values, merged over params.json"),
        "metric": Param(None, type=["null", "string"], pattern=SPEC_PATTERN,
                        description="metric that picks the best model, e.g. accuracy_test:max or loss:min"),
        "cpu": Param(None, type=["null", "string"], pattern=CPU_PATTERN,
                     description="CPU cores per training task (0.5, 2, 500m); empty: remembered"),
        "memory": Param(None, type=["null", "string"], pattern=MEMORY_PATTERN,
                        description="memory per training task (512Mi, 2Gi, 1G); empty: remembered"),
        "gpu": Param(None, type=["null", "integer"], minimum=0, maximum=64,
                     description="GPUs per training task; empty: remembered"),
        "timeout": Param(None, type=["null", "integer"], minimum=1,
                         description="seconds a training task may run; empty: remembered or none"),
        "no_cache": Param(False, type="boolean", description="train again even if the model already exists"),
        "major": Param(False, type="boolean", description="register as a new major version (2.0) not 1.x"),
        "save_training_data": Param(False, type="boolean",
                                    description="record the exact input commits with the run (no copy)"),
    },
) as dag:
    resolve = ResolveInputsOperator(
        task_id="resolve",
        source="{{ params.source }}", source_ref="{{ params.source_ref }}",
        data="{{ params.data }}", data_ref="{{ params.data_ref }}", options=conf_json(),
    )
    build = build_step(task_id="build", source=f"{{{{ {PLAN}['source'] }}}}", image=f"{{{{ {PLAN}['image'] }}}}",
                       skip_reason=f"{{{{ '' if {PLAN}['to_train'] else 'every model is cached: nothing to build' }}}}")
    train = train_step(
        task_id="train",
        source=f"{{{{ {PLAN}['source'] }}}}", data=f"{{{{ {PLAN}['data'] }}}}", image=f"{{{{ {PLAN}['image'] }}}}",
        cpu=f"{{{{ {PLAN}['resources']['cpu'] }}}}", memory=f"{{{{ {PLAN}['resources']['memory'] }}}}",
        gpu=f"{{{{ {PLAN}['resources']['gpu'] }}}}", timeout=f"{{{{ {PLAN}['timeout'] or '' }}}}",
        combinations=resolve.output,
    )
    # all_done: one failed combination must not stop the others from being registered and reported.
    register = TrainyardStepOperator(task_id="register", step="register", cpu="0.25", memory="256Mi",
                                     trigger_rule="all_done", arguments=["--pipeline", "{{ dag.dag_id }}"])
    resolve >> build >> train >> register
