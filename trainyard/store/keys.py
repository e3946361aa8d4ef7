"""The store's key layout: the one module that builds and parses the keys every record and blob lives under.

Everything above the store asks here for a key (or a prefix to list) and never writes a path of its own, so the
layout can be read, changed and migrated in one place. Keys are '/'-separated and relative to the store's root.

    blobs/sha256/<2>/<sha256>                              content-addressed bytes
    blobs/quarantine/<2>/<sha256>                          a blob's bytes that did not match their sha256
    blobs/quarantine/<2>/<sha256>.missing                  a referenced blob found missing (empty marker)
    blobs/packs/<2>/<sha256>                               many small blobs in one object (datums of a put)
    trees/<2>/<sha256>.json                                a manifest's tree node (content-addressed, shared)
    repos/<repo>/commits/<id>.json                         immutable commits (their manifest is a tree)
    repos/<repo>/branches/<branch>.json                    a branch: head plus its newest log entries
    repos/<repo>/history/<branch>/<sha256>.json            older log entries of a branch, a chain of segments
    runs/<pipeline>/<run>/plan.json                        the sweep a run trains (resolve step)
    runs/<pipeline>/<run>/trained/<model id>.json          one combination's outcome (train step)
    runs/<pipeline>/<run>/failed/<model id>.json           one combination's failure
    runs/<pipeline>/<run>/waiting/<task>/<map index>.json  why a step's pod waits for a node
    runs/<pipeline>/<run>/_results.json                    the run record (AI Center's shape)
    logs/<pipeline>/<run>/<task>/<map index>/<try>.log     step logs
    models/<src>_<data>/<params>.json                      model records with their lineage
    registry/<name>.json                                   a model's registry versions and aliases
    pipelines/<pipeline>/<name>/settings.json              settings a pipeline remembers per source repo
    datums/<pipeline>/<step>/batches/<id>.json             the records of the datums one task processed
    datums/<pipeline>/<step>/keys/<id>.json                that batch's datum keys, published after it
    datums/<pipeline>/<step>/index/<gen>-<id>.json         every batch's keys, compacted by collect
    datums/<pipeline>/<step>/<key>.json                    a processed datum's record (before batches)
    provenance/<repo>/<commit>.json                        which datum made each file of a datum step's commit
    pps/pipelines/<name>.json                              a created Pachyderm pipeline
    pps/jobs/<name>/<job>.json, pps/state/<name>.json      its jobs, and the last one finished
    pps/stats/<name>/<job>/<datum>.json                    per-datum stats (enable_stats)
"""

from __future__ import annotations

BLOBS = "blobs/sha256/"
# Beside the blobs, not under them: a listing of BLOBS (what is stored) never counts a quarantined copy.
QUARANTINE = "blobs/quarantine/"
PACKS = "blobs/packs/"
TREES = "trees/"
REPOS = "repos/"
RUNS = "runs/"
LOGS = "logs/"
MODELS = "models/"
REGISTRY = "registry/"
PIPELINE_SETTINGS = "pipelines/"
DATUMS = "datums/"
PROVENANCE = "provenance/"
PPS_PIPELINES = "pps/pipelines/"
PPS_JOBS = "pps/jobs/"
PPS_STATE = "pps/state/"
PPS_STATS = "pps/stats/"

# Every top-level prefix the layout uses; tests/test_layering.py keeps them out of every other module.
PREFIXES = (BLOBS.split("/")[0] + "/", TREES, REPOS, RUNS, LOGS, MODELS, REGISTRY, PIPELINE_SETTINGS, DATUMS,
            PROVENANCE, "pps/")

JSON = ".json"
MISSING = ".missing"
LOG = ".log"
RESULTS = "_results.json"


def _stem(key: str, prefix: str, suffix: str = JSON) -> str:
    """The part of `key` between `prefix` and `suffix`."""
    return key[len(prefix):len(key) - len(suffix)]


# -- blobs ---------------------------------------------------------------------------------------------------------
def blob(sha: str) -> str:
    return f"{BLOBS}{sha[:2]}/{sha}"


def blob_sha(key: str) -> str:
    return key.rsplit("/", 1)[1]


def quarantine(sha: str) -> str:
    """Where a corrupt blob's bytes are kept once its blob key is deleted (so an upload writes it again)."""
    return f"{QUARANTINE}{sha[:2]}/{sha}"


