"""train_pipeline, an Airflow DAG: source bundle + data bundle (+ a hyperparameter grid) = trained, registered models.

Trigger with conf, e.g. `{"source": "mnist", "data": "features", "hyperparams": {"kernel": ["linear", "poly"]}}`,
or let it retrain on a cron schedule from `[trainyard] retrain_schedule`.
"""

from operators.pipeline import training_pipeline

dag = training_pipeline(
    "train_pipeline",
    description="Resolve inputs and plan the sweep, build the environment, train each combination, register",
    doc_md=__doc__,
    tags=["trainyard", "training"],
    scheduled_retraining=True,
)
