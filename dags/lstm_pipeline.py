"""lstm_pipeline, an Airflow DAG: the Kubeflow Pipelines LSTM example, with the learning rate set per run.

The data bundle holds a zip of `training_dataset.npy`, which the train step unpacks safely; the Keras LSTM trains
with the run's `learning_rate`, `batch_size` and `epochs`, and the model is registered with its losses and R².
Each step requests and is limited to 0.5 CPU and 4000Mi, runs without caching (a re-run retrains) and carries a pod
label with its task id, as in the original. Store credentials come from the Airflow connection or Kubernetes
Secret, never from params (the original passed access keys as pipeline parameters).

Trigger with conf, e.g. `{"learning_rate": 0.005}`, or sweep with `{"hyperparams": {"learning_rate": [0.01, 0.001]}}`.
"""

from airflow.sdk import Param

from operators.pipeline import training_pipeline

dag = training_pipeline(
    "lstm_pipeline",
    description="Kubeflow's LSTM example: unpack the dataset, train a Keras LSTM at the run's learning rate, register",
    doc_md=__doc__,
    tags=["trainyard", "training", "kubeflow"],
    source="lstm",
    data="timeseries",
    hyperparameters={
        "learning_rate": Param(0.001, type="number", exclusiveMinimum=0, maximum=1,
                               description="Adam learning rate for this run"),
        "batch_size": Param(64, type="integer", minimum=1, maximum=4096, description="training batch size"),
        "epochs": Param(15, type="integer", minimum=1, maximum=1000, description="training epochs"),
    },
    step_options={"cpu": "0.5", "memory": "4000Mi", "cpu_limit": "0.5", "memory_limit": "4000Mi",
                  "cache": False, "labels": {"trainyard.io/task-id": "{{ task.task_id }}"}},
)