def quarantine_missing(sha: str) -> str:
    """An empty marker: a blob something references was found missing, so no manifest counts as proof of it."""
    return quarantine(sha) + MISSING


def quarantined_sha(key: str) -> str:
    """The sha256 of a key made by quarantine() or quarantine_missing()."""
    return blob_sha(key).removesuffix(MISSING)


def pack(sha: str) -> str:
    """An object that concatenates many small blobs; a manifest entry names it with the blob's offset."""
    return f"{PACKS}{sha[:2]}/{sha}"


def tree(node_id: str) -> str:
    return f"{TREES}{node_id[:2]}/{node_id}{JSON}"


# -- repos, commits and branches -----------------------------------------------------------------------------------
def commit(repo: str, commit_id: str) -> str:
    return f"{REPOS}{repo}/commits/{commit_id}{JSON}"


def commit_prefix(repo: str, id_prefix: str = "") -> str:
    """Lists the commits of `repo` whose id starts with `id_prefix`."""
    return f"{REPOS}{repo}/commits/{id_prefix}"


def commit_id(key: str) -> str:
    return key.rsplit("/", 1)[1].removesuffix(JSON)


def branch(repo: str, name: str) -> str:
    return f"{REPOS}{repo}/branches/{name}{JSON}"


def history(repo: str, branch: str, segment: str) -> str:
    """A sealed segment of a branch's log: older entries plus the segment before it."""
    return f"{history_prefix(repo)}{branch}/{segment}{JSON}"


def history_prefix(repo: str) -> str:
    return f"{REPOS}{repo}/history/"


def repo_of(key: str) -> str | None:
    """The repo a key under repos/ belongs to (None for anything else, or a stray non-JSON file)."""
    if not key.startswith(REPOS) or not key.endswith(JSON):
        return None
    return key[len(REPOS):].split("/", 1)[0]


# -- runs ----------------------------------------------------------------------------------------------------------
def run_prefix(pipeline: str, run_id: str | None = None) -> str:
    """Every run of `pipeline`, or one run's records."""
    return f"{RUNS}{pipeline}/" + (f"{run_id}/" if run_id is not None else "")


def _file_name(model_id: str) -> str:
    return model_id.replace(":", "-")


def run_plan(pipeline: str, run_id: str) -> str:
    return run_prefix(pipeline, run_id) + "plan.json"


def run_trained(pipeline: str, run_id: str, model_id: str) -> str:
    return run_prefix(pipeline, run_id) + f"trained/{_file_name(model_id)}{JSON}"


def run_failed(pipeline: str, run_id: str, model_id: str) -> str:
    return run_prefix(pipeline, run_id) + f"failed/{_file_name(model_id)}{JSON}"


def run_results(pipeline: str, run_id: str) -> str:
    return run_prefix(pipeline, run_id) + RESULTS


def is_run_results(key: str) -> bool:
    return key.endswith("/" + RESULTS)


def run_waiting(pipeline: str, run_id: str, task_id: str, map_index: int | str) -> str:
    return run_waiting_prefix(pipeline, run_id) + f"{task_id}/{map_index}{JSON}"


def run_waiting_prefix(pipeline: str, run_id: str) -> str:
    return run_prefix(pipeline, run_id) + "waiting/"


# -- step logs -----------------------------------------------------------------------------------------------------
def log(pipeline: str, run_id: str, task_id: str, map_index: int | str, try_number: int | str) -> str:
    """One object per task, map index and try, written while the step runs and kept after."""
    return log_prefix(pipeline, run_id) + f"{task_id}/{map_index}/{try_number}{LOG}"


def log_prefix(pipeline: str, run_id: str) -> str:
    return f"{LOGS}{pipeline}/{run_id}/"


def parse_log(key: str, pipeline: str, run_id: str) -> tuple[str, str, int]:
    """(task id, map index, try number) of a key under log_prefix(pipeline, run_id)."""
    task, index, try_file = key[len(log_prefix(pipeline, run_id)):].split("/")
    return task, index, int(try_file.removesuffix(LOG))


# -- models and the registry ---------------------------------------------------------------------------------------
def model(model_id: str) -> str:
    """A model id '<src>_<data>:<params>' is kept as models/<src>_<data>/<params>.json."""
    src_data, _, params = model_id.partition(":")
    return f"{MODELS}{src_data}/{params}{JSON}"


