"""Trained models: the registry's versions (`models`), one model's record (`info --model`), its lineage as text,
JSON or a Graphviz graph (`lineage`), and its files (`get`)."""

import json
from pathlib import Path
from typing import Annotated

import typer

from trainyard import registry
from trainyard.cli.context import Session
from trainyard.cli.options import App
from trainyard.cli.output import emit, print_json, print_table
from trainyard.display import format_metric, format_time
from trainyard.errors import ConfigError
from trainyard.metrics import is_number

app = App()

ModelArgument = Annotated[str, typer.Argument(metavar="MODEL_ID", show_default=False,
                                              help="a model id or a unique prefix of it")]


@app.command("models")
def models(session: Session, name: Annotated[str | None, typer.Argument(
        metavar="NAME", show_default=False,
        help="model name (the source bundle's name); omit to list the names")] = None) -> int:
    """Registered versions of a model, with metrics and aliases."""
    store = session.store
    if not name:
        names = registry.names_in(store)
        emit(names, session.json, "\n".join(names) or "(none)")
        return 0
    entry = registry.load(store, name)
    if session.json:
        print_json(entry.to_json())
        return 0
    spec = entry.metric
    metric = spec.split(":")[0] if spec else None
    aliases: dict[str, list[str]] = {}
    for alias, version in entry.aliases.items():
        aliases.setdefault(version, []).append(alias)
    rows = [{"version": v.version, "aliases": ",".join(aliases.get(v.version, [])), "model_id": v.model_id,
             (metric or "metric"): format_metric(v.metrics, metric), "models": len(v.models), "run_id": v.run_id,
             "registered": format_time(v.registered_at)}
            for v in reversed(entry.versions)]
    print(f"{entry.name}: {len(entry.versions)} version(s); best by {spec or 'no metric yet'}")
    print_table(rows, ["version", "aliases", "model_id", metric or "metric", "models", "run_id", "registered"])
    return 0


def model_info(session: Session, model: str) -> int:
    """`info --model`: one model's record, its registry versions and lineage."""
    store = session.store
    record = registry.find_model(store, model)
    versions = registry.versions_of_model(store, record.name, record.model_id)
    if session.json:
        print_json(record.to_json() | {"versions": versions})
        return 0
    lin = record.lineage
    airflow = lin.airflow
    parent = lin.parent
    print(f"model     {record.model_id}  ({record.name}{', version ' + ', '.join(versions) if versions else ''})")
    for side, commit in (("source", lin.source), ("data", lin.data)):
        print(f"{side:<9} {commit.repo}:{commit.commit[:5]}  {commit.author}  {format_time(commit.time)}  "
              f"{commit.message}")
    print(f"params    {json.dumps(record.params, sort_keys=True)}  (hash {lin.params_hash[:12]})")
    print(f"env       {record.env}")
    print(f"airflow   dag {airflow.dag_id}  run {airflow.run_id}  task {airflow.task_id}"
          + (f"  map {airflow.map_index} ({airflow.label})" if airflow.map_index else ""))
    print(f"parent    {parent.name or record.name} {parent.version} ({parent.model_id})"
          if parent else "parent    none (first version of this model)")
    print(f"trained   {record.train_seconds or 0:.1f} s")
    print("metrics")
    for name, value in sorted(record.metrics.items()):
        shown = f"{value:.6g}" if is_number(value) else "(text) " + str(value).strip().splitlines()[0][:60]
        print(f"  {name:<24} {shown}")
    if record.artifacts:
        print("artifacts")
        for rel in record.artifacts:
            print(f"  {rel}")
    return 0


@app.command("lineage")
def lineage(session: Session, model: ModelArgument,
            dot: Annotated[bool, typer.Option("--dot", help="print a Graphviz graph (dot -Tpng)")] = False) -> int:
    """What produced a model: commits, params, env, run, versions."""
    if dot and session.json:
        raise ConfigError("give one of --dot (a Graphviz graph) or --json")
    store = session.store
    record = registry.find_model(store, model)
    lin = record.lineage
    nodes = {
        "source": f"source {lin.source.repo}:{lin.source.commit[:12]}\n{lin.source.message[:40]}",
        "data": f"data {lin.data.repo}:{lin.data.commit[:12]}\n{lin.data.message[:40]}",
        "params": "params " + lin.params_hash[:12] + "\n"
                  + ", ".join(f"{k}={v}" for k, v in sorted(record.params.items()))[:60],
        "env": f"env {record.env}",
        "run": f"airflow run {lin.airflow.run_id}\ntask {lin.airflow.task_id}"
               + (f"[{lin.airflow.map_index}]" if lin.airflow.map_index else ""),
        "model": f"model {record.model_id}",
    }
    edges = [("source", "model"), ("data", "model"), ("params", "model"), ("env", "model"), ("run", "model")]
    for version in registry.versions_of_model(store, record.name, record.model_id):
        nodes[f"v{version}"] = f"{record.name} {version}"
        edges.append(("model", f"v{version}"))
    if lin.parent:
        nodes["parent"] = f"{record.name} {lin.parent.version}\n{lin.parent.model_id}"
        edges.append(("parent", "model"))
    if dot:
        print("digraph lineage {\n  rankdir=LR;\n  node [shape=box, fontname=Helvetica];")
        for key, label in nodes.items():
            shape = ", style=bold" if key == "model" else ""
            print(f"  {json.dumps(key)} [label={json.dumps(label)}{shape}];")
        for a, b in edges:
            print(f"  {json.dumps(a)} -> {json.dumps(b)};")
        print("}")
    elif session.json:
        print_json({"nodes": nodes, "edges": edges})
    else:
        for a, b in edges:
            print(f"{nodes[a].splitlines()[0]}  ->  {nodes[b].splitlines()[0]}")
    return 0


@app.command("get")
def get(session: Session,
        model: Annotated[str, typer.Option("--model", metavar="ID", show_default=False,
                                           help="a model id or a unique prefix of it")],
        output: Annotated[str, typer.Option("-o", "--output", metavar="DIR", show_default=False,
                                            help="directory to write the model's files into")]) -> int:
    """Download a model with its metrics, log and lineage."""
    store = session.store
    record = registry.find_model(store, model)
    manifest = json.loads(store.get_blob_bytes(record.outputs))
    out = Path(output)
    store.materialize(manifest, out, quiet=session.json)
    (out / "lineage.json").write_text(json.dumps(record.to_json(), indent=2, sort_keys=True))
    (out / "train.log").write_bytes(store.get_blob_bytes(record.log))
    emit({"model_id": record.model_id, "path": str(out), "files": sorted(manifest)}, session.json,
         f"model {record.model_id} written to {out}")
    return 0
