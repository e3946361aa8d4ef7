"""Store reads the CLI needs that the core offers no function for yet: a model by id prefix, a run's step logs and
a job's per-datum stats. They list keys, so they are kept here, in one place, next to nothing else."""

from trainyard import runs
from trainyard.contract import model_key
from trainyard.errors import AmbiguousId, NotFound
from trainyard.store.versioned import Store

MODELS = model_key(":").split("/", 1)[0] + "/"  # the models folder, from the key layout itself


def _model_id(key: str) -> str:
    return key[len(MODELS):-len(".json")].replace("/", ":")


def find_model(store: Store, text: str) -> dict:
    """A model record by its id or a unique prefix of it (`325ad5966d9d_f3eecf11db7d:79b8`, `325ad`)."""
    text = text.strip()
    try:
        return store.get_json(model_key(text))
    except NotFound:
        pass
    src_data = text.partition(":")[0]
    keys = [k for k in store.backend.list(f"{MODELS}{src_data[:5]}") if k.endswith(".json")]
    matches = [k for k in keys if _model_id(k).startswith(text)]
    if not matches:
        raise NotFound(f"no model id starts with {text!r}; list models with `trainyard list` or `trainyard info -i 0`")
    if len(matches) > 1:
        raise AmbiguousId(f"model id {text!r} is ambiguous; candidates: {', '.join(map(_model_id, matches))}")
    return store.get_json(matches[0])


def newest_logs(store: Store, pipeline: str, run_id: str, step: str | None,
                map_index: int | None) -> list[tuple[str, str, int, str]]:
    """(task, map index, try, key) of the newest try's log of each task of a run, filtered by step and map index."""
    newest: dict[tuple[str, str], tuple[int, str]] = {}
    prefix = runs.log_prefix(pipeline, run_id)
    for key in store.backend.list(prefix):
        task, index, try_file = key[len(prefix):].split("/")
        if step and task != step or map_index is not None and index != str(map_index):
            continue
        tries = int(try_file.removesuffix(".log"))
        if (task, index) not in newest or tries > newest[(task, index)][0]:
            newest[(task, index)] = (tries, key)
    return [(task, index, *newest[(task, index)]) for task, index in sorted(newest)]


def read_log(store: Store, key: str) -> bytes:
    return store.backend.read(key)


def datum_stats(store: Store, pipeline: str, job: str) -> list[dict]:
    """The per-datum records of a job of a Pachyderm pipeline (kept when its spec has enable_stats)."""
    from trainyard import pps  # pydantic: imported only by the commands that need it

    prefix = pps.stats_key(pipeline, job, "")[:-len(".json")]
    return [store.get_json(k) for k in sorted(store.backend.list(prefix)) if k.endswith(".json")]