def model_prefix(id_prefix: str) -> str:
    """Lists the model records whose id starts with `id_prefix` (its part before ':')."""
    return MODELS + id_prefix.partition(":")[0]


def model_id(key: str) -> str:
    return _stem(key, MODELS).replace("/", ":")


def registry(name: str) -> str:
    return f"{REGISTRY}{name}{JSON}"


def registry_name(key: str) -> str | None:
    return _stem(key, REGISTRY) if key.startswith(REGISTRY) and key.endswith(JSON) else None


def pipeline_settings(pipeline: str, name: str) -> str:
    return f"{PIPELINE_SETTINGS}{pipeline}/{name}/settings{JSON}"


# -- datum steps ---------------------------------------------------------------------------------------------------
def datum_record(pipeline: str, step: str, key: str) -> str:
    """A processed datum's own record, as trainyard wrote one per datum before batches; still read, never written."""
    return datum_step_prefix(pipeline, step) + f"{key}{JSON}"


def datum_step_prefix(pipeline: str, step: str) -> str:
    """Everything a datum step recorded: its batches, their key lists, the compacted indexes, per-datum records."""
    return f"{DATUMS}{pipeline}/{step}/"


def datum_batch(pipeline: str, step: str, batch_id: str) -> str:
    """The records of the datums one task processed (one object, not one per datum)."""
    return datum_step_prefix(pipeline, step) + f"batches/{batch_id}{JSON}"


def datum_batch_keys_prefix(pipeline: str, step: str) -> str:
    return datum_step_prefix(pipeline, step) + "keys/"


def datum_batch_keys(pipeline: str, step: str, batch_id: str) -> str:
    """A batch's datum keys, written after the batch: its existence is what makes a later run skip those datums."""
    return datum_batch_keys_prefix(pipeline, step) + f"{batch_id}{JSON}"


def datum_index_prefix(pipeline: str, step: str) -> str:
    return datum_step_prefix(pipeline, step) + "index/"


def datum_index(pipeline: str, step: str, generation: int, index_id: str) -> str:
    """A compacted index of batch keys (and per-datum records); names sort by generation, so the last is newest."""
    return datum_index_prefix(pipeline, step) + f"{generation:012d}-{index_id}{JSON}"


def datum_index_generation(key: str) -> int:
    """The generation of a key made by datum_index()."""
    return int(key.rsplit("/", 1)[1].split("-", 1)[0])


def datum_part(key: str, pipeline: str, step: str) -> tuple[str, str] | None:
    """What a key under datum_step_prefix() is: ("batch" | "keys" | "index" | "record", its id or datum key)."""
    rest = key[len(datum_step_prefix(pipeline, step)):]
    if not key.startswith(datum_step_prefix(pipeline, step)) or not rest.endswith(JSON):
        return None
    folder, _, name = rest.removesuffix(JSON).rpartition("/")
    kinds = {"batches": "batch", "keys": "keys", "index": "index", "": "record"}
    return (kinds[folder], name) if folder in kinds and name else None


def datum_steps_of(key: str) -> tuple[str, str] | None:
    """(pipeline, step) of any key under DATUMS made by the functions above."""
    parts = key[len(DATUMS):].split("/") if key.startswith(DATUMS) else []
    return (parts[0], parts[1]) if len(parts) >= 3 else None


def provenance(repo: str, commit_id: str) -> str:
    return f"{PROVENANCE}{repo}/{commit_id}{JSON}"


def provenance_commit(key: str) -> tuple[str, str]:
    """(repo, commit id) of a key made by provenance()."""
    repo, _, commit_id = _stem(key, PROVENANCE).rpartition("/")
    return repo, commit_id


# -- Pachyderm pipelines -------------------------------------------------------------------------------------------
def pps_pipeline(name: str) -> str:
    return f"{PPS_PIPELINES}{name}{JSON}"


def pps_job(name: str, job: str) -> str:
    return f"{PPS_JOBS}{name}/{job}{JSON}"


def pps_state(name: str) -> str:
    """The input commits of the pipeline's last finished job."""
    return f"{PPS_STATE}{name}{JSON}"


def pps_stats(name: str, job: str, datum: str) -> str:
    return pps_stats_prefix(name, job) + f"{datum}{JSON}"


def pps_stats_prefix(name: str, job: str) -> str:
    return f"{PPS_STATS}{name}/{job}/"
