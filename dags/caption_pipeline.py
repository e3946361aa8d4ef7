"""caption_pipeline, an Airflow DAG: Pachyderm's image-captioning tutorial on datums, then training and registry.

rawdata (a TSV of `caption<TAB>url`, put with `trainyard data put rawdata captions.tsv --split line
--target-file-datums N`) -> images (each datum's URLs downloaded through the URL policy) -> features (per datum,
no pretrained weights) -> consolidate (captions joined with features by datum) -> train the Keras captioning
model on the consolidated repo -> register it. Every datum step skips datums it has already processed, so a new
rawdata commit that appends lines processes only the new datums. The DAG is scheduled on the rawdata repo's Asset:
a rawdata commit announced to Airflow (`[trainyard] announce_commits`) queues a run that processes that commit;
no worker is used while nothing changes. A new model triggers nothing.
"""

from operators.datums import datum_step, repo_asset
from operators.pipeline import training_dag, training_tasks

# A run started by a rawdata commit (an Asset event) processes exactly that commit; otherwise the latest one.
RAW_COMMIT = ("{{ (triggering_asset_events.values() | first | last).extra.commit "
              "if triggering_asset_events else 'latest' }}")
RAW = {"repo": "rawdata", "glob": "/captions.tsv/*", "ref": RAW_COMMIT}
CODE = {"code_repo": "captioning", "code_paths": ["steps/common"]}

dag = training_dag(
    "caption_pipeline",
    description="Pachyderm's captioning tutorial: rawdata -> images -> features -> consolidate -> model",
    doc_md=__doc__,
    tags=["trainyard", "training", "datums"],
    source="captioning",
    data="consolidated",
    metric="exact_match:max",
    schedule=[repo_asset("rawdata")],
)
with dag:
    _, _, images = datum_step("images", inputs=[RAW], transform="builtin:fetch-urls", output_repo="images")
    features_plan, _, features = datum_step("features", inputs=[{"repo": "images", "glob": "/*"}],
                                            transform="steps/features/transform", output_repo="features", **CODE)
    consolidate_plan, _, consolidate = datum_step(
        "consolidate", combine="inner", transform="steps/consolidate/transform", output_repo="consolidated",
        nest_outputs=True, **CODE,
        inputs=[{"name": "captions", **RAW, "join_on": "/captions.tsv/(*)"},
                {"name": "features", "repo": "features", "glob": "/*", "join_on": "/(*)/"}])
    resolve, _ = training_tasks()
    images >> features_plan
    features >> consolidate_plan
    consolidate >> resolve
