"""`trainyard data`: the repos of the store, their commits and files; put a file (whole or as Pachyderm-style
datums) and ingest a kaos manifest."""

from pathlib import Path
from typing import Annotated

import typer

from trainyard.cli.context import Session
from trainyard.cli.options import App, MessageOption, keep_global_options
from trainyard.cli.output import emit, print_json, print_table
from trainyard.cli.pipeline import run_pipelines_reading
from trainyard.display import format_time
from trainyard.errors import ConfigError
from trainyard.store import parse_ref

app = App()
app.callback(help="Repos and commits: log, inspect, repos, put, ingest.")(keep_global_options)

RepoArgument = Annotated[str, typer.Argument(metavar="REPO", help="repo name, e.g. features", show_default=False)]


def load_manifest(path: str, settings) -> list:
    """Parse and policy-check every line of a kaos data manifest before anything is downloaded or stored."""
    from trainyard.manifests import parse_manifest
    from trainyard.urlpolicy import UrlPolicy

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"manifest {path} not found; give a file of JSON lines {{\"url\": ..., \"path\": ...}}")
    return parse_manifest(file.read_text(encoding="utf-8"), source=str(file), policy=UrlPolicy.from_settings(settings))


def manifest_repo(path: str) -> str:
    """The data repo a manifest feeds by default: its file name without suffix ('features.mf' -> 'features')."""
    return Path(path).name.split(".")[0].lower() or "data"


def ingest_manifest(session: Session, entries: list, repo: str, manifest: str, message: str, settings):
    """Download a parsed manifest in parallel and commit it; the commit and the download's figures."""
    from trainyard.manifests import ingest
    from trainyard.urlpolicy import UrlPolicy

    commit, stats = ingest(entries, session.store, repo, UrlPolicy.from_settings(settings), quiet=session.json,
                           source=str(manifest), message=message or f"ingest {manifest}")
    if not session.json:
        print(f"ingested {stats['files']} file(s), {stats['bytes']} bytes into {commit.ref} "
              f"({stats['retries']} retr{'y' if stats['retries'] == 1 else 'ies'})")
    return commit, stats


@app.command("log")
def log(session: Session, repo: RepoArgument) -> int:
    """Commits of a repo, newest first."""
    commits = session.store.log(repo)
    if session.json:
        print_json([c.summary() for c in commits])
        return 0
    print_table([{"commit": c.ref, "author": c.author, "time": format_time(c.time), "files": c.file_count,
                  "bytes": c.size, "message": c.message} for c in commits],
                ["commit", "author", "time", "files", "bytes", "message"])
    return 0


@app.command("inspect")
def inspect(session: Session, ref: Annotated[str, typer.Argument(
        metavar="REPO[:REF]", help="a commit: REF is latest (the default) or a short id", show_default=False)]) -> int:
    """Files of one commit."""
    commit = session.store.resolve(*parse_ref(ref))
    if session.json:
        print_json(commit.to_json())
        return 0
    print(f"commit {commit.repo}:{commit.id}\nparent {commit.parent}\nauthor {commit.author}\n"
          f"time   {format_time(commit.time)}\n\n    {commit.message}\n")
    print_table([{"path": p, "size": e["size"], "sha256": e["sha256"][:12]} for p, e in commit.manifest.items()],
                ["path", "size", "sha256"])
    return 0


@app.command("repos")
def repos(session: Session) -> int:
    """List repos."""
    names = session.store.repos()
    emit(names, session.json, "\n".join(names) or "(none)")
    return 0


@app.command("ingest")
def ingest(session: Session, repo: RepoArgument,
           manifest: Annotated[str, typer.Argument(
               metavar="MANIFEST", show_default=False,
               help="JSON lines {\"url\": ..., \"path\": ..., [\"sha256\", \"size\"]} (kaos)")],
           message: MessageOption = "") -> int:
    """Download a remote data manifest in parallel and commit it."""
    settings = session.settings()
    entries = load_manifest(manifest, settings)
    commit, stats = ingest_manifest(session, entries, repo, manifest, message, settings)
    session.announce(commit, settings)
    if session.json:
        print_json({"repo": commit.repo, "commit": commit.id, "ref": commit.ref, **stats})
    return 0


@app.command("put")
def put(
    session: Session,
    repo: RepoArgument,
    file: Annotated[str, typer.Argument(metavar="FILE", help="local file to put", show_default=False)],
    split: Annotated[str | None, typer.Option(
        "--split", metavar="line|json", show_default=False,
        help="split into datums of lines or of JSON lines (Pachyderm's put file --split)")] = None,
    target_file_datums: Annotated[int | None, typer.Option(
        "--target-file-datums", metavar="N", show_default=False, help="lines (records) per datum (default: 1)")] = None,
    header: Annotated[bool, typer.Option(
        "--header", help="repeat the first line atop every datum (--split line)")] = False,
    path: Annotated[str | None, typer.Option(
        "--path", metavar="PATH", show_default=False,
        help="path in the repo (default: the file's name); a split file becomes a directory")] = None,
    message: MessageOption = "",
    no_run: Annotated[bool, typer.Option(
        "--no-run", help="only commit: do not run the Pachyderm pipelines that read the repo here (embedded "
                         "default)")] = False,
) -> int:
    """Add a file to a repo, whole or split into datums (Pachyderm's put file)."""
    from trainyard.datums import put_file

    store = session.store
    commit, datums = put_file(store, repo, Path(file), split=split, target_file_datums=target_file_datums,
                              header=header, path=path, message=message)
    emit({"repo": commit.repo, "commit": commit.id, "ref": commit.ref, "datums": datums,
          "files": len(commit.manifest)}, session.json, f"{commit.ref}  {datums} datum(s)")
    session.announce(commit, session.settings())
    if not no_run:
        run_pipelines_reading(session, commit)
    return 0
